"""Check the performance model against measurement on random pruned variants, in ratio space.

Each variant's latency is measured as its paired ratio to the dense network timed in the same
rounds (the only latency claim this noisy host supports) and compared with the predicted ratio
(predicted variant / predicted dense); the dense network's absolute prediction is reported apart.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from latprune.analysis import ModelAnalysis, as_analysis
from latprune.groups import ChannelGroup
from latprune.models import LoadedModel
from latprune.network import layer_signatures
from latprune.outputs import atomic_path
from latprune.perfmodel.estimator import NetworkLatencyModel
from latprune.profiler.api import RoundsRule, measure_paired
from latprune.surgery import prune_channels


def random_widths(groups: list[ChannelGroup], rng: random.Random, on_grid: bool, step: int) -> dict[str, int]:
    """Widths of 30-100% per group; ``on_grid`` rounds them to multiples of the step."""
    widths = {}
    for g in groups:
        width = max(g.divisor, round(g.width * rng.uniform(0.3, 1.0) / g.divisor) * g.divisor)
        if on_grid and g.width >= 2 * step and g.divisor == 1:
            width = min(g.width, max(step, round(width / step) * step))
        widths[g.id] = width
    return widths


def with_removed_branches(widths: dict[str, int], branches: Sequence, rng: random.Random,
                          rate: float = 0.3) -> dict[str, int]:
    """``widths`` with each residual branch removed (its inner groups at 0) with probability ``rate``, at least one."""
    removed = [b for b in branches if rng.random() < rate] or [rng.choice(list(branches))]
    return {**widths, **{gid: 0 for b in removed for gid in b.groups}}


def validate_model(model: LoadedModel | ModelAnalysis, backend: str, perf: NetworkLatencyModel, step: int,
                   variants: int = 20, rounds: int = 10, runs: int = 10, seed: int = 0, threads: int | None = None,
                   out_dir: str | Path | None = None, plan_like: Sequence[tuple[float, dict[str, int]]] = (),
                   max_seconds: float = 300.0, quiet_ms: float | None = None) -> dict:
    """Predict and measure ``variants`` random pruned variants, and the ``plan_like`` ones (a budget
    fraction and the widths the planner chose at it), each as its paired ratio to the dense model timed in the
    same rounds (at least ``rounds``, then until every ratio is known to +-1.5% or ``max_seconds``; ``quiet_ms``:
    the dense model's quiet-state time here, to leave out rounds of the host's slow state).

    Errors are ratio errors (predicted ratio / measured ratio - 1), reported for each kind apart:
    random variants show how the model does where it was trained, plan-like ones how it does where
    plans live (narrow layers at the width edge). The dense reference's absolute error is apart.
    """
    analysis = as_analysis(model)
    loaded, key, groups = analysis.loaded, analysis.key, list(analysis.groups)
    x = loaded.example_input()
    rng = random.Random(seed)
    models, rows = [], []
    chosen = [("random", None, random_widths(groups, rng, on_grid=i % 2 == 0, step=step)) for i in range(variants)]
    if analysis.branches:  # as many again with residual branches removed, reported apart
        chosen += [("depth", None, with_removed_branches(random_widths(groups, rng, on_grid=i % 2 == 0, step=step),
                                                         analysis.branches, rng)) for i in range(variants)]
    chosen += [("plan", fraction, widths) for fraction, widths in plan_like]
    for i, (kind, fraction, widths) in enumerate(chosen):
        kept = {g.id: g.leading_channels(widths[g.id]) for g in groups if widths[g.id] < g.width}
        models.append(prune_channels(loaded.model, x, groups, kept, branches=analysis.branches))
        rows.append({"variant": i, "kind": kind, "budget_fraction": fraction,
                     "on_grid": i % 2 == 0 if kind != "plan" else None, "widths": widths,
                     "removed_branches": sum(all(widths[gid] == 0 for gid in b.groups) for b in analysis.branches)})
    batch = loaded.input_shape[0]

    def predict(m) -> float:
        return float(perf.predict(key, list(layer_signatures(m, analysis.layers_of(m), batch, backend).values())))

    dense_pred = predict(loaded.model)
    rule = RoundsRule(min_rounds=max(rounds, 2), max_rounds=max(rounds, 60), max_seconds=max_seconds)
    timing, device = measure_paired(loaded.model, models, loaded.input_shape, backend, rule=rule, runs=runs,
                                    threads=threads, seed=seed, quiet_ms=quiet_ms)
    dense = timing.reference
    for index, (row, m) in enumerate(zip(rows, models)):
        ratio = timing.ratios[index]
        predicted = predict(m)
        row.update(predicted_ms=predicted, measured_ms=timing.derived_ms(index), predicted_ratio=predicted / dense_pred,
                   measured_ratio=ratio.ratio, ratio_low=ratio.low, ratio_high=ratio.high,
                   error=(predicted / dense_pred) / ratio.ratio - 1, spread=timing.networks[index].spread)
    random_rows = [r for r in rows if r["kind"] == "random"]
    result = {
        "model": key, "backend": backend, "device": device.get("fingerprint"), "variants": variants,
        "dense": {"predicted_ms": dense_pred, "measured_ms": dense.median_ms, "p10_ms": dense.p10_ms,
                  "p90_ms": dense.p90_ms, "spread": dense.spread, "error": dense_pred / dense.median_ms - 1},
        **_errors(random_rows),
        "plan_like": _errors([r for r in rows if r["kind"] == "plan"]) if plan_like else None,
        "depth": _errors([r for r in rows if r["kind"] == "depth"]) if analysis.branches else None,
        "rounds": timing.ratios[0].rounds if timing.ratios else 0, "converged": timing.converged,
        "widest_interval": timing.widest().half_width if timing.ratios else 0.0,
        "noise": float(np.median([m.spread for m in (dense, *timing.networks)])),
        "noise_p10_p90": float(np.median([(m.p90_ms - m.p10_ms) / m.median_ms for m in (dense, *timing.networks)])),
        "per_variant": rows,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = key.replace(":", "_").replace("@", "_")
        with atomic_path(out / f"validate_{stem}_{backend}.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        scatter_plot(rows, f"{key} on {backend}: ratio MAPE {100 * result['mape']:.1f}% random"
                     + (f", {100 * result['plan_like']['mape']:.1f}% plan-like" if plan_like else ""),
                     out / f"validate_{stem}_{backend}.png")
        result["files"] = [str(out / f"validate_{stem}_{backend}.json"), str(out / f"validate_{stem}_{backend}.png")]
    return result


def _errors(rows: Sequence[dict]) -> dict:
    """Ratio errors of measured variants (empty rows: none): MAPE, mean, max, share within +-5% and +-8%, and
    Kendall's tau between predicted and measured ratios."""
    if not rows:
        return {"n": 0}
    rel = np.array([r["error"] for r in rows])
    pred, meas = [r["predicted_ratio"] for r in rows], [r["measured_ratio"] for r in rows]
    return {"n": len(rows), "mape": float(np.abs(rel).mean()), "mean_error": float(rel.mean()),
            "max_abs_pct_error": float(100 * np.abs(rel).max()), "within_5pct": float((np.abs(rel) <= 0.05).mean()),
            "within_8pct": float((np.abs(rel) <= 0.08).mean()),
            "kendall_tau": float(kendalltau(pred, meas).statistic) if len(rows) > 1 else float("nan")}


def scatter_plot(rows: Sequence[dict], title: str, path: Path) -> None:
    """Predicted vs measured ratio to the dense model with the +-5% band, random and plan-like variants apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = np.array([r["predicted_ratio"] for r in rows])
    measured = np.array([r["measured_ratio"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    low, high = 0.9 * min(predicted.min(), measured.min()), 1.1 * max(predicted.max(), measured.max())
    line = np.linspace(low, high, 10)
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.95, line * 1.05, color="tab:green", alpha=0.2, label="+-5%")
    labels = {"random": "random variants", "depth": "random, branches removed", "plan": "planner's choices"}
    for kind, color in (("random", "tab:blue"), ("depth", "tab:purple"), ("plan", "tab:orange")):
        picked = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if picked:
            ax.scatter(measured[picked], predicted[picked], s=18, color=color, zorder=3, label=labels[kind])
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="measured latency / dense (paired)",
           ylabel="predicted latency / dense",
           title=title)
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
