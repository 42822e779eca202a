"""``latprune run``: the whole job, on a model or on the built-in demonstration."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from latprune.cli.options import (backend_options, budget_options, calib_options, db_option, depth_option,
                                  importance_option, json_option, model_options, objective_options, output_options,
                                  positive_int, recovery_time_option)
from latprune.cli.registry import command
from latprune.cli.requests import budget, margin, preprocessing, search_settings, verification
from latprune.cli.text import search_line, table
from latprune.defaults import RECOVERY_CALIB_SIZE
from latprune.errors import LatpruneError
from latprune.outputs import check_output_folder

if TYPE_CHECKING:
    from latprune.run_summary import RunSummary


def _format_run(summary: RunSummary) -> str:
    rows = []
    for run in summary.runs:
        latency, accuracy = run.latency, run.accuracy
        top1 = f"{100 * accuracy.dense:.1f} -> {100 * accuracy.recovered:.1f}%" if accuracy else "-"
        predicted = latency.pruned.predicted_ms
        rows.append((run.name, f"{latency.budget_ms:.3f}", "-" if predicted is None else f"{predicted:.3f}",
                     f"{latency.pruned.measured_ms:.3f}", f"{latency.dense.measured_ms:.3f}",
                     f"{latency.measured_speedup:.2f}x", latency.verdict_text(), top1,
                     f"{sum(run.stages_s.values()):.0f}"))
    lines = [table(["run", "budget ms", "predicted ms", "measured ms", "dense ms", "speedup", "meets budget",
                    "top-1 dense -> pruned", "seconds"], rows)]
    for run in summary.runs:
        lines.append(f"{run.name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.stages_s.items()))
        if run.plan.search:
            lines.append(f"{run.name}: {search_line(run.plan.search.to_json())}")
    lines.append(f"wrote {summary.files['report']} and {summary.files['summary']}")
    return "\n".join(lines)


def _input_size(text: str) -> int | str:
    """An argparse type: a number of pixels, or ``auto``."""
    from latprune.job import AUTO

    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a number of pixels or auto, got {text!r}") from None


def _run_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, required=False)
    budget_options(parser, required=False)
    backend_options(parser, default="ort-cpu", warmup=False)
    calib_options(parser)
    parser.add_argument("--eval", metavar="DIR", help="labelled images (<class>/<image> folders): accuracy before and after")
    parser.add_argument("--input-size", type=_input_size, metavar="PIXELS|auto",
                        help="plan the widths at this smaller input size (shorter side; images resized to keep the "
                             "field of view); every plan and the result are timed against the model at its own size; "
                             "where the network at that size alone meets --speedup, nothing is pruned and it is the "
                             "result. auto: time the dense network at every multiple of 8 down to 0.7 of its own size "
                             "and take the largest whose latency alone meets the budget or comes within 5%% of it "
                             "(else the smallest), widths giving the rest")
    parser.add_argument("--no-size-adaptation", action="store_true",
                        help="with --input-size and --calib: plan from the network at that size as it is, instead of "
                             "first teaching it its own outputs at its own size on the calibration photos (minutes)")
    parser.add_argument("--recovery", metavar="METHOD",
                        help="recovery recipe (default two-stage with --calib, none without); see `latprune prune`")
    recovery_time_option(parser)
    importance_option(parser)
    objective_options(parser)
    depth_option(parser)
    db_option(parser)
    output_options(parser, "DIR", required=False, default="latprune-run",
                   help="output folder: report.html, summary.json, plan, pruned model, ONNX (default latprune-run)")
    json_option(parser)


@command("run", "the whole job: profile -> plan -> prune -> recover -> measure -> report", _run_options, _format_run,
         raw_description=True)
def cmd_run(args: argparse.Namespace) -> RunSummary:
    """Profile, fit, plan, prune, recover, export, measure and evaluate; writes report.html and summary.json.

    Without --model, runs the built-in demonstration: latency planning for a torchvision
    ResNet-18, and accuracy on scikit-learn's handwritten digits with a small CNN trained here.
    """
    from latprune.job import JobConfig, default_jobs, run_jobs
    from latprune.models import parse_input_shape
    progress = not args.json
    if args.no_size_adaptation and args.input_size is None:
        raise LatpruneError("--no-size-adaptation applies to a run at a smaller --input-size only")
    if args.model is None:
        named = ("budget_ms", "speedup", "weights", "input_shape", "calib", "eval", "recovery", "objective", "mean", "std",
                 "resize", "input_size")
        given = [f"--{k.replace('_', '-')}" for k in named if getattr(args, k) is not None]
        if given:
            raise LatpruneError(f"{', '.join(given)} need --model SPEC (without --model, run runs its built-in demo)")
        check_output_folder(args.out, args.force)
        configs = default_jobs(args.out, backend=args.backend, db=args.db, progress=progress,
                               verify=verification(args), margin=margin(args))
    else:
        configs = [JobConfig(
            model=args.model, budget=budget(args), backend=args.backend, weights=args.weights,
            input_shape=parse_input_shape(args.input_shape) if args.input_shape else None, calib=args.calib,
            eval=args.eval, recovery=args.recovery, importance=args.importance, objective=args.objective,
            search=search_settings(args),
            calib_size=args.calib_size or RECOVERY_CALIB_SIZE, recovery_seconds=args.recovery_seconds or None,
            db=args.db, threads=args.threads,
            verify=verification(args), depth=not args.no_depth, preprocessing=preprocessing(args),
            input_size=args.input_size, adapt_size=not args.no_size_adaptation)]
        configs[0].check(progress)
        check_output_folder(args.out, args.force)
    return run_jobs(configs, args.out, progress=progress, checked=args.model is not None)
