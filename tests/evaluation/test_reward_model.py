"""The reward model of DM and DR: within the rewards' range, cross-fitted, using offer features;
DM and DR on a log with a low reward rate; DM's interval with the model's own uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from nba.evaluation import LoggedDecision, evaluate
from nba.evaluation.reward_model import RewardModel
from nba.evaluation.sources import from_records
from nba.evaluation.targets import TargetPolicy, Uniform


def line(
    features: dict,
    offers: list[str],
    chosen: str,
    reward: float,
    offer_features: dict | None = None,
    decision_id: str | None = None,
) -> dict:
    candidates = [{"offer_id": a, "probability": 1 / len(offers)} for a in offers]
    for c in candidates:
        if offer_features and c["offer_id"] in offer_features:
            c["features"] = offer_features[c["offer_id"]]
    out = {"features": features, "candidates": candidates, "chosen": chosen, "propensity": 1 / len(offers), "reward": reward}
    if decision_id is not None:
        out["decision_id"] = decision_id
    return out


def uniform_log(n: int, offers: list[str], rate, rng: np.random.Generator, reward=None) -> list[LoggedDecision]:
    """Uniform logging over ``offers``; a context of a segment, an age and a tag list;
    ``rate(features, offer)`` the probability of a reward of 1 (or ``reward`` draws it)."""
    lines = []
    for i in range(n):
        features = {
            "segment": str(rng.choice(["x", "y", "z"])),
            "age": float(rng.integers(18, 90)),
            "vip": bool(rng.random() < 0.2),
            "tags": ["t1"] if rng.random() < 0.5 else [],
            "id": f"c{i}",
        }
        chosen = str(rng.choice(offers))
        r = reward(features, chosen, rng) if reward else float(rng.random() < rate(features, chosen))
        lines.append(line(features, offers, chosen, r))
    return list(from_records(lines))


class Always(TargetPolicy):
    def __init__(self, offer: str) -> None:
        self.offer = offer
        self.name = f"always-{offer}"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, np.array([1.0 if a == self.offer else 0.0 for a in d.eligible])


def values(estimates) -> dict[tuple[str, str], float]:
    return {(e.policy, e.estimator): e.value for e in estimates}


def test_predictions_stay_within_zero_and_one_for_a_rare_reward() -> None:
    rng = np.random.default_rng(1)
    offers = [f"o{k}" for k in range(8)]
    decisions = uniform_log(3000, offers, lambda f, a: 0.004 + 0.02 * (f["segment"] == "x" and a == "o1"), rng)
    # An outlying number (as large as a context may carry) must not push a prediction out either.
    decisions[0].features["age"] = 2.0**53
    model = RewardModel(decisions)
    assert model.low == 0.0 and model.high == 1.0
    assert model.predictions.min() > 0.0 and model.predictions.max() < 1.0
    brier, constant = model.brier()
    assert 0 < brier and 0 < constant


def test_predictions_stay_within_a_general_range() -> None:
    """Rewards in [-1, 3] (a margin, say), given as the range or taken from the log."""
    rng = np.random.default_rng(2)
    offers = ["a", "b", "c"]

    def reward(features: dict, offer: str, rng: np.random.Generator) -> float:
        base = {"a": -1.0, "b": 1.0, "c": 3.0}[offer] if features["segment"] == "x" else 0.5
        return float(np.clip(base + rng.normal(0, 1.5), -1.0, 3.0))

    decisions = uniform_log(600, offers, None, rng, reward=reward)
    for given in ((-1.0, 3.0), None):
        model = RewardModel(decisions, reward_range=given)
        assert model.low >= -1.0 and model.high <= 3.0
        assert model.predictions.min() >= model.low and model.predictions.max() <= model.high
    # It learned the differences: in segment x, c is predicted well above a.
    x = next(i for i, d in enumerate(decisions) if d.features["segment"] == "x")
    qa, qc = model.predict(x, decisions[x], ["a", "c"])
    assert qc - qa > 1.5
    with pytest.raises(ValueError, match="outside the reward range"):
        RewardModel(decisions, reward_range=(0.0, 1.0))


def test_a_decisions_prediction_does_not_depend_on_its_own_reward() -> None:
    rng = np.random.default_rng(3)
    offers = ["a", "b", "c"]
    decisions = uniform_log(300, offers, lambda f, a: 0.3 if a == "a" else 0.1, rng)
    before = RewardModel(decisions)
    j = 17
    changed = [*decisions]
    d = decisions[j]
    flipped = {k: 1.0 - v for k, v in d.rewards.items()}
    changed[j] = LoggedDecision(**{**vars(d), "rewards": flipped})
    after = RewardModel(changed)
    np.testing.assert_array_equal(before.predict(j, d, offers), after.predict(j, changed[j], offers))
    # ...while the decisions of the other folds, whose models saw it, do move.
    others = [i for i in range(len(decisions)) if i % before.folds != j % before.folds]
    moved = [
        i for i in others if not np.array_equal(before.predict(i, decisions[i], offers), after.predict(i, changed[i], offers))
    ]
    assert len(moved) == len(others)


def test_offer_features_are_used() -> None:
    """The reward depends only on an offer's price; 60 offers, each logged a few times. The
    model with the offers' features learns the price's effect; without them it can only learn
    each offer on its own few rewards."""
    rng = np.random.default_rng(4)
    offers = [f"o{k}" for k in range(60)]
    price = {a: float(rng.random()) for a in offers}
    features = {a: {"price": price[a], "category": "card"} for a in offers}

    def lines(with_features: bool, draw: np.random.Generator) -> list[dict]:
        out = []
        for _ in range(1200):
            eligible = [str(a) for a in draw.choice(offers, size=6, replace=False)]
            chosen = str(draw.choice(eligible))
            r = float(draw.random() < 0.05 + 0.6 * price[chosen])
            out.append(line({"segment": str(draw.choice(["x", "y"]))}, eligible, chosen, r, features if with_features else None))
        return out

    cheapest_first = CheapestFirst(price)
    errors = {}
    for with_features in (True, False):
        decisions = list(from_records(lines(with_features, np.random.default_rng(5))))
        truth = np.mean([0.05 + 0.6 * max(price[a] for a in d.eligible) for d in decisions])
        dm = values(evaluate(decisions, [cheapest_first], n_bootstrap=10, refits=0))[("dearest", "dm")]
        errors[with_features] = abs(dm - truth)
    assert decisions[0].offer_features == {}
    assert errors[True] < errors[False] / 2, errors
    assert errors[True] < 0.05, errors  # the true value is about 0.56; a logistic curve in the price, not a line


class CheapestFirst(TargetPolicy):
    """Always the dearest eligible offer (the one most likely accepted, as it happens)."""

    name = "dearest"

    def __init__(self, price: dict[str, float]) -> None:
        self.price = price

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        best = max(d.eligible, key=self.price.__getitem__)
        return d.eligible, np.array([1.0 if a == best else 0.0 for a in d.eligible])


def test_dm_and_dr_on_a_log_with_a_half_percent_reward_rate() -> None:
    """The case where a ridge per offer predicted negative click rates and DR went negative."""
    rng = np.random.default_rng(6)
    offers = [f"o{k}" for k in range(5)]

    def rate(features: dict, offer: str) -> float:
        return 0.005 * (2.0 if (features["segment"] == "x" and offer == "o0") else 0.8)

    decisions = uniform_log(6000, offers, rate, rng)
    truth = {
        "uniform": np.mean([np.mean([rate(d.features, a) for a in offers]) for d in decisions]),
        "always-o0": np.mean([rate(d.features, "o0") for d in decisions]),
        "always-o3": np.mean([rate(d.features, "o3") for d in decisions]),
    }
    estimates = evaluate(decisions, [Uniform(), Always("o0"), Always("o3")], n_bootstrap=50, refits=5)
    v = values(estimates)
    for policy, true in truth.items():
        assert abs(v[(policy, "dm")] - true) < 0.35 * true, (policy, v[(policy, "dm")], true)
        assert v[(policy, "dr")] >= 0.0
        dm = next(e for e in estimates if e.policy == policy and e.estimator == "dm")
        assert dm.low <= true <= dm.high, (policy, dm.low, dm.high, true)


def test_dm_interval_includes_the_reward_models_uncertainty() -> None:
    rng = np.random.default_rng(7)
    decisions = uniform_log(400, ["a", "b"], lambda f, a: 0.3 if a == "a" else 0.2, rng)
    fixed = next(e for e in evaluate(decisions, [Always("a")], n_bootstrap=200, refits=0) if e.estimator == "dm")
    refit = next(e for e in evaluate(decisions, [Always("a")], n_bootstrap=200, refits=20) if e.estimator == "dm")
    assert fixed.value == refit.value
    # With the model held fixed, DM varies only with the contexts drawn: far too narrow.
    assert refit.high - refit.low > 3 * (fixed.high - fixed.low)
    assert refit.low <= 0.3 <= refit.high


class Newcomer(TargetPolicy):
    """Always an offer the log never made eligible (as a draft policy set may)."""

    name = "newcomer"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return [*d.eligible, "new"], np.array([0.0] * len(d.eligible) + [1.0])


def test_an_offer_the_log_never_showed_is_predicted_from_its_catalogue_features() -> None:
    rng = np.random.default_rng(8)
    offers = [f"o{k}" for k in range(20)]
    price = {a: float(rng.random()) for a in offers} | {"new": 0.95}
    catalogue = {a: {"price": p} for a, p in price.items()}
    lines = []
    for _ in range(1500):
        chosen = str(rng.choice(offers))
        lines.append(line({"segment": "x"}, offers, chosen, float(rng.random() < 0.05 + 0.6 * price[chosen])))
    decisions = list(from_records(lines, offers=catalogue))
    truth = 0.05 + 0.6 * price["new"]
    with_catalogue = RewardModel(decisions, offers=catalogue)
    without = RewardModel(decisions)
    dm = {
        name: values(evaluate(decisions, [Newcomer()], n_bootstrap=10, refits=3, reward_model=model))[("newcomer", "dm")]
        for name, model in (("with", with_catalogue), ("without", without))
    }
    assert abs(dm["with"] - truth) < 0.1, dm
    assert abs(dm["without"] - truth) > 2 * abs(dm["with"] - truth), dm
    assert len(with_catalogue.predictions) == 1500 * 21  # every decision's newcomer added once


def test_without_the_offer_by_context_columns_a_large_catalogue_still_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CROSSED columns (many offers x many context columns) each offer's own response
    to the context is left out: the shared effects remain."""
    import nba.evaluation.reward_model as reward_model

    rng = np.random.default_rng(9)
    decisions = uniform_log(500, ["a", "b", "c"], lambda f, a: 0.5 if a == "a" else 0.1, rng)
    monkeypatch.setattr(reward_model, "MAX_CROSSED", 0)
    model = RewardModel(decisions)
    assert not model.crossed
    q = model.predict(0, decisions[0], ["a", "b", "c"])
    assert q[0] > q[1] + 0.2 and 0 < q.min() and q.max() < 1


def test_dm_intervals_with_refits_cover_the_truth_at_about_the_stated_rate() -> None:
    """Over synthetic logs whose true values are known (two segments, three offers): DM's
    interval with the reward model refit covers the truth about as often as a 95% interval
    should; held fixed, it covers it about half the time."""
    from test_evaluation import Always as AlwaysOffer
    from test_evaluation import synthetic_log

    rng = np.random.default_rng(42)
    covered: dict[int, list[bool]] = {10: [], 0: []}
    for _ in range(20):
        decisions, true_values = synthetic_log(400, rng)
        seed = int(rng.integers(1 << 30))
        for refits in covered:
            for e in evaluate(
                decisions, [Uniform(), AlwaysOffer("a"), AlwaysOffer("c")], n_bootstrap=100, seed=seed, refits=refits
            ):
                if e.estimator == "dm":
                    covered[refits].append(e.low <= true_values[e.policy] <= e.high)
    assert np.mean(covered[10]) >= 0.85, np.mean(covered[10])
    assert np.mean(covered[0]) < 0.7, np.mean(covered[0])
