"""nba evaluate against Open Bandit Pipeline on the Open Bandit Dataset sample: `make bench-obd`.

The sample ships inside obp (0.5.7): 10,000 rounds of ZOZOTOWN's fashion recommendations,
80 items, 3 positions, a click as the reward, logged by a uniform random policy
(propensity 1/80), and 10,000 rounds logged by Bernoulli Thompson sampling (BTS), whose mean
click rate (0.0042) is BTS's on-policy value: the ground truth of evaluating BTS on the random
log. This script

1. converts the random log to nba's import format (``decisions.jsonl``: one decision a round,
   the user's four features and the position as the context, the 80 items as candidates with
   probability 1/80, the clicked-or-not item as the chosen offer) and the items' features to
   an offer catalogue (``offers.jsonl``, for ``--offers``);
2. writes BTS's action distribution (obp's ``compute_batch_action_dist``, the production
   prior) as a ``file:`` policy (``bts.jsonl``): each round gets BTS's distribution at the
   round's position, as obp's estimators index ``action_dist[i, :, position_i]`` (obp
   evaluates position-wise; nba sees the position as context);
3. runs ``nba evaluate`` and obp's IPS, SNIPS, DM and DR (DM/DR with obp's ``RegressionModel``
   on scikit-learn's ``LogisticRegression``, 3-fold cross-fitting, as obp's OBD example), and
   prints one table against the on-policy value. It exits with 1 when IPS or SNIPS differ from
   obp's by more than 1e-12, or DM or DR is further from the on-policy value than obp's.

obp is not a dependency of nba, nor of the ``bench`` extra: its declared pins (Python < 3.11,
scikit-learn 1.1, scipy 1.9) no longer install. It runs unchanged on today's versions, installed
without them (``make bench-obd`` does: ``pip install --no-deps --ignore-requires-python
obp==0.5.7``, with the bench extra and the packages obp imports: pandas before 3, whose
``drop`` obp calls in a way pandas 3 refuses, tqdm, seaborn). obp imports torch for its neural
policy learners only; when torch is absent, a stand-in module satisfies those imports (nothing
here calls torch).

    make bench-obd        # or: .venv/bin/python loadtests/obd.py [--out var/obd] [--n-sim 100000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
INSTALL = (
    "make bench-obd installs them; by hand: .venv/bin/pip install -e '.[bench]' 'pandas<3' tqdm seaborn "
    "&& .venv/bin/pip install --no-deps --ignore-requires-python obp==0.5.7"
)


def _torch_stand_in() -> None:
    """A module that answers every attribute with a class, so obp's ``import torch`` and its
    class definitions on ``torch.utils.data.Dataset`` succeed; using it fails loudly."""

    class _Anything(type):
        def __getattr__(cls, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything(name, (), {})

        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("torch is not installed: this obp feature needs it")

    class _Module(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything(name, (), {})

    for name in ("torch", "torch.nn", "torch.nn.functional", "torch.optim", "torch.utils", "torch.utils.data"):
        sys.modules[name] = _Module(name)


def _import_obp() -> Any:
    if importlib.util.find_spec("obp") is None or importlib.util.find_spec("sklearn") is None:
        sys.exit(f"obd.py needs obp 0.5.7 and scikit-learn: {INSTALL}")
    if importlib.util.find_spec("torch") is None:
        _torch_stand_in()
    import obp

    return obp


def convert(feedback: dict[str, Any], data: Any, item_context: Any, out: Path) -> tuple[Path, Path]:
    """The random log as nba's import format, and the items as an offer catalogue."""
    n_actions = feedback["n_actions"]
    items = [f"item-{a}" for a in range(n_actions)]
    user_columns = [c for c in data.columns if c.startswith("user_feature")]
    log = out / "decisions.jsonl"
    with log.open("w") as f:
        for i in range(feedback["n_rounds"]):
            row = data.iloc[i]
            line = {
                "decision_id": f"obd-{i}",
                "decided_at": str(row["timestamp"]).replace(" ", "T"),
                "features": {**{c: str(row[c]) for c in user_columns}, "position": str(int(feedback["position"][i]) + 1)},
                "candidates": [{"offer_id": a, "probability": 1.0 / n_actions} for a in items],
                "chosen": items[int(feedback["action"][i])],
                "propensity": float(feedback["pscore"][i]),
                "reward": float(feedback["reward"][i]),
            }
            f.write(json.dumps(line) + "\n")
    offers = out / "offers.jsonl"
    with offers.open("w") as f:
        for _, row in item_context.iterrows():
            features = {
                c: (float(row[c]) if c == "item_feature_0" else str(row[c]))
                for c in item_context.columns
                if c.startswith("item_feature")
            }
            f.write(json.dumps({"offer_id": f"item-{int(row['item_id'])}", "features": features}) + "\n")
    return log, offers


def policy_file(feedback: dict[str, Any], action_dist: np.ndarray, path: Path) -> Path:
    """BTS's distribution at each round's position, keyed by decision id."""
    with path.open("w") as f:
        for i in range(feedback["n_rounds"]):
            p = action_dist[i, :, int(feedback["position"][i])]
            f.write(
                json.dumps(
                    {"decision_id": f"obd-{i}", "probabilities": {f"item-{a}": float(v) for a, v in enumerate(p) if v > 0}}
                )
                + "\n"
            )
    return path


