"""The learning benchmark measures what it says: its streams are what their docstrings claim,
late feedback is exactly as late as asked, its figures come out right for a learner whose
answers are known, and its propensity check catches a learner that logs wrong probabilities.

Only numpy and the `dev` extra: VW's part is skipped when vowpalwabbit is not installed."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from conftest import ROOT

from bandit import LinearBandit, UniformRandom

sys.path.insert(0, str(ROOT / "loadtests"))
from bench_learning import DELAY, RECOVERY, Ours, Result, details, learners, markdown, play, run, vw_available
from learning_streams import Stream, multiclass_stream, newcomer_stream, segment_stream, standardise


def toy(n: int = 2000, classes: int = 4) -> Stream:
    rng = np.random.default_rng(1)
    y = rng.integers(0, classes, n)
    X = np.eye(classes)[y] + rng.normal(0, 0.3, (n, classes))
    return multiclass_stream("toy", X, y, seed=1)


class Deterministic:
    """Always the learner's best guess, claiming probability 1: what a plain UCB logs."""

    name = "argmax"

    def __init__(self) -> None:
        self.learner = LinearBandit(seed=1)

    def play(self, x, arms, rng: random.Random):
        arm = arms[int(np.argmax(self.learner.scores(arms, x)))]
        return arm, 1.0, lambda reward: self.learner.update(arm, x, reward)


class Oracle:
    """Plays the best arm on offer, knowing the stream's true means (and logs probability 1)."""

    name = "oracle"

    def __init__(self, stream: Stream) -> None:
        self.stream, self.t = stream, 0

    def play(self, x, arms, rng: random.Random):
        arm = str(self.stream.oracle_arm(self.t))
        assert arm in arms
        self.t += 1
        return arm, 1.0, lambda reward: None


class Recorder:
    """Chooses uniformly, and records when each decision's reward arrives."""

    name = "recorder"

    def __init__(self) -> None:
        self.decisions = 0
        self.delivered: list[tuple[int, int]] = []  # (decision, decisions made when it arrived)

    def play(self, x, arms, rng: random.Random):
        t = self.decisions
        self.decisions += 1
        return rng.choice(arms), 1.0 / len(arms), lambda reward: self.delivered.append((t, self.decisions))


def test_standardise_z_scores_and_clips() -> None:
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.normal(100, 20, 1000), np.full(1000, 3.0), rng.normal(0, 1, 1000)])
    X[0, 2] = 1e6  # one wild value: clipped, not allowed to squash the others
    Z = standardise(X)
    assert abs(Z[:, 0].mean()) < 1e-9 and abs(Z[:, 0].std() - 1) < 1e-9
    assert (Z[:, 1] == 0).all()  # a constant column says nothing
    assert Z[0, 2] == 5.0 and np.abs(Z).max() <= 5.0


def test_change_swaps_every_segments_best_arm_at_the_midpoint() -> None:
    change, stationary = segment_stream(6000, seed=3, change=True), segment_stream(6000, seed=3, change=False)
    middle = change.event
    assert middle == 3000 and stationary.event == -1
    # the same customers and coins; the same means until the change
    assert np.array_equal(change.X, stationary.X) and np.array_equal(change.coins, stationary.coins)
    assert np.array_equal(change.means[:middle], stationary.means[:middle])
    best = np.array([change.oracle_arm(t) for t in range(change.rounds)])
    assert np.array_equal(best, change.oracle_arms())
    still = np.array([stationary.oracle_arm(t) for t in range(stationary.rounds)])
    segments = sorted(set(change.segments.tolist()))
    assert len(segments) == 5
    for s in segments:
        rows = change.segments == s
        before, after = set(best[:middle][rows[:middle]]), set(best[middle:][rows[middle:]])
        assert len(before) == 1 and len(after) == 1 and before != after, s
        assert set(still[rows]) == before  # the stationary stream keeps the old best throughout
    oracle = change.oracle_means()
    assert oracle[:middle].mean() == pytest.approx(oracle[middle:].mean())  # as much to earn after as before
    # every best arm is clearly best: a gap of at least 0.25 to the next
    ranked = np.sort(change.means, axis=1)
    assert (ranked[:, -1] - ranked[:, -2] >= 0.25).all()


def test_newcomers_arrive_at_the_midpoint_and_deserve_half_of_the_choices() -> None:
    stream = newcomer_stream(8000, seed=3)
    middle = stream.event
    assert list(stream.available(middle - 1)) == [0, 1, 2, 3, 4]
    assert list(stream.available(middle)) == list(range(10))
    best = np.array([stream.oracle_arm(t) for t in range(middle, stream.rounds)])
    assert (best[:] < 5).mean() == pytest.approx(0.5, abs=0.05)
    for arm in range(5, 10):  # each newcomer is the right answer for a tenth of the customers
        assert (best == arm).mean() == pytest.approx(0.1, abs=0.03)
    assert all(stream.oracle_arm(t) < 5 for t in range(middle))


@pytest.mark.parametrize("delay", [0, 1, 7])
def test_feedback_arrives_exactly_delay_decisions_late(delay: int) -> None:
    stream = segment_stream(200, seed=1, change=False)
    learner = Recorder()
    play(stream, learner, seed=1, delay=delay)
    # decision t's reward arrives once decision t + delay is made, before t + delay + 1
    assert learner.delivered == [(t, t + delay + 1) for t in range(200 - delay)]


