"""Issues #4 and #26: does the performance model predict measured latency, as a ratio to the dense model?

For each backend (ort-cpu, torch-cpu) and model (torchvision resnet18, resnet50,
mobilenet_v2 at 224, cifar resnet56 at 32): profile if the database lacks it, fit, then
``validate``: N random physically pruned variants (widths 30-100% per group, half on the
alignment grid, half arbitrary), each measured as its paired ratio to the dense model timed in
the same rounds (until every ratio is known to +-1.5%, 95% interval, or a cap) and compared
with the predicted ratio (predicted variant / predicted dense). The dense model's absolute
prediction is reported apart. ``--held-out cifar:resnet32``: a model that is never profiled,
predicted from the other models' rows at the same input shape.
Goals: ratio MAPE <= 3% (held-out resnet32: <= 4%), every variant within +-8%, Kendall tau
>= 0.95 (held-out: >= 0.9); held-out layer pairs >= 95% within +-10%. The measurement noise
(round spread) and the widest ratio interval are recorded beside every error.
Run: ``python -m benchmarks.perfmodel_accuracy [--db PATH] [--variants 20] [--backends ...] [--models ...]
[--held-out SPEC] [--quick] [--noise spells]``. Run it alone (``--noise spells`` makes the host noisy on
purpose, the same way every run: see ``benchmarks/host_noise.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import DEFAULT_DB, RESULTS, markdown_table, profile_into, write_result
from benchmarks.host_noise import NoiseSpec, add_noise_option, noise_spec, noisy_host
from latprune import pipeline
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.perfmodel.validate import validate_model

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "cifar:resnet56"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--backends", default="ort-cpu,torch-cpu")
    parser.add_argument("--models", default=",".join(MODELS), help="models profiled (if needed) and validated")
    parser.add_argument("--held-out", default="", help="models validated without ever being profiled")
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--name", default="perfmodel_accuracy", help="result file name")
    parser.add_argument("--quick", action="store_true", help="cifar resnet56 on ort-cpu, 6 variants")
    add_noise_option(parser)
    args = parser.parse_args(argv)
    noise = noise_spec(args.noise)
    with noisy_host(noise):
        _run(args, noise)


def _run(args: argparse.Namespace, noise: NoiseSpec | None) -> None:
    backends = ["ort-cpu"] if args.quick else [b for b in args.backends.split(",") if b]
    models = ["cifar:resnet56"] if args.quick else [m for m in args.models.split(",") if m]
    held_out = [m for m in args.held_out.split(",") if m]
    variants = 6 if args.quick else args.variants
    name = args.name + ("_quick" if args.quick else "")
    results, layer_rows, rows = [], [], []
    for backend in backends:
        summary = None
        for spec in models + held_out:
            analysis = analyse(load_model(spec))
            if spec not in held_out:  # a held-out model is never profiled: predicted from other models' rows
                profiled = profile_into(analysis, backend, args.db)
            perf, summary = pipeline.fit(args.db, backend)
            result = validate_model(analysis, backend, perf, summary.alignment_step, variants=variants,
                                    out_dir=RESULTS / name)
            result["held_out"] = spec in held_out
            if spec not in held_out:  # how this run profiled it (nothing timed when the database had it)
                result["profile"] = {k: getattr(profiled, k) for k in (
                    "variants_timed", "variants_already_done", "visits_retimed", "visits_kept_loaded", "wall_s")}
            results.append(result)
            dense = result["dense"]
            rows.append([spec + (" (held out)" if spec in held_out else ""), backend, variants,
                         f"{100 * result['mape']:.2f}%", f"{result['max_abs_pct_error']:.1f}%",
                         f"{100 * result['within_5pct']:.0f}%", f"{100 * result['within_8pct']:.0f}%",
                         f"{result['kendall_tau']:.3f}", f"{100 * dense['error']:+.1f}%",
                         f"{result['rounds']}", f"+-{100 * result['widest_interval']:.1f}%",
                         f"{100 * result['noise']:.1f}%", f"{100 * result['noise_p10_p90']:.1f}%"])
            write_result(name, {"variants": variants, "results": results, "host_noise": noise and noise.to_json()},
                         _summary(name, rows, layer_rows, noise))
        for kind, chosen in summary.chosen.items():
            stats = summary.selection[kind][chosen]
            layer_rows.append([backend, kind, chosen, stats["n"], f"{100 * stats['mape']:.1f}%",
                               f"{100 * stats['within_10pct']:.0f}%", f"{100 * stats['p95']:.1f}%"])
            results.append({"backend": backend, "layer_kind": kind, "estimator": chosen, **stats,
                            "all_estimators": summary.selection[kind]})
    write_result(name, {"variants": variants, "results": results, "host_noise": noise and noise.to_json()},
                 _summary(name, rows, layer_rows, noise))


def _summary(name: str, rows: list, layer_rows: list, noise: NoiseSpec | None) -> str:
    table = markdown_table(["model", "backend", "variants", "ratio MAPE", "max ratio error", "within +-5%",
                            "within +-8%", "Kendall tau (ratios)", "dense: predicted / measured - 1",
                            "paired rounds", "widest 95% interval", "noise (round spread)", "noise (p10-p90)"], rows)
    layers = markdown_table(["backend", "layer kind", "estimator", "held-out pairs", "MAPE", "within +-10%",
                             "p95 error"], layer_rows)
    return ("## Whole network (random pruned variants, paired ratio to the dense model)\n\n" + table
            + "\n\nGoals: ratio MAPE <= 3% (held-out model <= 4%), all within +-8%, tau >= 0.95 (held out: "
            + ">= 0.9).\n\n## Layers (held-out (cin, cout) pairs of the fit)\n\n" + layers
            + "\n\nGoal: >= 95% within +-10%. Scatter plots: `" + name + "/*.png`."
            + (f"\n\nThis run: {noise.describe()}." if noise else ""))


if __name__ == "__main__":
    main()
