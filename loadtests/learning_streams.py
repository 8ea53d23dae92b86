"""Bandit streams for the learning benchmark (loadtests/bench_learning.py): the adversities a
catalogue meets in service, synthetic and seeded, and multiclass data sets turned into streams.

A stream is a table, fixed before any learner plays it, so that every learner meets exactly
the same customers in the same order and the same coin flips:

- ``X[t]``: the context of decision t, as numbers (already standardised by ``standardise``);
- ``means[t, a]``: the probability that arm a pays 1 at decision t (its true mean; a
  classification stream has 1 for the right class and 0 elsewhere);
- ``coins[t]``: one uniform draw per decision; arm a pays ``coins[t] < means[t, a]``. Sharing
  the draw means two learners that choose the same arm at t get the same reward (common random
  numbers: differences between learners are not noise in the rewards);
- ``joins[a]``: the first decision at which arm a is offered (0 for arms there from the start).

Only numpy is needed here (the tests use these streams without the `bench` extra); the data
sets shipped with scikit-learn are loaded by ``classification_streams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLIP = 5.0


@dataclass
class Stream:
    name: str
    X: np.ndarray
    means: np.ndarray
    coins: np.ndarray
    joins: np.ndarray
    #: the decision at which something happens (the change, the newcomers' arrival); -1: none
    event: int = -1
    #: per decision, the segment the customer belongs to (-1 when there are no segments)
    segments: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    description: str = ""

    def __post_init__(self) -> None:
        n, k = self.means.shape
        if self.X.shape[0] != n or self.coins.shape != (n,) or self.joins.shape != (k,):
            raise ValueError(f"{self.name}: inconsistent shapes")
        if self.segments.size == 0:
            self.segments = np.full(n, -1, dtype=int)

    @property
    def rounds(self) -> int:
        return int(self.means.shape[0])

    @property
    def arms(self) -> int:
        return int(self.means.shape[1])

    def available(self, t: int) -> np.ndarray:
        """Indices of the arms offered at decision t."""
        return np.flatnonzero(self.joins <= t)

    def oracle_arm(self, t: int) -> int:
        """The arm with the highest true mean among those offered at t."""
        arms = self.available(t)
        return int(arms[np.argmax(self.means[t, arms])])

    def oracle_arms(self) -> np.ndarray:
        """``oracle_arm`` for every decision at once."""
        offered = self.joins[None, :] <= np.arange(self.rounds)[:, None]
        return np.where(offered, self.means, -np.inf).argmax(axis=1)

    def oracle_means(self) -> np.ndarray:
        """Per decision, the best true mean on offer: what an oracle expects to earn."""
        offered = self.joins[None, :] <= np.arange(self.rounds)[:, None]
        return np.where(offered, self.means, -np.inf).max(axis=1)

    def uniform_means(self) -> np.ndarray:
        """Per decision, the mean of the true means on offer: what uniform random expects."""
        offered = self.joins[None, :] <= np.arange(self.rounds)[:, None]
        return np.where(offered, self.means, 0.0).sum(axis=1) / offered.sum(axis=1)


def standardise(X: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """Z-scores each column with the stream's own mean and standard deviation, then clips at
    ±``clip``. Done once, before any learner plays, so every learner gets the same numbers (a
    learner that scales by itself, as nba's featurizer does, then sees columns already near
    unit scale). A constant column becomes 0."""
    X = np.asarray(X, dtype=float)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    scaled = np.divide(X - mean, std, out=np.zeros_like(X), where=std > 0)
    return np.clip(scaled, -clip, clip)


def _segment_contexts(rng: np.random.Generator, rounds: int, segments: int, noise: int) -> tuple[np.ndarray, np.ndarray]:
    """Customers drawn uniformly from ``segments`` segments; the context is the segment one-hot
    followed by ``noise`` standard normal features that say nothing about the reward (a learner
    must learn to ignore them)."""
    seg = rng.integers(0, segments, rounds)
    X = np.concatenate([np.eye(segments)[seg], rng.normal(0.0, 1.0, (rounds, noise))], axis=1)
    return seg, X


def _segment_means(rng: np.random.Generator, segments: int, arms: int, best: float) -> np.ndarray:
    """Per segment and arm a true mean: one best arm per segment at ``best`` (segment s prefers
    arm s mod ``arms``, so every arm is somebody's best), the others drawn in [0.05, 0.25]: a
    gap of at least 0.25 to the best, and second-best arms that differ between segments."""
    table = rng.uniform(0.05, 0.25, (segments, arms))
    table[np.arange(segments), np.arange(segments) % arms] = best
    return table


def segment_stream(
    rounds: int = 20_000, seed: int = 7, change: bool = True, segments: int = 5, arms: int = 5, noise: int = 5, best: float = 0.5
) -> Stream:
    """The "stationary" stream (``change=False``) and the "change" stream (``change=True``).

    Customers come from ``segments`` equally likely segments (context: the segment one-hot and
    ``noise`` irrelevant normal features). Each segment has one best arm, paying 1 with
    probability ``best`` (0.5); every other arm pays with a probability drawn in [0.05, 0.25].
    With ``change``, at the midpoint (decision ``rounds // 2``) every segment's best arm
    swaps its mean with another arm of that segment, chosen at random: the old favourite drops
    to what the other paid, the other becomes the best at ``best``. The oracle's reward is the
    same before and after, and after the change the oracle's arm differs in every segment.
    Without ``change`` the table stays as it was before the midpoint for the whole stream (same
    customers, same coins: the stationary and change streams differ only after the midpoint).
    """
    rng = np.random.default_rng(seed)
    seg, X = _segment_contexts(rng, rounds, segments, noise)
    table = _segment_means(rng, segments, arms, best)
    coins = rng.random(rounds)
    swapped = table.copy()
    for s in range(segments):
        old = int(np.argmax(table[s]))
        other = int(rng.choice([a for a in range(arms) if a != old]))
        swapped[s, [old, other]] = table[s, [other, old]]
    middle = rounds // 2
    means = table[seg]
    if change:
        means[middle:] = swapped[seg[middle:]]
    name = "change" if change else "stationary"
    what = "every segment's best arm swapped for another at the midpoint" if change else "no change"
    return Stream(
        name,
        X,
        means,
        coins,
        np.zeros(arms, dtype=int),
        event=middle if change else -1,
        segments=seg,
        description=f"{segments} segments, {arms} arms, {noise} noise features; {what}",
    )


def newcomer_stream(rounds: int = 20_000, seed: int = 7, noise: int = 5, best: float = 0.5, fallback: float = 0.3) -> Stream:
    """The "newcomers" stream: 5 arms from the start, 5 more join at the midpoint.

    Ten equally likely segments (context: the segment one-hot and ``noise`` irrelevant normal
    features); arm a is the best for segment a, paying 1 with probability ``best`` (0.5). Every
    other arm pays 0.1, except that segments 5-9, whose own arms (5-9) are not there yet, have
    a second choice among the first five (segment s: arm s - 5, at ``fallback``, 0.3) to learn
    before the newcomers arrive. From the midpoint the newcomers are each the right answer for
    a tenth of the customers: together they deserve about half of the choices.
    """
    segments, arms = 10, 10
    rng = np.random.default_rng(seed + 1000)
    seg, X = _segment_contexts(rng, rounds, segments, noise)
    table = np.full((segments, arms), 0.1)
    table[np.arange(segments), np.arange(segments)] = best
    table[np.arange(5, 10), np.arange(0, 5)] = fallback
    coins = rng.random(rounds)
    middle = rounds // 2
    joins = np.array([0] * 5 + [middle] * 5)
    return Stream(
        "newcomers",
        X,
        table[seg],
        coins,
        joins,
        event=middle,
        segments=seg,
        description=f"10 segments; arms 0-4 from the start, arms 5-9 join at decision {middle}",
    )


def multiclass_stream(name: str, X: np.ndarray, y: np.ndarray, seed: int, rounds: int | None = None) -> Stream:
    """A multiclass data set as a bandit stream (the supervised-to-bandit conversion of Bietti,
    Agarwal & Langford, 2021, "A Contextual Bandit Bake-off"): one arm per class, reward 1 for
    the true class. Every row is played once, in a seeded shuffled order, with no repeats
    (``rounds`` cuts the stream shorter, never longer)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=int)
    classes = int(y.max()) + 1  # of the whole set: a cut stream still offers every class
    order = rng.permutation(len(y))[:rounds]
    y = y[order]
    means = np.eye(classes)[y]
    return Stream(
        name,
        standardise(np.asarray(X, dtype=float)[order]),
        means,
        rng.random(len(y)),
        np.zeros(classes, dtype=int),
        description=f"{len(y)} rows, {classes} classes, each row once",
    )


def classification_streams(seed: int, rounds: int | None = None) -> list[Stream]:
    """The data sets shipped with scikit-learn and three seeded synthetic ones (the `bench`
    extra). Standardised on the whole data set, then shuffled."""
    from sklearn import datasets

    out = []
    for name, loader in (
        ("iris", datasets.load_iris),
        ("wine", datasets.load_wine),
        ("breast-cancer", datasets.load_breast_cancer),
        ("digits", datasets.load_digits),
    ):
        data = loader()
        out.append(multiclass_stream(name, data.data, data.target, seed, rounds))
    X, y = datasets.make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_redundant=2, n_classes=5, n_clusters_per_class=1, random_state=seed
    )
    out.append(multiclass_stream("synthetic-5", X, y, seed, rounds))
    X, y = datasets.make_classification(
        n_samples=4000,
        n_features=40,
        n_informative=20,
        n_classes=10,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed + 1,
    )
    out.append(multiclass_stream("synthetic-10", X, y, seed, rounds))
    X, y = datasets.make_classification(
        n_samples=6000,
        n_features=30,
        n_informative=20,
        n_classes=50,
        n_clusters_per_class=1,
        class_sep=2.0,
        random_state=seed + 2,
    )
    out.append(multiclass_stream("synthetic-50", X, y, seed, rounds))  # many arms, as a catalogue has offers
    return out


def adversity_streams(rounds: int, seed: int) -> list[Stream]:
    """ "stationary", "change" and "newcomers" ("delayed" replays "stationary" with late
    feedback: the runner, not the stream, delays). Standardised like every other stream."""
    out = []
    for stream in (
        segment_stream(rounds, seed, change=False),
        segment_stream(rounds, seed, change=True),
        newcomer_stream(rounds, seed),
    ):
        stream.X = standardise(stream.X)
        out.append(stream)
    return out
