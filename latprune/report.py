"""The report of ``latprune run``: one self-contained HTML page (plots embedded as PNG) per output folder."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from latprune.input_size import SIZE_ONLY
from latprune.outputs import atomic_path

if TYPE_CHECKING:
    from latprune.planner.plan import GroupPlan
    from latprune.planner.records import VerificationRecord
    from latprune.run_summary import Accuracy, LatencyOutcome, RunResult, RunSummary

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plots img { width: 520px; border: 1px solid #ddd; }
.ok { color: #176b1f; font-weight: bold; } .miss { color: #a31515; font-weight: bold; }
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def widths_plot(groups: Sequence[GroupPlan]) -> str:
    fig, ax = _figure(6.2, 3.4)
    positions = range(len(groups))
    ax.bar(positions, [g.full_width for g in groups], color="#d0d7e1", label="dense")
    ax.bar(positions, [g.width for g in groups], color="tab:blue", label="kept")
    ax.set(xlabel="channel group", ylabel="channels", title="Width per group")
    if len(groups) <= 20:
        ax.set_xticks(list(positions), [g.id for g in groups], rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=8)
    return _png(fig)


def latency_plot(latency: LatencyOutcome) -> str:
    fig, ax = _figure()
    figures = [latency.dense, latency.pruned]
    predicted = [f.predicted_ms or 0.0 for f in figures]
    measured = [f.measured_ms for f in figures]
    # the host's spread, around the claimed latency (for the pruned network: derived from its paired ratio)
    errors = [[max(f.measured_ms - f.p10_ms, 0.0) for f in figures],
              [max(f.p90_ms - f.measured_ms, 0.0) for f in figures]]
    ax.bar([0, 2], predicted, width=0.8, color="#9ecae1", label="predicted")
    ax.bar([0.8, 2.8], measured, width=0.8, color="tab:blue", yerr=errors, capsize=4, label="measured (p10-p90)")
    ax.axhline(latency.budget_ms, color="tab:red", ls="--", label=f"budget {latency.budget_ms:.3g} ms")
    ax.set_xticks([0.4, 2.4], ["dense", "pruned"])
    ax.set(ylabel="latency (ms)", title=f"Latency on {latency.backend}")
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_plot(accuracy: Accuracy) -> str:
    fig, ax = _figure()
    names = [k for k in ("dense", "pruned", "recovered") if getattr(accuracy, k) is not None]
    values = [100 * getattr(accuracy, k) for k in names]
    bars = ax.bar(names, values, color=["#7f7f7f", "#ff7f0e", "tab:green"][:len(names)])
    ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax.set(ylabel="top-1 accuracy (%)", ylim=(0, 105), title=f"Accuracy on {accuracy.images} images")
    return _png(fig)


def stages_plot(stages: dict) -> str:
    fig, ax = _figure(6.2, 2.8)
    names = list(stages)
    ax.barh(names, [stages[n] for n in names], color="tab:purple")
    ax.invert_yaxis()
    ax.set(xlabel="seconds", title="Time per stage")
    return _png(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def verification_section(verification: VerificationRecord | None) -> str:
    """The closed loop's rounds: what each plan was predicted and measured at, against the band."""
    if verification is None:
        return ""
    from latprune.planner.closed_loop import ROUND_COLUMNS, round_cells

    if not verification.verified:
        return f"<p>The plan was not verified on the device: {html.escape(verification.reason)}.</p>"
    low, high = verification.band_ms
    return (f"<p>Closed loop: each plan was measured on the device next to the dense model, learned, and re-planned "
            f"until the measured latency lay in the band {low:.3f}-{high:.3f} ms (tolerance "
            f"{100 * verification.tol:.0f}%): {html.escape(verification.status)}, round "
            f"{verification.chosen_round} of {verification.rounds_used} ({html.escape(verification.stop)}), "
            f"{verification.seconds:.1f} s.</p>"
            + _table(ROUND_COLUMNS, [round_cells(r) for r in verification.rounds]))