def obp_estimates(obp: Any, feedback: dict[str, Any], action_dist: np.ndarray, seed: int) -> dict[str, float]:
    from obp.ope import (
        DirectMethod,
        DoublyRobust,
        InverseProbabilityWeighting,
        OffPolicyEvaluation,
        RegressionModel,
        SelfNormalizedInverseProbabilityWeighting,
    )
    from sklearn.linear_model import LogisticRegression

    model = RegressionModel(
        n_actions=feedback["n_actions"],
        len_list=3,
        action_context=feedback["action_context"],
        base_model=LogisticRegression(max_iter=10000, C=100, random_state=seed),
    )
    q = model.fit_predict(
        context=feedback["context"],
        action=feedback["action"],
        reward=feedback["reward"],
        position=feedback["position"],
        pscore=feedback["pscore"],
        n_folds=3,
        random_state=seed,
    )
    ope = OffPolicyEvaluation(
        bandit_feedback=feedback,
        ope_estimators=[
            InverseProbabilityWeighting(),
            SelfNormalizedInverseProbabilityWeighting(),
            DirectMethod(),
            DoublyRobust(),
        ],
    )
    values = ope.estimate_policy_values(action_dist=action_dist, estimated_rewards_by_reg_model=q)
    names = {"ipw": "ips", "snipw": "snips", "dm": "dm", "dr": "dr"}
    out = {names[k]: float(v) for k, v in values.items()}
    n = feedback["n_rounds"]
    logged = q[np.arange(n), feedback["action"], feedback["position"]]
    out["brier"] = float(np.mean((logged - feedback["reward"]) ** 2))
    out["q_min"], out["q_max"] = float(q.min()), float(q.max())
    return out


def nba_reward_model(log: Path, offers: Path) -> dict[str, float]:
    """nba's reward model on the converted log: held-out Brier scores and its range."""
    sys.path.insert(0, str(ROOT))
    from bandit import limit_blas_threads
    from nba.evaluation.reward_model import RewardModel
    from nba.evaluation.sources import from_jsonl, read_offers

    limit_blas_threads()
    model = RewardModel(from_jsonl(log, offers=read_offers(offers)))
    brier, constant = model.brier()
    return {
        "brier": brier,
        "constant": constant,
        "q_min": float(model.predictions.min()),
        "q_max": float(model.predictions.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "var" / "obd"), help="folder for the converted files and the report")
    parser.add_argument("--n-sim", type=int, default=100_000, help="BTS draws behind its action distribution")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--refits", type=int, default=20, help="nba evaluate --refits")
    args = parser.parse_args()
    obp = _import_obp()
    from obp.dataset import OpenBanditDataset
    from obp.policy import BernoulliTS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = OpenBanditDataset(behavior_policy="random", campaign="all")
    feedback = dataset.obtain_batch_bandit_feedback()
    on_policy = float(OpenBanditDataset.calc_on_policy_policy_value_estimate(behavior_policy="bts", campaign="all"))
    bts = BernoulliTS(
        n_actions=dataset.n_actions, len_list=dataset.len_list, is_zozotown_prior=True, campaign="all", random_state=args.seed
    )
    action_dist = bts.compute_batch_action_dist(n_sim=args.n_sim, n_rounds=feedback["n_rounds"])

    log, offers = convert(feedback, dataset.data, dataset.item_context, out)
    policy = policy_file(feedback, action_dist, out / "bts.jsonl")
    reference = obp_estimates(obp, feedback, action_dist, args.seed)

    estimates_path = out / "estimates.json"
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nba",
            "evaluate",
            "--log",
            str(log),
            "--offers",
            str(offers),
            "--policy",
            f"bts=file:{policy}",
            "--policy",
            "logged",
            "--refits",
            str(args.refits),
            "--seed",
            str(args.seed % 2**31),
            "--json",
            str(estimates_path),
            "--html",
            str(out / "report.html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"nba evaluate failed ({run.returncode}): {run.stderr.strip()}")
    ours = {e["estimator"]: e for e in json.loads(estimates_path.read_text()) if e["policy"] == "bts"}

    print(
        f"Open Bandit Dataset sample (obp {obp.__version__}): {feedback['n_rounds']} rounds logged by uniform random, "
        f"{dataset.n_actions} items, {dataset.len_list} positions; target: Bernoulli TS (production prior, "
        f"{args.n_sim} draws); nba evaluate took {seconds:.1f} s"
    )
    print(
        f"{'estimator':10} {'obp':>9} {'nba':>9} {'nba - obp':>10} {'on-policy':>10} {'obp error':>10} "
        f"{'nba error':>10}  nba 95% interval"
    )
    for name in ("ips", "snips", "dm", "dr"):
        e, theirs = ours[name], reference[name]
        print(
            f"{name:10} {theirs:9.6f} {e['value']:9.6f} {e['value'] - theirs:10.1e} {on_policy:10.6f} "
            f"{theirs / on_policy - 1:+10.1%} {e['value'] / on_policy - 1:+10.1%}  [{e['low']:.6f}, {e['high']:.6f}]"
        )
    model = nba_reward_model(log, offers)
    print(f"\nreward models, held-out Brier score on the logged clicks (a constant, each fold's mean: {model['constant']:.7f}):")
    print(
        f"  obp (logistic regression per position, C=100): {reference['brier']:.7f}, "
        f"predictions {reference['q_min']:.5f} to {reference['q_max']:.5f}"
    )
    print(
        f"  nba (cross-fitted logistic, 5 folds):           {model['brier']:.7f}, "
        f"predictions {model['q_min']:.5f} to {model['q_max']:.5f}"
    )
    print(f"files: {out}")
    failed = [
        f"{name}: nba {ours[name]['value']!r} is not obp's {reference[name]!r}"
        for name in ("ips", "snips")
        if abs(ours[name]["value"] - reference[name]) > 1e-12
    ]
    failed += [
        f"{name}: nba is further from the on-policy value than obp"
        for name in ("dm", "dr")
        if abs(ours[name]["value"] - on_policy) > abs(reference[name] - on_policy)
    ]
    if failed:
        sys.exit("; ".join(failed))


if __name__ == "__main__":
    main()
