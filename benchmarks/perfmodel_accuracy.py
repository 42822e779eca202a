"""Issue #4: does the performance model predict measured latency?

For each backend (ort-cpu, torch-cpu) and model (torchvision resnet18, resnet50,
mobilenet_v2 at 224, cifar resnet56 at 32): profile if the database lacks it, fit, then
``validate``: N random physically pruned variants (widths 30-100% per group, half on the
alignment grid, half arbitrary), predicted and measured interleaved with the dense model
in one process. Per-layer accuracy is the fit's own held-out (cin, cout) pairs.
Goals: whole-network MAPE <= 3%, every variant within +-8%, speedup error within 3%,
Kendall tau >= 0.95; held-out layer pairs >= 95% within +-10%. The measurement noise
(round spread) is recorded beside every error.
Run: ``python -m benchmarks.perfmodel_accuracy [--db PATH] [--variants 20] [--backends ...] [--quick]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import DEFAULT_DB, RESULTS, markdown_table, perf_model_for, write_result
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.perfmodel.validate import validate_model

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "cifar:resnet56"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--backends", default="ort-cpu,torch-cpu")
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="cifar resnet56 on ort-cpu, 6 variants")
    args = parser.parse_args(argv)
    backends = ["ort-cpu"] if args.quick else [b for b in args.backends.split(",") if b]
    models = ["cifar:resnet56"] if args.quick else MODELS
    variants = 6 if args.quick else args.variants
    name = "perfmodel_accuracy" + ("_quick" if args.quick else "")
    results, layer_rows, rows = [], [], []
    for backend in backends:
        summary = None
        for spec in models:
            analysis = analyse(load_model(spec))
            perf, summary = perf_model_for(analysis, backend, args.db)
            result = validate_model(analysis, backend, perf, summary.alignment_step, variants=variants,
                                    out_dir=RESULTS / name)
            results.append(result)
            rows.append([spec, backend, variants, f"{100 * result['mape']:.2f}%",
                         f"{result['max_abs_pct_error']:.1f}%", f"{100 * result['within_8pct']:.0f}%",
                         f"{100 * result['speedup_mape']:.2f}%", f"{result['speedup_max_abs_pct_error']:.1f}%",
                         f"{result['kendall_tau']:.3f}", f"{100 * result['noise']:.1f}%",
                         f"{100 * result['noise_p10_p90']:.1f}%"])
        for kind, chosen in summary.chosen.items():
            stats = summary.selection[kind][chosen]
            layer_rows.append([backend, kind, chosen, stats["n"], f"{100 * stats['mape']:.1f}%",
                               f"{100 * stats['within_10pct']:.0f}%", f"{100 * stats['p95']:.1f}%"])
            results.append({"backend": backend, "layer_kind": kind, "estimator": chosen, **stats,
                            "all_estimators": summary.selection[kind]})
    table = markdown_table(["model", "backend", "variants", "MAPE", "max error", "within +-8%", "speedup MAPE",
                            "max speedup error", "Kendall tau", "noise (round spread)", "noise (p10-p90)"], rows)
    layers = markdown_table(["backend", "layer kind", "estimator", "held-out pairs", "MAPE", "within +-10%",
                             "p95 error"], layer_rows)
    write_result(name, {"variants": variants, "results": results},
                 "## Whole network (random pruned variants, interleaved with the dense model)\n\n" + table
                 + "\n\nGoals: MAPE <= 3%, all within +-8%, speedup error <= 3%, tau >= 0.95.\n\n"
                 + "## Layers (held-out (cin, cout) pairs of the fit)\n\n" + layers
                 + "\n\nGoal: >= 95% within +-10%. Scatter plots: `" + name + "/*.png`.")


if __name__ == "__main__":
    main()