def test_the_figures_of_a_learner_whose_answers_are_known() -> None:
    change = segment_stream(4000, seed=5, change=True)
    result = run(change, Oracle(change), seed=1)
    assert result.detail["recovery_share_of_oracle"] == pytest.approx(1.0)
    assert result.detail["recovery_new_best_chosen"] == 1.0
    assert result.reward == pytest.approx(0.5, abs=0.03)
    newcomers = newcomer_stream(4000, seed=5)
    result = run(newcomers, Oracle(newcomers), seed=1)
    assert result.detail["newcomer_share"] == result.detail["newcomer_share_oracle"]
    assert 0.4 < result.detail["newcomer_share"] < 0.6
    # and one that never moves from the old favourites recovers nothing
    stationary = segment_stream(4000, seed=5, change=False)
    stale = np.array([stationary.oracle_arm(t) for t in range(stationary.rounds)])
    figures = details(change, stale, np.zeros(change.rounds))
    assert figures["recovery_new_best_chosen"] == 0.0 and figures["recovery_share_of_oracle"] < 0.5
    assert RECOVERY[1] <= change.rounds - change.event


def test_correct_propensities_pass_and_claimed_certainty_fails() -> None:
    data = toy()
    uniform = run(data, Ours("uniform", UniformRandom(seed=1)), seed=1)
    learner = run(data, Ours("linear", LinearBandit(seed=1)), seed=1)
    greedy = run(data, Deterministic(), seed=1)
    assert uniform.propensities_ok and learner.propensities_ok
    assert not greedy.propensities_ok
    assert learner.reward > 0.8 > 0.35 > uniform.reward  # it also learns the toy problem


def test_the_table_bolds_the_best_learner_not_the_baseline() -> None:
    def result(learner: str, stream: str, reward: float, micros: float) -> Result:
        return Result(stream, learner, 100, 0, reward, 1.0, reward, micros, 0.1, 0.0, 0.2, 0.1, True)

    results = [
        result("uniform random", "toy", 0.2, 10),
        result("a", "toy", 0.9, 50),
        result("b", "toy", 0.7, 40),
        result("uniform random", "stationary", 0.2, 10),
        result("a", "stationary", 0.5, 50),
        result("b", "stationary", 0.6, 40),
        result("uniform random", "delayed", 0.2, 10),
        result("a", "delayed", 0.3, 50),
        result("b", "delayed", 0.55, 40),
    ]
    rows = {line.split(" | ")[0]: line for line in markdown(results, ["toy"]).splitlines()}
    assert "**0.900**" in rows["| a"] and "**0.600**" in rows["| b"]
    assert "**+0.050**" in rows["| b"] and "+0.200" in rows["| a"]  # the smaller delay cost
    assert "**40**" in rows["| b"] and "**" not in rows["| uniform random"]


def test_an_nba_configuration_the_learner_does_not_take_drops_its_row_not_the_run() -> None:
    names = [name for name, _ in learners(1, [("nba, gone", {"no_such_parameter": 1}), ("nba, alpha 2", {"alpha": 2.0})])]
    assert names[0] == "nba, the service's defaults" and "nba LinearBandit() defaults" in names and "nba, alpha 2" in names
    assert "nba, gone" not in names and "uniform random" in names


@pytest.mark.skipif(not vw_available(), reason="vowpalwabbit is not installed (the bench extra)")
def test_vowpal_wabbit_is_read_right() -> None:
    from bench_learning import VowpalWabbit

    data = toy(1500)
    vw = VowpalWabbit("VW --squarecb", "--cb_explore_adf -q sa --squarecb", seed=1)
    result = run(data, vw, seed=1)
    assert result.propensities_ok and result.reward > 0.6
    # the pmf VW returns is in the order the arms were given, not in order of preference
    x = {f"f{j}": v for j, v in enumerate(data.X[np.argmax(data.means[:, 2])])}
    for order in (["0", "1", "2", "3"], ["2", "3", "0", "1"], ["3", "0", "1", "2"]):
        pmf = vw.vw.predict(["shared |s " + " ".join(f"{k}:{v:.6g}" for k, v in x.items()), *(f"|a arm={a}" for a in order)])
        assert order[int(np.argmax(pmf))] == "2" and sum(pmf) == pytest.approx(1.0, abs=1e-5)
    assert DELAY == 500


def test_the_adaptation_bench_averages_seed_by_seed_and_says_which_way_the_difference_goes() -> None:
    from bench_adaptation import markdown as adaptation_markdown
    from bench_adaptation import seeds_of, summary

    assert seeds_of("1-3") == [1, 2, 3] and seeds_of("4,2") == [4, 2]
    with pytest.raises(Exception, match="expected seeds"):
        seeds_of("one")
    results = {
        1: {"new": {"digits": 0.70, "recovery": 0.9}, "old": {"digits": 0.72, "recovery": 0.1}},
        2: {"new": {"digits": 0.80, "recovery": 0.7}, "old": {"digits": 0.81, "recovery": 0.0}},
    }
    table = summary(results, ["new", "old"])
    assert table["digits"]["new"] == pytest.approx({"mean": 0.75, "min": 0.70, "max": 0.80, "difference": 0.0})
    assert table["digits"]["old"]["difference"] == pytest.approx(-0.015)  # "new" loses 1.5 points
    assert table["recovery"]["old"]["difference"] == pytest.approx(0.75)
    text = adaptation_markdown(table, ["new", "old"], [1, 2])
    assert "| digits: mean true reward | 0.750 (0.700-0.800) | 0.765 (0.720-0.810) | -1.5 pts |" in text
    assert "80% (70%-90%) | 5% (0%-10%) | +75 pts |" in text
