"""The evaluation report: a table for the terminal and an HTML page with plots beside it."""

from __future__ import annotations

import base64
import html
import importlib.util
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from nba.evaluation.estimators import Estimate
from nba.evaluation.logs import LoggedDecision

__all__ = ["html_report", "table"]


def table(estimates: Sequence[Estimate]) -> str:
    """Policies (best first by doubly robust estimate) with every estimator and its interval."""
    truth = any(e.truth is not None for e in estimates)
    by_policy: dict[str, list[Estimate]] = {}
    for e in estimates:
        by_policy.setdefault(e.policy, []).append(e)
    order = sorted(by_policy, key=lambda p: -next((e.value for e in by_policy[p] if e.estimator == "dr"), 0.0))
    header = f"{'policy':30} {'estimator':10} {'value':>8}  {'95% interval':>19}  {'ESS':>8}"
    header += f"  {'truth':>7}" if truth else ""
    lines = [header, "-" * len(header)]
    notes: list[str] = []
    for policy in order:
        for e in by_policy[policy]:
            row = f"{policy[:30]:30} {e.estimator:10} {e.value:8.4f}  [{e.low:8.4f}, {e.high:8.4f}]  {e.ess:8.0f}"
            if truth:
                mark = "" if e.truth is None else ("" if e.covers_truth else " !")
                row += f"  {e.truth:7.4f}{mark}" if e.truth is not None else f"  {'':7}"
            lines.append(row)
        for w in by_policy[policy][0].warnings:
            notes.append(f"{policy}: {w}")
    if notes:
        lines += ["", *[f"warning: {n}" for n in notes]]
    if truth:
        lines += ["", "! the interval does not cover the true value"]
    return "\n".join(lines)


def html_report(
    estimates: Sequence[Estimate],
    decisions: Sequence[LoggedDecision],
    curves: Mapping[str, np.ndarray],
    source: str,
) -> str:
    """A page with the table, the estimates with their intervals, and value over time (the
    plots need matplotlib, the ``plots`` extra; without it the page says so and keeps the table)."""
    if importlib.util.find_spec("matplotlib") is None:
        figures = "<p>The plots need matplotlib, which is not installed: <code>pip install 'nba[plots]'</code>.</p>"
    else:
        figures = _figures(estimates, decisions, curves)

    first = decisions[0].decided_at.isoformat() if decisions else ""
    last = decisions[-1].decided_at.isoformat() if decisions else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nba offline evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
pre{{background:#f6f6f6;padding:1rem;overflow-x:auto}}img{{max-width:100%}}</style></head>
<body><h1>Offline evaluation</h1>
<p>{len(decisions)} logged decisions from {html.escape(source)}, {html.escape(first)} to {html.escape(last)};
written {datetime.now(UTC).isoformat(timespec="seconds")}.</p>
{figures}
<h2>Table</h2><pre>{html.escape(table(estimates))}</pre>
<p>IPS: inverse propensity scoring; SNIPS: self-normalised IPS; DM: direct method (a reward model);
DR: doubly robust. ESS: effective sample size.</p></body></html>
"""


def _figures(estimates: Sequence[Estimate], decisions: Sequence[LoggedDecision], curves: Mapping[str, np.ndarray]) -> str:
    """The estimates with their intervals, and value over time, as inline PNG images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(e.policy for e in estimates))
    figure, axis = plt.subplots(figsize=(9, 0.5 + 0.6 * len(policies)))
    names = ["ips", "snips", "dm", "dr"]
    for k, name in enumerate(names):
        for i, policy in enumerate(policies):
            e = next((x for x in estimates if x.policy == policy and x.estimator == name), None)
            if e is None:
                continue
            y = i + (k - 1.5) * 0.15
            axis.errorbar(
                e.value,
                y,
                xerr=[[e.value - e.low], [e.high - e.value]],
                fmt="o",
                capsize=3,
                color=f"C{k}",
                label=name if i == 0 else None,
            )
            if e.truth is not None and k == 0:
                axis.plot([e.truth], [i], marker="|", markersize=22, color="black", label="truth" if i == 0 else None)
    axis.set_yticks(range(len(policies)), policies)
    axis.set_xlabel("estimated value (mean reward per decision)")
    axis.legend(loc="best", fontsize="small")
    axis.grid(axis="x", alpha=0.3)
    estimates_png = _png(figure, plt)

    figure, axis = plt.subplots(figsize=(9, 4))
    window = max(1, len(decisions) // 20)
    x = np.arange(len(decisions))
    logged = np.array([d.reward for d in decisions])
    axis.plot(x, _rolling(logged, window), color="gray", label="logged reward", linewidth=1)
    for k, (policy, terms) in enumerate(curves.items()):
        axis.plot(x, _rolling(terms, window), color=f"C{k}", label=f"{policy} (DR)", linewidth=1.5)
    axis.set_xlabel(f"decision (oldest first), mean over {window} decisions")
    axis.set_ylabel("reward per decision")
    axis.legend(loc="best", fontsize="small")
    axis.grid(alpha=0.3)
    time_png = _png(figure, plt)

    return (
        f'<h2>Estimates with 95% intervals</h2><img alt="estimates" src="data:image/png;base64,{estimates_png}">\n'
        f'<h2>Value over time</h2><img alt="value over time" src="data:image/png;base64,{time_png}">'
    )


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start)."""
    cumulative = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (cumulative[end] - cumulative[start]) / (end - start)


def _png(figure: object, plt: object) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()  # type: ignore[attr-defined]
    figure.savefig(buffer, format="png", dpi=100)  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[attr-defined]
    return base64.b64encode(buffer.getvalue()).decode()
