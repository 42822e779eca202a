"""Shared helpers of the benchmarks: environment facts and result files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def environment() -> dict:
    import onnxruntime
    import torch

    from latprune.profiler.api import cpu_identity, cpu_model, physical_cores

    return {
        "cpu": cpu_model(),
        **cpu_identity(),  # family/model numbers and vector extensions: "AMD EPYC" alone names several machines
        "cores": physical_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, data: dict, summary_markdown: str) -> Path:
    """Write ``results/<name>.json`` (data + environment) and ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{summary_markdown}\n")
    print(summary_markdown)
    return RESULTS / f"{name}.json"


DEFAULT_DB = Path(__file__).resolve().parent / ".cache" / "profiles.sqlite"


def perf_model_for(model, backend: str, db: Path):
    """Profile a model (loaded or analysed) on ``backend`` into ``db`` unless already there, then the fitted
    perf model. Returns (perf model, fit summary)."""
    from latprune import pipeline
    from latprune.analysis import as_analysis

    db.parent.mkdir(parents=True, exist_ok=True)
    pipeline.profile(as_analysis(model), backend, db=db)
    return pipeline.fit(db, backend)


def plan_all(analysis, backend: str, db: Path, fractions, planners: dict) -> tuple[list[dict], list]:
    """Plans of every named planner at every budget (fractions of the dense predicted latency; infeasible
    ones recorded with the reason) and their pruned models, in the order of the feasible cases."""
    from latprune.budget import Budget
    from latprune.errors import LatpruneError
    from latprune.planner.api import prepare
    from latprune.planner.widths import WidthPolicy
    from latprune.pruned_file import prune_loaded

    loaded = analysis.loaded
    perf, summary = perf_model_for(analysis, backend, db)
    inputs = prepare(analysis, "l2", policy=WidthPolicy(step=summary.alignment_step), perf=perf, backend=backend)
    dense_ms = inputs.dense_ms()
    cases, pruned = [], []
    for fraction in fractions:
        for method, planner in planners.items():
            case = {"model": loaded.spec, "fraction": fraction, "budget_ms": fraction * dense_ms, "method": method,
                    "dense_predicted_ms": dense_ms}
            try:
                plan = planner(inputs, Budget(fraction * dense_ms, "given"))
            except LatpruneError as exc:
                case["infeasible"] = str(exc)
                cases.append(case)
                continue
            case.update(predicted_ms=plan.predicted_ms, importance_kept=plan.importance_kept,
                        macs_fraction=plan.macs / plan.dense_macs)
            cases.append(case)
            pruned.append(prune_loaded(analysis, plan.kept()))
    return cases, pruned


def measure_all(loaded, backend: str, cases: list[dict], models: list, rounds: int) -> None:
    """Measure the feasible cases' models interleaved with the dense model; adds the numbers to the cases."""
    from latprune.profiler.api import measure_models

    measurements, _ = measure_models([loaded.model] + models, loaded.input_shape, backend, rounds=rounds, runs=10)
    dense, planned = measurements[0], iter(measurements[1:])
    for case in cases:
        case["dense_measured_ms"] = dense.median_ms
        if "infeasible" not in case:
            m = next(planned)
            case.update(measured_ms=m.median_ms, spread=m.spread, measured_over_budget=m.median_ms / case["budget_ms"],
                        measured_speedup=dense.median_ms / m.median_ms)
