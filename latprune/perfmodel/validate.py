"""Check the performance model against measurement on random pruned variants."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from latprune.analysis import ModelAnalysis, as_analysis
from latprune.groups import ChannelGroup
from latprune.models import LoadedModel
from latprune.network import layer_signatures
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
                   out_dir: str | Path | None = None) -> dict:
    """Predict and measure ``variants`` random pruned variants interleaved with the dense model."""
    analysis = as_analysis(model)
    loaded, key, groups = analysis.loaded, analysis.key, list(analysis.groups)
    x = loaded.example_input()
    rng = random.Random(seed)
    models, rows = [loaded.model], []
    for i in range(variants):
        widths = random_widths(groups, rng, on_grid=i % 2 == 0, step=step)
        kept = {g.id: g.leading_channels(widths[g.id]) for g in groups if widths[g.id] < g.width}
        models.append(prune_channels(loaded.model, x, groups, kept))
        rows.append({"variant": i, "on_grid": i % 2 == 0, "widths": widths})
    batch = loaded.input_shape[0]
    predicted = [perf.predict(key, list(layer_signatures(m, analysis.layers, batch, backend).values())) for m in models]
    measured, device = measure_models(models, loaded.input_shape, backend, rounds=rounds, runs=runs, threads=threads,
                                      seed=seed)
    pred = np.array(predicted[1:])
    meas = np.array([m.median_ms for m in measured[1:]])
    dense_pred, dense_meas = predicted[0], measured[0].median_ms
    rel = pred / meas - 1
    speedup_rel = (dense_pred / pred) / (dense_meas / meas) - 1
    for row, p, m, r, s, mm in zip(rows, pred, meas, rel, speedup_rel, measured[1:]):
        row.update(predicted_ms=float(p), measured_ms=float(m), error=float(r), speedup_error=float(s),
                   spread=mm.spread)
    result = {
        "model": key, "backend": backend, "device": device.get("fingerprint"), "variants": variants,
        "dense_predicted_ms": dense_pred, "dense_measured_ms": dense_meas,
        "mape": float(np.abs(rel).mean()),
        "max_abs_pct_error": float(100 * np.abs(rel).max()),
        "within_8pct": float((np.abs(rel) <= 0.08).mean()),
        "speedup_mape": float(np.abs(speedup_rel).mean()),
        "speedup_max_abs_pct_error": float(100 * np.abs(speedup_rel).max()),
        "kendall_tau": float(kendalltau(pred, meas).statistic),
        "noise": float(np.median([m.spread for m in measured])),
        "noise_p10_p90": float(np.median([(m.p90_ms - m.p10_ms) / m.median_ms for m in measured])),
        "per_variant": rows,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = key.replace(":", "_").replace("@", "_")
        (out / f"validate_{stem}_{backend}.json").write_text(json.dumps(result, indent=2))
        scatter_plot(pred, meas, f"{key} on {backend}: MAPE {100 * result['mape']:.1f}%",
                     out / f"validate_{stem}_{backend}.png")
        result["files"] = [str(out / f"validate_{stem}_{backend}.json"), str(out / f"validate_{stem}_{backend}.png")]
    return result


def scatter_plot(predicted: np.ndarray, measured: np.ndarray, title: str, path: Path) -> None:
    """Predicted vs measured latency with the +-5% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    low, high = 0.9 * min(predicted.min(), measured.min()), 1.1 * max(predicted.max(), measured.max())
    line = np.linspace(low, high, 10)
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.95, line * 1.05, color="tab:green", alpha=0.2, label="+-5%")
    ax.scatter(measured, predicted, s=18, color="tab:blue", zorder=3)
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=title)
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
