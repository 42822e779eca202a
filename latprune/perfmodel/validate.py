"""Check the performance model against measurement on random pruned variants."""

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
from latprune.profiler.api import measure_models
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


def validate_model(model: LoadedModel | ModelAnalysis, backend: str, perf: NetworkLatencyModel, step: int,
                   variants: int = 20, rounds: int = 5, runs: int = 10, seed: int = 0, threads: int | None = None,
                   out_dir: str | Path | None = None, plan_like: Sequence[tuple[float, dict[str, int]]] = ()) -> dict:
    """Predict and measure ``variants`` random pruned variants, and the ``plan_like`` ones (a budget
    fraction and the widths the planner chose at it), interleaved with the dense model.

    Errors are reported for each kind apart: random variants show how the model does where it
    was trained, plan-like ones how it does where plans live (narrow layers at the width edge).
    """
    analysis = as_analysis(model)
    loaded, key, groups = analysis.loaded, analysis.key, list(analysis.groups)
    x = loaded.example_input()
    rng = random.Random(seed)
    models, rows = [loaded.model], []
    chosen = [("random", None, random_widths(groups, rng, on_grid=i % 2 == 0, step=step)) for i in range(variants)]
    chosen += [("plan", fraction, widths) for fraction, widths in plan_like]
    for i, (kind, fraction, widths) in enumerate(chosen):
        kept = {g.id: g.leading_channels(widths[g.id]) for g in groups if widths[g.id] < g.width}
        models.append(prune_channels(loaded.model, x, groups, kept))
        rows.append({"variant": i, "kind": kind, "budget_fraction": fraction,
                     "on_grid": i % 2 == 0 if kind == "random" else None, "widths": widths})
    batch = loaded.input_shape[0]
    predicted = [perf.predict(key, list(layer_signatures(m, analysis.layers, batch, backend).values())) for m in models]
    measured, device = measure_models(models, loaded.input_shape, backend, rounds=rounds, runs=runs, threads=threads,
                                      seed=seed)
    dense_pred, dense_meas = predicted[0], measured[0].median_ms
    for row, p, mm in zip(rows, predicted[1:], measured[1:]):
        row.update(predicted_ms=float(p), measured_ms=mm.median_ms, error=p / mm.median_ms - 1,
                   speedup_error=(dense_pred / p) / (dense_meas / mm.median_ms) - 1, spread=mm.spread)
    random_rows = [r for r in rows if r["kind"] == "random"]
    result = {
        "model": key, "backend": backend, "device": device.get("fingerprint"), "variants": variants,
        "dense_predicted_ms": dense_pred, "dense_measured_ms": dense_meas,
        **_errors(random_rows),
        "plan_like": _errors([r for r in rows if r["kind"] == "plan"]) if plan_like else None,
        "noise": float(np.median([m.spread for m in measured])),
        "noise_p10_p90": float(np.median([(m.p90_ms - m.p10_ms) / m.median_ms for m in measured])),
        "per_variant": rows,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = key.replace(":", "_").replace("@", "_")
        with atomic_path(out / f"validate_{stem}_{backend}.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        scatter_plot(rows, f"{key} on {backend}: MAPE {100 * result['mape']:.1f}% random"
                     + (f", {100 * result['plan_like']['mape']:.1f}% plan-like" if plan_like else ""),
                     out / f"validate_{stem}_{backend}.png")
        result["files"] = [str(out / f"validate_{stem}_{backend}.json"), str(out / f"validate_{stem}_{backend}.png")]
    return result


def _errors(rows: Sequence[dict]) -> dict:
    """Whole-network and speedup errors of measured variants (empty rows: none)."""
    if not rows:
        return {"n": 0}
    rel = np.array([r["error"] for r in rows])
    speedup_rel = np.array([r["speedup_error"] for r in rows])
    pred, meas = [r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]
    return {"n": len(rows), "mape": float(np.abs(rel).mean()), "mean_error": float(rel.mean()),
            "max_abs_pct_error": float(100 * np.abs(rel).max()), "within_8pct": float((np.abs(rel) <= 0.08).mean()),
            "speedup_mape": float(np.abs(speedup_rel).mean()),
            "speedup_max_abs_pct_error": float(100 * np.abs(speedup_rel).max()),
            "kendall_tau": float(kendalltau(pred, meas).statistic) if len(rows) > 1 else float("nan")}


def scatter_plot(rows: Sequence[dict], title: str, path: Path) -> None:
    """Predicted vs measured latency with the +-5% band, random and plan-like variants apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = np.array([r["predicted_ms"] for r in rows])
    measured = np.array([r["measured_ms"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    low, high = 0.9 * min(predicted.min(), measured.min()), 1.1 * max(predicted.max(), measured.max())
    line = np.linspace(low, high, 10)
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.95, line * 1.05, color="tab:green", alpha=0.2, label="+-5%")
    for kind, color in (("random", "tab:blue"), ("plan", "tab:orange")):
        picked = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if picked:
            ax.scatter(measured[picked], predicted[picked], s=18, color=color, zorder=3,
                       label="random variants" if kind == "random" else "planner's choices")
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=title)
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
