"""Parsed arguments -> the pipeline's request objects, built the same way for every command and for ``run``.

The stages are imported inside each builder, when a command runs, never when the parser is built.
"""

from __future__ import annotations

import argparse

from latprune.defaults import IMPORTANCE_CALIB_SIZE, UNVERIFIED_MARGIN


def loaded_model(args: argparse.Namespace):
    """The model a command reads: the pruned file when ``--pruned`` is given, else the dense one."""
    from latprune import pipeline

    return pipeline.load_pruned_or_dense(args.model, args.weights, args.input_shape, getattr(args, "pruned", None),
                                         preprocessing(args))


def dense_model(args: argparse.Namespace):
    from latprune import pipeline

    return pipeline.load(args.model, args.weights, args.input_shape, preprocessing(args))


def preprocessing(args: argparse.Namespace) -> dict | None:
    """The parts of the image preprocessing given with --mean/--std/--resize (None: none given)."""
    given = {k: getattr(args, k, None) for k in ("mean", "std", "resize")}
    return {k: v for k, v in given.items() if v is not None} or None


def margin(args: argparse.Namespace) -> float:
    """Headroom below the budget: none needed when the plan is measured, some when it is only predicted."""
    if args.margin is not None:
        return args.margin
    return UNVERIFIED_MARGIN if args.no_verify else 0.0


def budget(args: argparse.Namespace):
    from latprune.budget import BudgetRequest

    return BudgetRequest(budget_ms=args.budget_ms, speedup=args.speedup, margin=margin(args))


def plan_settings(args: argparse.Namespace, method: str = "latency"):
    from latprune.pipeline import PlanSettings

    options = {"method": method, "widths": args.widths, "step": args.step, "min_width": args.min_width,
               "bins": getattr(args, "bins", 2000), "max_macs": getattr(args, "max_macs", None),
               "hold": tuple(args.hold or ()), "depth": not args.no_depth}
    if hasattr(args, "search_seconds"):
        options["search"] = search_settings(args)
    return PlanSettings.for_request(bool(args.calib), args.importance, getattr(args, "objective", None), **options)


def search_settings(args: argparse.Namespace):
    """The calibrated search's time box and last stage, as given."""
    from latprune.pipeline import SearchSettings

    return SearchSettings(seconds=args.search_seconds, recovered=args.recovered_plans)


def importance_images(args: argparse.Namespace, loaded):
    from latprune import pipeline

    if not args.calib:
        return None
    return pipeline.calibration_images(args.calib, loaded, args.calib_size or IMPORTANCE_CALIB_SIZE)


def recovery_request(args: argparse.Namespace):
    from latprune.pipeline import RecoveryRequest
    from latprune.recovery import FinetuneSettings

    tuning = FinetuneSettings(**{k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "expansion")
                                 if getattr(args, k) is not None})
    return RecoveryRequest(recipe=args.recovery, calib=args.calib, train=args.train, calib_size=args.calib_size,
                           tuning=tuning, seconds=args.recovery_seconds or None)


def verification(args: argparse.Namespace):
    from latprune.pipeline import LoopSettings, Verification

    return Verification(enabled=not getattr(args, "no_verify", False), db=args.db, threads=args.threads,
                        loop=LoopSettings(tol=args.tol, max_rounds=args.verify_rounds), progress=not args.json)