def run_section(run: RunResult) -> str:
    latency, accuracy, plan = run.latency, run.accuracy, run.plan
    over = f"{100 * (latency.measured_over_budget - 1):.1f}%"
    verdict = {"met": '<span class="ok">meets the budget</span>',
               "within noise": f'<span class="ok">exceeds the budget by {over}, within the measurement\'s 95% '
                               f'interval (+-{100 * latency.ratio.half_width:.1f}%)</span>',
               "missed": f'<span class="miss">exceeds the budget by {over}</span>'}[latency.budget_verdict]
    rows = [
        # (a run planned at a smaller input size is judged against the dense network at its own, whose MACs the plan
        # does not count)
        ["dense" if run.input_size is None else f"dense at {run.input_size.native_text}",
         _ms(latency.dense.predicted_ms), _ms(latency.dense.measured_ms),
         "-" if run.input_size else f"{plan.dense_macs / 1e6:.1f}",
         _pct(accuracy and accuracy.dense)],
        [(f"dense at {run.input_size.size_text}" if plan.method == SIZE_ONLY else "pruned")
         + (" + " + run.recovery["recipe"] if run.recovery else ""), _ms(latency.pruned.predicted_ms),
         _ms(latency.pruned.measured_ms), f"{plan.macs / 1e6:.1f}", _pct(accuracy and accuracy.recovered)],
    ]
    if accuracy and accuracy.pruned is not None and run.recovery:
        rows.insert(1, ["pruned, before recovery", "", "", "", _pct(accuracy.pruned)])
    plots = [widths_plot(plan.groups), latency_plot(latency)]
    if accuracy:
        plots.append(accuracy_plot(accuracy))
    plots.append(stages_plot(run.stages_s))
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
    group_rows = [[g.id, g.full_width, g.width, f"{100 * g.width / g.full_width:.0f}%"
                   + (" (branch removed)" if g.width == 0 else "")] for g in plan.groups]
    depth = (f"<p>Residual branches removed whole ({len(plan.removed)}): {html.escape(', '.join(plan.removed))}; "
             f"each block keeps its shortcut plus the branch's constant output.</p>" if plan.removed else "")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
    if plan.preprocessing:
        notes += f"<li>image preprocessing: {html.escape(plan.preprocessing.describe(run.input_shape))}</li>"
    if run.input_size:
        notes += f"<li>{html.escape(run.input_size.describe())}</li>"
    pruned, dense = latency.pruned, latency.dense
    planned = (f"planned to {latency.planned_ms:.3f} ms predicted, {100 * latency.margin:.0f}% margin"
               if plan.method != SIZE_ONLY else "the input size alone met it: nothing planned or pruned")
    return f"""
<h2>{html.escape(run.model)} on {html.escape(latency.backend)}</h2>
<p>Budget {latency.budget_ms:.3f} ms ({html.escape(latency.budget_basis)}; {planned});
measured {pruned.measured_ms:.3f} ms (dense {dense.measured_ms:.3f} ms,
measured speedup {latency.measured_speedup:.2f}x, predicted {_ms(pruned.predicted_ms)} ms): {verdict}.
Measurement noise (round spread): {100 * latency.noise:.1f}%.</p>
{_table(["model", "predicted ms", "measured ms", "MMACs", "top-1"], rows)}
{depth}
{verification_section(latency.verification)}
<ul>{notes}</ul>
<div class="plots">{images}</div>
<details><summary>Plan per group ({len(plan.groups)} groups, {html.escape(plan.method)},
importance kept {100 * plan.importance_kept:.1f}% by {html.escape(plan.importance)})</summary>
{_table(["group", "dense width", "kept width", "kept"], group_rows)}</details>
"""


def write_report(summary: RunSummary, path: str | os.PathLike) -> str:
    """Write the HTML report of a run summary to ``path``."""
    sections = "".join(run_section(run) for run in summary.runs)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latprune report</title><style>{STYLE}</style></head>
<body><h1>latprune report</h1>
<p>latprune {html.escape(summary.latprune)}, {html.escape(summary.created)}; device
{html.escape(summary.runs[0].device if summary.runs else '')}.</p>
{sections}
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return str(path)
