"""Off-policy estimators pinned by hand-computed cases and by synthetic logs whose true value
is known."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from nba.evaluation import LoggedDecision, evaluate, from_jsonl
from nba.evaluation.logs import LogError
from nba.evaluation.targets import Logged, TargetPolicy, Uniform, parse_target

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def logged(
    chosen: str,
    probabilities: dict[str, float],
    reward: float,
    features: dict | None = None,
    slots: list[tuple[str, float]] | None = None,
    rewards: dict[str, float] | None = None,
) -> LoggedDecision:
    eligible = list(probabilities)
    return LoggedDecision(
        decision_id=f"d{id(probabilities)}",
        decided_at=T0,
        channel="web",
        customer_id="c",
        features=features or {},
        eligible=eligible,
        probabilities=np.array([probabilities[a] for a in eligible]),
        multipliers=np.ones(len(eligible)),
        slots=slots or [(chosen, probabilities[chosen])],
        rewards=rewards or {chosen: reward},
    )


class FixedModel:
    """A reward model given as a table: the input the DM and DR formulas take."""

    def __init__(self, q: dict[str, float]) -> None:
        self.q = q

    def predict(self, index: int, d: LoggedDecision, ids: list[str]) -> np.ndarray:
        return np.array([self.q[a] for a in ids])


class Always(TargetPolicy):
    def __init__(self, offer: str) -> None:
        self.offer = offer
        self.name = f"always-{offer}"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        ids = list(dict.fromkeys([*d.eligible, self.offer]))
        return ids, np.array([1.0 if a == self.offer else 0.0 for a in ids])


LOG = [
    logged("a", {"a": 0.8, "b": 0.2}, 1.0),
    logged("a", {"a": 0.8, "b": 0.2}, 0.0),
    logged("b", {"a": 0.8, "b": 0.2}, 1.0),
    logged("b", {"a": 0.5, "b": 0.5}, 0.0),
]


def by_estimator(estimates) -> dict[str, float]:
    return {e.estimator: e.value for e in estimates}


def test_hand_computed_ips_snips_dm_dr_for_uniform() -> None:
    values = by_estimator(evaluate(LOG, [Uniform()], n_bootstrap=50, reward_model=FixedModel({"a": 0.4, "b": 0.6})))
    w = [0.5 / 0.8, 0.5 / 0.8, 0.5 / 0.2, 0.5 / 0.5]
    r = [1.0, 0.0, 1.0, 0.0]
    assert values["ips"] == pytest.approx(sum(wi * ri for wi, ri in zip(w, r, strict=True)) / 4)  # (0.625 + 2.5) / 4
    assert values["snips"] == pytest.approx(sum(wi * ri for wi, ri in zip(w, r, strict=True)) / sum(w))
    assert values["dm"] == pytest.approx(0.5)  # 0.5 * 0.4 + 0.5 * 0.6 everywhere
    q_chosen = [0.4, 0.4, 0.6, 0.6]
    assert values["dr"] == pytest.approx(0.5 + sum(wi * (ri - qi) for wi, ri, qi in zip(w, r, q_chosen, strict=True)) / 4)


def test_the_logged_policy_is_worth_its_observed_mean_reward() -> None:
    [ips, snips, *_] = evaluate(LOG, [Logged()], n_bootstrap=50)
    assert ips.value == pytest.approx(0.5) and snips.value == pytest.approx(0.5)
    assert ips.ess == pytest.approx(4.0) and ips.max_weight == pytest.approx(1.0)


def test_weight_on_offers_the_log_could_not_choose_is_warned_about() -> None:
    estimates = evaluate(LOG, [Always("c")], n_bootstrap=50, reward_model=FixedModel({"a": 0.4, "b": 0.6, "c": 0.9}))
    ips = next(e for e in estimates if e.estimator == "ips")
    dm = next(e for e in estimates if e.estimator == "dm")
    assert ips.value == 0.0 and ips.unsupported == 1.0
    assert dm.value == pytest.approx(0.9)  # DM extrapolates
    assert any("could not choose" in w for w in ips.warnings)
    assert any("effective sample size 0" in w for w in ips.warnings)


def test_position_wise_ips_for_slates() -> None:
    d = logged("a", {"a": 0.6, "b": 0.4}, 1.0, slots=[("a", 0.6), ("b", 1.0)], rewards={"a": 1.0, "b": 1.0})
    values = by_estimator(evaluate([d], [Uniform()], n_bootstrap=10, reward_model=FixedModel({"a": 0, "b": 0})))
    # slot 1: w = 0.5 / 0.6; slot 2 (b, the only one left): w = (0.5 / 0.6) * (1 / 1)
    assert values["ips-slots"] == pytest.approx(0.5 / 0.6 * 1.0 + 0.5 / 0.6 * 1.0)


class Slate(TargetPolicy):
    """Always A, then B."""

    name = "a-then-b"

    def first_slot(self, d: LoggedDecision) -> tuple[list[str], np.ndarray]:
        return d.eligible, np.array([1.0 if a == "a" else 0.0 for a in d.eligible])

    def slot(self, d: LoggedDecision, remaining: list[str]) -> np.ndarray:
        return np.array([1.0 if a == "b" else 0.0 for a in remaining])


def test_position_wise_ips_is_unbiased_for_a_slate_policy() -> None:
    """Uniform logging of two slots out of A (pays 1), B and C (pay 0): the slate A, B earns 1."""
    rng = np.random.default_rng(3)
    decisions = []
    for _ in range(4000):
        first = str(rng.choice(["a", "b", "c"]))
        second = str(rng.choice([x for x in "abc" if x != first]))
        rewards = {o: float(o == "a") for o in (first, second)}
        decisions.append(
            logged(
                first,
                {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
                rewards[first],
                slots=[(first, 1 / 3), (second, 0.5)],
                rewards=rewards,
            )
        )
    e = next(e for e in evaluate(decisions, [Slate()], n_bootstrap=100) if e.estimator == "ips-slots")
    assert e.low <= 1.0 <= e.high


def synthetic_log(n: int, rng: np.random.Generator) -> tuple[list[LoggedDecision], dict[str, float]]:
    """Two segments, three offers, a known response model, a known stochastic logging policy."""
    truth = {("x", "a"): 0.6, ("x", "b"): 0.2, ("x", "c"): 0.1, ("y", "a"): 0.1, ("y", "b"): 0.3, ("y", "c"): 0.7}
    logging = {"x": {"a": 0.5, "b": 0.3, "c": 0.2}, "y": {"a": 0.2, "b": 0.3, "c": 0.5}}
    decisions = []
    for _ in range(n):
        segment = "x" if rng.random() < 0.5 else "y"
        probabilities = logging[segment]
        chosen = rng.choice(list(probabilities), p=list(probabilities.values()))
        reward = float(rng.random() < truth[(segment, chosen)])
        decisions.append(logged(str(chosen), probabilities, reward, features={"segment": segment}))
    true_values = {
        "uniform": np.mean([np.mean([truth[(s, a)] for a in "abc"]) for s in "xy"]),
        "always-a": np.mean([truth[(s, "a")] for s in "xy"]),
        "always-c": np.mean([truth[(s, "c")] for s in "xy"]),
    }
    return decisions, true_values


@pytest.mark.slow
def test_intervals_cover_the_true_value_at_about_the_stated_rate() -> None:
    rng = np.random.default_rng(42)
    covered: dict[str, list[bool]] = {}
    for _ in range(40):
        decisions, true_values = synthetic_log(400, rng)
        targets = [Uniform(), Always("a"), Always("c")]
        for e in evaluate(decisions, targets, n_bootstrap=200, seed=int(rng.integers(1 << 30))):
            if e.estimator in ("ips", "snips", "dr"):
                name = e.policy if e.policy != "uniform" else "uniform"
                covered.setdefault(e.estimator, []).append(e.low <= true_values[name] <= e.high)
    for estimator, hits in covered.items():
        rate = sum(hits) / len(hits)
        assert rate >= 0.85, f"{estimator} covered the truth {rate:.0%} of the time, not about 95%"


def test_jsonl_in_the_minimal_format(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [
        {
            "context": {"customer": {"age": 30}},
            "candidates": [{"offer_id": "a", "probability": 0.7}, {"offer_id": "b", "probability": 0.3}],
            "chosen": "a",
            "propensity": 0.7,
            "reward": 1,
        },
        {
            "features": {"customer.age": 40},
            "candidates": [{"offer_id": "a", "probability": 0.5}, {"offer_id": "b", "probability": 0.5}],
            "offers": [{"offer_id": "b", "slot": 1, "propensity": 0.5}],
            "rewards": {},
        },
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    decisions = from_jsonl(path, default_reward=0.0)
    assert [(d.chosen, d.propensity, d.reward) for d in decisions] == [("a", 0.7, 1.0), ("b", 0.5, 0.0)]
    assert decisions[0].features == {"customer.age": 30}


MINIMAL = {
    "context": {"customer": {"age": 34}},
    "candidates": [{"offer_id": "a", "probability": 0.7}, {"offer_id": "b", "probability": 0.3}],
    "chosen": "a",
    "propensity": 0.7,
    "reward": 1.0,
    "decided_at": "2026-11-23T10:00:00Z",
    "channel": "web",
}
SLATE = {
    "features": {"customer.age": 34.0},
    "candidates": [
        {"offer_id": "a", "eligible": True, "probability": 0.5, "value": 2.0, "lever": 1.0, "weight": 1.0},
        {"offer_id": "b", "eligible": True, "probability": 0.5},
        {"offer_id": "x", "eligible": False, "reason": "eligibility", "policy": "adults"},
    ],
    "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.5}, {"offer_id": "b", "slot": 2, "propensity": 1.0}],
    "rewards": {"a": 1.0},
    "closed": True,
}


def without(line: dict, *keys: str) -> dict:
    return {k: v for k, v in line.items() if k not in keys}


def candidates(*pairs: tuple) -> list[dict]:
    return [{"offer_id": a, "probability": p} for a, p in pairs]


# Every line breaks one rule of the contract (README "Logs from other systems"); the refusal
# names the line and the field. Written as Open Bandit Pipeline writes its invalid-input tables.
INVALID = [
    ({**MINIMAL, "propensity": 0.01}, "propensity: 0.01 differs from the first-slot probability 0.7"),
    ({**MINIMAL, "reward": float("nan")}, "reward: must be a finite number"),
    ({**MINIMAL, "reward": float("inf")}, "reward: must be a finite number"),
    ({**MINIMAL, "reward": "yes"}, "reward: must be a number, got 'yes'"),
    ({**MINIMAL, "reward": 1e308}, "reward: must be within ±1,000,000"),
    ({**MINIMAL, "reward": True}, "reward: must be a number"),
    (without(MINIMAL, "reward"), "reward: required"),
    ({**MINIMAL, "reward": None}, "reward: required"),
    ({**MINIMAL, "candidates": candidates(("a", 0.7), ("a", 0.3))}, "candidates: offer 'a' is listed twice"),
    (
        {**MINIMAL, "candidates": candidates(("a", 0.0), ("b", 1.0))},
        "chosen: offer 'a' was chosen, but its candidate probability is 0",
    ),
    ({**MINIMAL, "propensity": True}, "propensity: must be a number"),
    ({**MINIMAL, "propensity": 0}, "propensity: must be in (0, 1]"),
    ({**MINIMAL, "propensity": 1.5}, "propensity: must be in (0, 1]"),
    ({**MINIMAL, "propensity": "0.7"}, "propensity: must be a number"),
    (without(MINIMAL, "propensity"), "propensity: required with 'chosen'"),
    (without(MINIMAL, "chosen"), "chosen: required with 'propensity'"),
    (without(MINIMAL, "chosen", "propensity"), "offers: required"),
    ({**MINIMAL, "chosen": 7}, "chosen: must be a string"),
    ({**MINIMAL, "chosen": ""}, "chosen: String should have at least 1 character"),
    ({**MINIMAL, "chosen": "z"}, "chosen: offer 'z' is not among the eligible candidates"),
    (
        {**MINIMAL, "candidates": [{"probability": 0.7}, {"offer_id": "b", "probability": 0.3}]},
        "candidates[0].offer_id: required",
    ),
    ({**MINIMAL, "candidates": [{"offer_id": 1, "probability": 0.7}]}, "candidates[0].offer_id: must be a string"),
    ({**MINIMAL, "candidates": [{"offer_id": "a"}, {"offer_id": "b", "probability": 1}]}, "candidates[0].probability: required"),
    ({**MINIMAL, "candidates": candidates(("a", 0.7), ("b", -0.3))}, "candidates[1].probability: must be in [0, 1]"),
    (
        {**MINIMAL, "candidates": candidates(("a", 0.7), ("b", float("nan")))},
        "candidates[1].probability: must be a finite number",
    ),
    ({**MINIMAL, "candidates": candidates(("a", 0.7))}, "probabilities sum to 0.700000, not 1"),
    ({**MINIMAL, "candidates": []}, "candidates: required"),
    (without(MINIMAL, "candidates"), "candidates: required"),
    ({**MINIMAL, "candidates": "a,b"}, "candidates: must be a list"),
    (
        {
            **MINIMAL,
            "candidates": [{"offer_id": "a", "probability": 0.7, "eligible": False}, {"offer_id": "b", "probability": 1.0}],
        },
        "chosen: offer 'a' is not among the eligible candidates",
    ),
    (
        {**MINIMAL, "candidates": [{"offer_id": "a", "probability": 0.7, "eligible": "yes"}]},
        "candidates[0].eligible: must be true or false",
    ),
    (
        {**MINIMAL, "candidates": [{"offer_id": "a", "probability": 0.7, "value": float("inf")}]},
        "candidates[0].value: must be a finite number",
    ),
    ({**MINIMAL, "rewrad": 1}, "rewrad: unknown field"),
    ({**MINIMAL, "candidates": [{"offer_id": "a", "probabilty": 1.0}]}, "candidates[0].probabilty: unknown field"),
    (without(MINIMAL, "context"), "features: give the context as 'features' (flattened) or 'context' (nested)"),
    (
        {**MINIMAL, "features": {"customer.age": 34}},
        "give the context as 'features' (flattened) or 'context' (nested), one of them",
    ),
    ({**MINIMAL, "context": {"customer": {"age": float("nan")}}}, "context.customer.age: nan is not a finite number"),
    ({**MINIMAL, "context": "customer"}, "context: must be an object"),
    (
        {**MINIMAL, "context": {"customer": {"age": 10**400}}},
        "context.customer.age: an integer of 401 digits is not a finite number",
    ),
    (
        {**MINIMAL, "context": {"customer": {"ltv": [1.0, 1e200]}}},
        "context.customer.ltv[1]: 1e+200 is not a finite number within ±2^53",
    ),
    ({**MINIMAL, "decided_at": "yesterday"}, "decided_at: 'yesterday' is not an ISO 8601 time"),
    ({**MINIMAL, "decided_at": 1732356000}, "decided_at: must be a string"),
    ({**MINIMAL, "channel": 3}, "channel: must be a string"),
    ({**MINIMAL, "closed": "no"}, "closed: must be true or false"),
    ({**MINIMAL, "rewards": {"a": 1.0}}, "reward: give 'reward' (of the first slot) or 'rewards' (per offer), not both"),
    (
        {**MINIMAL, "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.7}]},
        "chosen: give 'chosen' and 'propensity', or 'offers', not both",
    ),
    (
        {**SLATE, "offers": [{"offer_id": "a", "slot": "one", "propensity": 0.5}]},
        "offers[0].slot: must be a whole number, got 'one'",
    ),
    ({**SLATE, "offers": [{"offer_id": "a", "slot": 1.0, "propensity": 0.5}]}, "offers[0].slot: must be a whole number"),
    ({**SLATE, "offers": [{"offer_id": "a", "slot": 0, "propensity": 0.5}]}, "offers[0].slot: must be 1 or more"),
    (
        {**SLATE, "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.5}, {"offer_id": "b", "slot": 3, "propensity": 1.0}]},
        "offers: slots must be 1, 2, ... without gaps or repeats",
    ),
    (
        {**SLATE, "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.5}, {"offer_id": "a", "slot": 2, "propensity": 1.0}]},
        "offers: offer 'a' is answered twice",
    ),
    ({**SLATE, "offers": [{"slot": 1, "propensity": 0.5}]}, "offers[0].offer_id: required"),
    (
        {**SLATE, "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.9}]},
        "offers[slot 1].propensity: 0.9 differs from the first-slot probability 0.5",
    ),
    (
        {**SLATE, "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.5}, {"offer_id": "x", "slot": 2, "propensity": 1.0}]},
        "offers[slot 2]: offer 'x' is not among the eligible candidates",
    ),
    ({**SLATE, "rewards": {"a": "1"}}, "rewards.a: must be a number"),
    ({**SLATE, "rewards": {"a": -2e6}}, "rewards.a: must be within ±1,000,000"),
    ({**SLATE, "rewards": {"z": 1.0}}, "rewards.z: a reward for an offer this decision did not answer"),
    ({**SLATE, "rewards": [1.0]}, "rewards: must be an object"),
    (
        {**SLATE, "offers": [{"offer_id": "help", "slot": 1, "propensity": 0.5, "fallback": True}]},
        "offers: the channel's fallback is answered alone, with propensity 1",
    ),
    (
        {
            **SLATE,
            "candidates": [
                {"offer_id": "a", "probability": 0.5, "slot": 1, "propensity": 0.4},
                {"offer_id": "b", "probability": 0.5},
            ],
        },
        "candidates[0].propensity: 0.4 differs from the answered offer's propensity 0.5",
    ),
    ([MINIMAL], "expected a JSON object, got list"),
    ("a line", "expected a JSON object, got str"),
]


@pytest.mark.parametrize(("line", "message"), INVALID, ids=[m[:60] for _, m in INVALID])
def test_every_line_that_breaks_the_contract_is_refused_naming_line_and_field(tmp_path: Path, line: object, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MINIMAL) + "\n\n" + json.dumps(line) + "\n")  # a blank line is skipped, not counted out
    with pytest.raises(LogError) as raised:
        from_jsonl(path, include_open=True)
    assert str(raised.value).startswith(f"{path} line 3: "), raised.value
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "line 1: not UTF-8 text"),
        (b'{"features": {}, ', "line 1: not JSON: Expecting property name enclosed in double quotes"),
        (b"[" * 100_000 + b"]" * 100_000, "line 1: nested too deeply"),
        (json.dumps(MINIMAL).encode() + b"\n" + b'{"context": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "line 2: context.a.a"),
    ],
)
def test_files_that_are_not_json_lines_are_refused_by_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    with pytest.raises(LogError, match="line") as raised:
        from_jsonl(path)
    assert message in str(raised.value)


def test_valid_lines_of_both_formats_are_read_as_written(tmp_path: Path) -> None:
    fallback = {
        "features": {},
        "candidates": [{"offer_id": "help", "eligible": True, "fallback": True, "probability": 1.0}],
        "offers": [{"offer_id": "help", "slot": 1, "propensity": 1.0, "fallback": True}],
        "rewards": {},
        "closed": True,
    }
    still_open = {**without(MINIMAL, "reward"), "closed": False}
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [MINIMAL, SLATE, fallback, still_open]) + "\n")
    decisions = from_jsonl(path, default_reward=0.25)
    assert [(d.chosen, d.propensity, d.reward) for d in decisions] == [("a", 0.7, 1.0), ("a", 0.5, 1.0), ("help", 1.0, 0.25)]
    assert decisions[1].slots == [("a", 0.5), ("b", 1.0)] and decisions[1].rewards == {"a": 1.0, "b": 0.25}
    assert decisions[1].multipliers.tolist() == [2.0, 1.0] and decisions[1].eligible == ["a", "b"]
    assert decisions[2].fallback and decisions[2].eligible == ["help"]
    with_open = from_jsonl(path, default_reward=0.25, include_open=True)
    assert len(with_open) == 4 and with_open[3].open and with_open[3].reward == 0.25


def test_target_specs() -> None:
    assert parse_target("uniform").name == "uniform"
    learner = parse_target("greedy=learner:gamma_scale=100,prior=0.1")
    assert learner.name == "greedy" and learner.learner.prior == 0.1
    with pytest.raises(ValueError, match="unknown settings nope"):
        parse_target("learner:nope=1")
    with pytest.raises(ValueError, match="not a policy"):
        parse_target("random")
