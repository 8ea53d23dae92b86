"""Policies given from outside (`--policy NAME=file:PATH`, ``ExternalPolicy``) and offer features
in the import format (per candidate, or an `--offers` catalogue), through the logged-data
contract and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from nba.evaluation import evaluate, from_jsonl
from nba.evaluation.logs import LogError
from nba.evaluation.reward_model import RewardModel
from nba.evaluation.sources import read_offers
from nba.evaluation.targets import ExternalPolicy, Uniform, parse_target


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def log_lines(n: int = 60, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = {"a": 0.6, "b": 0.3, "c": 0.1}
        chosen = str(rng.choice(list(p), p=list(p.values())))
        out.append(
            {
                "decision_id": f"d{i}",
                "features": {"segment": str(rng.choice(["x", "y"]))},
                "candidates": [{"offer_id": a, "probability": v} for a, v in p.items()],
                "chosen": chosen,
                "propensity": p[chosen],
                "reward": float(rng.random() < 0.3),
            }
        )
    return out


def uniform_file(path: Path, lines: list[dict]) -> Path:
    return write(
        path,
        [
            {"decision_id": x["decision_id"], "probabilities": {c["offer_id"]: 1 / len(x["candidates"]) for c in x["candidates"]}}
            for x in lines
        ],
    )


def nba(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nba", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_uniform_given_as_a_file_equals_uniform(tmp_path: Path) -> None:
    lines = log_lines()
    decisions = from_jsonl(write(tmp_path / "log.jsonl", lines))
    external = ExternalPolicy.read(uniform_file(tmp_path / "uniform.jsonl", lines), "as-file")
    model = RewardModel(decisions)
    estimates = evaluate(decisions, [Uniform(), external], n_bootstrap=50, reward_model=model)
    by = {(e.policy, e.estimator): e for e in estimates}
    for estimator in ("ips", "snips", "dm", "dr"):
        assert by[("as-file", estimator)].value == pytest.approx(by[("uniform", estimator)].value, abs=1e-12)
        assert by[("as-file", estimator)].ess == pytest.approx(by[("uniform", estimator)].ess)
    # A skewed file policy is read as written: always b.
    always_b = ExternalPolicy({x["decision_id"]: {"b": 1.0} for x in lines}, "always-b")
    ips = next(e for e in evaluate(decisions, [always_b], n_bootstrap=10, refits=0) if e.estimator == "ips")
    b = [d for d in decisions if d.chosen == "b"]
    assert ips.value == pytest.approx(sum(d.reward / 0.3 for d in b) / len(decisions))


def test_the_command_line_evaluates_a_file_policy_as_the_builtin(tmp_path: Path) -> None:
    lines = log_lines()
    log = write(tmp_path / "log.jsonl", lines)
    policy = uniform_file(tmp_path / "uniform.jsonl", lines)
    out = tmp_path / "estimates.json"
    run = nba(
        "evaluate",
        "--log",
        str(log),
        "--policy",
        "uniform",
        "--policy",
        f"mine=file:{policy}",
        "--bootstrap",
        "20",
        "--refits",
        "0",
        "--json",
        str(out),
        "--html",
        str(tmp_path / "r.html"),
    )
    assert run.returncode == 0, run.stderr
    estimates = json.loads(out.read_text())
    mine = {e["estimator"]: e["value"] for e in estimates if e["policy"] == "mine"}
    uniform = {e["estimator"]: e["value"] for e in estimates if e["policy"] == "uniform"}
    assert mine == pytest.approx(uniform, abs=1e-12)

    # A file that breaks its format is a data error (exit 1) naming the line and field; a file
    # that does not exist is a usage error (exit 2), as for --log.
    bad = write(tmp_path / "bad.jsonl", [{"decision_id": "d0", "probabilities": {"a": 0.5, "b": 0.2}}])
    run = nba("evaluate", "--log", str(log), "--policy", f"file:{bad}", "--html", str(tmp_path / "r.html"))
    assert run.returncode == 1 and f"{bad} line 1: probabilities: sum to 0.700000, not 1" in run.stderr
    run = nba("evaluate", "--log", str(log), "--policy", f"file:{tmp_path / 'missing.jsonl'}")
    assert run.returncode == 2 and "no such file" in run.stderr


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"decision_id": "d0", "probabilities": {"a": 0.5, "b": 0.3}}], "line 1: probabilities: sum to 0.800000, not 1"),
        ([{"decision_id": "d0", "probabilities": {"a": 1.5, "b": -0.5}}], "line 1: probabilities.a: must be in [0, 1], got 1.5"),
        ([{"decision_id": "d0", "probabilities": {"a": -0.5, "b": 1.5}}], "line 1: probabilities.a: must be in [0, 1], got -0.5"),
        ([{"decision_id": "d0", "probabilities": {"a": "1"}}], "line 1: probabilities.a: must be a number"),
        ([{"decision_id": "d0", "probabilities": {"a": 1.0}, "weight": 2}], "line 1: weight: unknown field"),
        ([{"probabilities": {"a": 1.0}}], "line 1: decision_id: required"),
        (
            [{"decision_id": "d0", "probabilities": {"a": 1.0}}, {"decision_id": "d0", "probabilities": {"b": 1.0}}],
            "line 2: decision_id: 'd0' is already on line 1",
        ),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
        (["{not json"], "line 1: not JSON"),
        (['{"decision_id": "d0", "probabilities": {"a": NaN}}'], "line 1: probabilities.a: must be a finite number"),
    ],
)
def test_a_policy_file_that_breaks_its_format_is_refused_naming_line_and_field(tmp_path: Path, lines: list, message: str) -> None:
    path = write(tmp_path / "policy.jsonl", lines)
    with pytest.raises(LogError) as caught:
        parse_target(f"file:{path}")
    assert f"{path} {message}" in str(caught.value)


def test_a_policy_file_must_cover_the_log_with_its_candidates(tmp_path: Path) -> None:
    lines = log_lines(5)
    decisions = from_jsonl(write(tmp_path / "log.jsonl", lines))
    missing = write(tmp_path / "missing.jsonl", [{"decision_id": f"d{i}", "probabilities": {"a": 1.0}} for i in range(4)])
    with pytest.raises(LogError, match=rf"{missing}: decision_id: no line for the logged decision 'd4'"):
        evaluate(decisions, [ExternalPolicy.read(missing)], n_bootstrap=10, refits=0)
    unknown = write(
        tmp_path / "unknown.jsonl", [{"decision_id": f"d{i}", "probabilities": {"a": 0.5, "z": 0.5}} for i in range(5)]
    )
    with pytest.raises(LogError, match=rf"{unknown} line 1: probabilities.z: not one of the decision's eligible candidates"):
        evaluate(decisions, [ExternalPolicy.read(unknown)], n_bootstrap=10, refits=0)
    # A log's decision ids are unique (a file: policy is keyed by them).
    with pytest.raises(LogError, match="line 2: decision_id: 'd0' is already the id of line 1"):
        from_jsonl(write(tmp_path / "twice.jsonl", [lines[0], lines[0]]))


def test_offer_features_per_candidate_and_from_a_catalogue(tmp_path: Path) -> None:
    lines = log_lines(3)
    lines[0]["candidates"][0]["features"] = {"price": 9.5, "terms": {"months": 12}}
    catalogue = write(
        tmp_path / "offers.jsonl",
        [
            {"offer_id": "a", "features": {"price": 1.0}},
            {"offer_id": "b", "features": {"price": 2.0, "category": "loan"}},
        ],
    )
    offers = read_offers(catalogue)
    assert offers == {"a": {"price": 1.0}, "b": {"category": "loan", "price": 2.0}}
    decisions = from_jsonl(write(tmp_path / "log.jsonl", lines), offers=offers)
    # A candidate's own features win over the catalogue's, nested ones flattened; c has none.
    assert decisions[0].offer_features == {"a": {"price": 9.5, "terms.months": 12}, "b": offers["b"]}
    assert decisions[1].offer_features == {"a": offers["a"], "b": offers["b"]}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"offer_id": "a", "features": {"price": 1.0}, "name": "x"}], "line 1: name: unknown field"),
        ([{"offer_id": "a"}], "line 1: features: required"),
        ([{"offer_id": "", "features": {}}], "line 1: offer_id:"),
        (['{"offer_id": "a", "features": {"price": Infinity}}'], "line 1: features.price: inf is not a finite number"),
        ([{"offer_id": "a", "features": {"price": 2**60}}], "line 1: features.price: an integer of 19 digits"),
        (
            [{"offer_id": "a", "features": {}}, {"offer_id": "a", "features": {}}],
            "line 2: offer_id: 'a' is already listed on line 1",
        ),
    ],
)
def test_an_offer_catalogue_that_breaks_the_contract_is_refused(tmp_path: Path, lines: list, message: str) -> None:
    path = write(tmp_path / "offers.jsonl", lines)
    with pytest.raises(LogError) as caught:
        read_offers(path)
    assert f"{path} {message}" in str(caught.value)


def test_candidate_features_are_checked_as_the_context_is(tmp_path: Path) -> None:
    lines = log_lines(2)
    lines[1]["candidates"][2]["features"] = {"price": 1e300}
    path = write(tmp_path / "log.jsonl", lines)
    with pytest.raises(LogError, match=r"line 2: candidates\[2\]\.features\.price: 1e\+300 is not a finite number"):
        from_jsonl(path)
    lines[1]["candidates"][2]["features"] = "cheap"
    with pytest.raises(LogError, match=r"line 2: candidates\[2\]\.features: must be an object"):
        from_jsonl(write(path, lines))


def test_later_slots_of_a_file_policy_enter_position_wise_ips(tmp_path: Path) -> None:
    """Uniform logging of two slots out of a (pays 1), b and c (pay 0): the slate a, b earns 1 in
    expectation. Given as a file with its second slot, position-wise IPS matches the same slate
    written as code; without the second slot, the first slot's probabilities renormalised leave
    nothing for b, and the second slot's reward is lost."""
    rng = np.random.default_rng(3)
    lines = []
    for i in range(3000):
        first = str(rng.choice(["a", "b", "c"]))
        second = str(rng.choice([x for x in "abc" if x != first]))
        lines.append(
            {
                "decision_id": f"d{i}",
                "features": {},
                "rewards": {o: float(o == "a") for o in (first, second)},
                "candidates": [{"offer_id": x, "probability": 1 / 3} for x in "abc"],
                "offers": [
                    {"offer_id": first, "slot": 1, "propensity": 1 / 3},
                    {"offer_id": second, "slot": 2, "propensity": 0.5},
                ],
            }
        )
    decisions = from_jsonl(write(tmp_path / "log.jsonl", lines))
    slate = write(
        tmp_path / "slate.jsonl",
        [
            {
                "decision_id": x["decision_id"],
                "probabilities": {"a": 1.0},
                **({"later_slots": [{"b": 1.0}]} if x["offers"][0]["offer_id"] == "a" else {}),
            }
            for x in lines
        ],
    )
    first_only = ExternalPolicy({x["decision_id"]: {"a": 1.0} for x in lines}, "first-only")
    estimates = evaluate(decisions, [ExternalPolicy.read(slate, "slate"), first_only], n_bootstrap=50, refits=0)
    by = {(e.policy, e.estimator): e for e in estimates}
    a_then_b = [d for d in decisions if [o for o, _ in d.slots] == ["a", "b"]]
    assert by[("slate", "ips-slots")].value == pytest.approx(
        sum(d.rewards["a"] / (1 / 3) + d.rewards["b"] / (1 / 3 * 0.5) for d in a_then_b) / len(decisions)
        + sum(d.rewards["a"] / (1 / 3) for d in decisions if d.chosen == "a" and d not in a_then_b) / len(decisions)
    )
    assert by[("slate", "ips-slots")].low <= 1.0 <= by[("slate", "ips-slots")].high
    assert by[("first-only", "ips-slots")].value == pytest.approx(by[("first-only", "ips")].value)

    wrong = write(
        tmp_path / "wrong.jsonl",
        [{"decision_id": x["decision_id"], "probabilities": {"a": 1.0}, "later_slots": [{"a": 1.0}]} for x in lines],
    )
    with pytest.raises(LogError, match=r"wrong.jsonl line \d+: later_slots\[0\]\.a: not one of the offers left for slot 2"):
        evaluate(decisions, [ExternalPolicy.read(wrong)], n_bootstrap=10, refits=0)
    bad = write(tmp_path / "bad.jsonl", [{"decision_id": "d0", "probabilities": {"a": 1.0}, "later_slots": [{"b": 0.4}]}])
    with pytest.raises(LogError, match=r"bad.jsonl line 1: later_slots\[0\]: sum to 0.400000, not 1"):
        ExternalPolicy.read(bad)
