"""Run the benchmark suites of issues #3-#8 and write a markdown summary linking their results.

Each suite writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (``<name>_quick`` with
``--quick``, so quick runs never overwrite the full results). Timing suites need a quiet
machine: run nothing else beside them.
Run: ``python -m benchmarks.run [--quick] [--only profiler_speed,pareto] [--db PATH]``.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from pathlib import Path

from benchmarks.common import DEFAULT_DB, RESULTS

# (module, issue, what it measures, takes --db)
SUITES = [
    ("profiler_speed", "#3", "profiling time and noise, resnet50 on ort-cpu", False),
    ("perfmodel_accuracy", "#4, #26", "predicted vs measured latency of random pruned variants (ratio space since "
     "#26); layer errors", True),
    ("planner_solver", "#5", "DP solve time at 2,000 and 10,000 bins", True),
    ("planner_budget", "#5, #14, #26", "closed-loop plans: measured latency vs their budgets, checked as paired "
     "ratios", True),
    ("paired_measure", "#26", "measure --pruned: repeatability and agreement with the closed loop", True),
    ("recovery", "#6", "post-training recovery accuracy on CIFAR-10", False),
    ("finetune", "#7", "vanilla vs over-parameterised fine-tuning with SP-KD", False),
    ("pareto", "#8, #15, #25", "accuracy vs measured latency against the baselines, depth+width vs width-only",
     True),
    ("depth_reach", "#25", "the fastest plan with and without removing residual branches, paired ratios", False),
    ("depth_finetune", "#25", "latprune's 0.5x depth+width plan after two-stage and a short SP-KD fine-tune", False),
    ("held_out", "#25", "`latprune run --speedup 1.5` on a CIFAR ResNet trained here, whose checkpoint no default was "
     "tuned on", False),
    ("plan_proxy", "#25", "how well the planner's plan losses rank plans by their top-1 after two-stage", False),
    ("output_refit", "#25", "two-stage with and without its closing refit of the output layer, on plans pareto chose",
     False),
    ("imagenet", "#29", "EfficientNet-Lite0 on ImageNet photos at equal measured latency against the baselines",
     False),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every suite in its quick form (minutes, not hours)")
    parser.add_argument("--only", help="comma-separated suite names (default: all)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database shared by the suites")
    args = parser.parse_args(argv)
    chosen = [s for s in SUITES if not args.only or s[0] in args.only.split(",")]
    unknown = set(args.only.split(",")) - {s[0] for s in SUITES} if args.only else set()
    if unknown:
        parser.error(f"unknown suites: {', '.join(sorted(unknown))}; choose from {', '.join(s[0] for s in SUITES)}")
    status = {}
    for module, issue, _, takes_db in chosen:
        began = time.perf_counter()
        suite_args = (["--quick"] if args.quick else []) + (["--db", str(args.db)] if takes_db else [])
        print(f"== {module} {' '.join(suite_args)}", flush=True)
        try:
            importlib.import_module(f"benchmarks.{module}").main(suite_args)
            status[module] = f"ran in {time.perf_counter() - began:.0f} s"
        except Exception:  # one failing suite must not lose the others' results
            traceback.print_exc()
            status[module] = "FAILED (see the log)"
    write_summary(status, args.quick)


def write_summary(status: dict[str, str], quick: bool) -> Path:
    suffix = "_quick" if quick else ""
    lines = ["# Benchmark results", "", "| suite | issue | measures | result | this run |", "|---|---|---|---|---|"]
    for module, issue, what, _ in SUITES:
        stems = sorted(p.stem for p in RESULTS.glob(f"{module}*.md") if p.stem.endswith("_quick") == quick)
        links = ", ".join(f"[{s}]({s}.md)" for s in stems) or "not run yet"
        lines.append(f"| {module} | {issue} | {what} | {links} | {status.get(module, '-')} |")
    path = RESULTS / f"SUMMARY{suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
