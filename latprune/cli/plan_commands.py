"""Commands that plan and build pruned networks: plan, prune, recover."""

from __future__ import annotations

import argparse

from latprune.cli.options import (backend_options, budget_options, calib_options, db_option, finite_float,
                                  json_option, loop_options, model_options, objective_options, output_options,
                                  planning_options, positive_int, recovery_options)
from latprune.cli.registry import command
from latprune.cli.requests import (budget, dense_model, importance_images, plan_settings, recovery_request,
                                   verification)
from latprune.cli.text import search_line, table, verification_lines
from latprune.defaults import PLANNERS
from latprune.errors import LatpruneError
from latprune.outputs import check_output


def _format_plan(result: dict) -> str:
    rows = [(g["id"], g["full_width"], g["width"], f"{100 * g['width'] / g['full_width']:.0f}%") for g in result["groups"]]
    solver = result["solver"]
    lines = [table(["group", "full", "kept", "kept %"], rows)]
    if result.get("predicted_ms") is not None:
        lines.append(f"predicted {result['predicted_ms']:.3f} ms (budget {result['budget_ms']:.3f} ms, dense "
                     f"{result['dense_predicted_ms']:.3f} ms, speedup {result['predicted_speedup']:.2f}x) on "
                     f"{result['backend']}")
    lines.append(f"{result['method']}: importance kept {100 * result['importance_kept']:.1f}% ({result['importance']}), "
                 f"MACs {result['macs'] / 1e6:.1f} M of {result['dense_macs'] / 1e6:.1f} M")
    if result.get("removed"):
        lines.append(f"removed residual branches ({len(result['removed'])}): {', '.join(result['removed'])}")
    if "method" in solver:
        lines.append(f"solver: {solver['method']}, {solver.get('bins')} bins, {solver.get('live_states', 0)} states, "
                     f"DP {1000 * solver.get('dp_s', 0):.1f} ms")
    if result.get("search"):
        lines.append(search_line(result["search"]))
    lines += verification_lines(result.get("verification") or {})
    if result.get("out"):
        lines.append(f"wrote {result['out']}")
    return "\n".join(lines)


def _plan_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    backend_options(parser)
    db_option(parser)
    budget_options(parser, required=True)
    parser.add_argument("--device", metavar="FINGERPRINT",
                        help="plan from another device's profile in the database (`latprune devices`); not verified")
    parser.add_argument("--max-macs", type=finite_float, metavar="N", help="also cap multiply-accumulates")
    parser.add_argument("--method", choices=PLANNERS, default="latency",
                        help="latency DP (default) or a baseline: FLOPs DP, uniform ratio, Torch-Pruning global "
                             "magnitude")
    planning_options(parser)
    objective_options(parser)
    parser.add_argument("--bins", type=positive_int, default=2000, help="cost bins of the DP (default 2000)")
    output_options(parser, "plan.json", required=False, help="write the plan here")
    json_option(parser)


@command("plan", "choose widths for a latency budget", _plan_options, _format_plan)
def cmd_plan(args: argparse.Namespace) -> dict:
    """Choose per-group widths that keep the most importance within a latency budget.

    On this machine's profile the plan is verified by a closed loop: each plan is measured on the
    device next to the dense model, its layers are added to the profile, the performance model is
    refitted and corrected, and the budget is re-planned until the measured latency lies within
    [(1 - tol) x budget, budget] (--no-verify trusts the prediction instead).
    """
    from latprune import pipeline

    request, settings, verify = budget(args), plan_settings(args, args.method), verification(args)
    if args.out:
        check_output(args.out, [args.weights, args.db], args.force)
    loaded = dense_model(args)
    analysis = pipeline.analyse(loaded)
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads, device=args.device)
    plan = pipeline.plan(analysis, request, perf, fitted, args.backend, settings,
                         calib=importance_images(args, loaded), verify=verify)
    if args.out:
        plan.save(args.out)
    return {**plan.to_json(), "out": args.out}


def _verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, metavar="FILE",
                        help="a plan made from this device's profile elsewhere (`latprune plan --device`)")
    model_options(parser)
    parser.add_argument("--threads", type=positive_int, help="intra-op threads (default: physical cores)")
    db_option(parser)
    loop_options(parser)
    planning_options(parser)
    objective_options(parser)
    output_options(parser, "verified.json", help="write the verified plan here")
    json_option(parser)


@command("verify", "close the loop on a plan made elsewhere, on its device", _verify_options, _format_plan)
def cmd_verify(args: argparse.Namespace) -> dict:
    """Run on the device a plan was made for (from its profile, on another machine): the closed loop measures
    the plan here next to the dense model and, until its measured latency lies in the band, re-plans the same
    budget with the same method and objective on this device's profile (which the measurements extend)."""
    from latprune import pipeline
    from latprune.budget import Budget, BudgetRequest
    from latprune.planner.plan import Plan

    check_output(args.out, [args.weights, args.db, args.plan], args.force)
    made = Plan.load(args.plan)
    loaded = dense_model(args)
    if made.model != loaded.spec or list(made.input_shape) != list(loaded.input_shape):
        raise LatpruneError(f"{args.plan} is a plan for {made.model} at {made.input_shape}, not {loaded.spec} at "
                            f"{list(loaded.input_shape)}")
    if made.cost != "latency" or not made.budget:
        raise LatpruneError(f"{args.plan} has no latency budget to verify (cost {made.cost!r})")
    here = pipeline.this_device(made.backend, args.threads)
    if made.device != here:
        raise LatpruneError(f"{args.plan} was planned for device {made.device}; this machine is {here} on "
                            f"{made.backend}: run verify on that device (`latprune devices` lists them)")
    args.importance = args.importance or made.importance
    args.objective = args.objective or made.objective
    method = next(m for m in PLANNERS if made.method.startswith(m.split("-")[0]))
    request, settings = BudgetRequest.from_budget(Budget.from_json(made.budget)), plan_settings(args, method)
    analysis = pipeline.analyse(loaded)
    made.check_groups(analysis.groups, args.plan)
    perf, fitted = pipeline.fit(args.db, made.backend, args.threads)
    plan = pipeline.plan(analysis, request, perf, fitted, made.backend, settings,
                         calib=importance_images(args, loaded), verify=verification(args), start=made)
    plan.save(args.out)
    return {**plan.to_json(), "out": args.out}


def _format_recovered(result: dict) -> str:
    if "method" in result:
        lines = [f"pruned {result['model']}: {result['params']:,} parameters of {result['dense_params']:,} "
                 f"({100 * result['params'] / result['dense_params']:.1f}%), {len(result['widths'])} groups; "
                 f"wrote {result['out']}"]
    else:
        lines = [f"wrote {result['out']}"]
    report = result.get("recovery")
    if report:
        steps = ", ".join(f"{s['step']} {s['seconds']:.1f} s" for s in report["steps"])
        lines.append(f"recovery {report['recipe']} on {report['calibration_images']} calibration images: {steps}; "
                     f"layer reconstruction error {report['error_before']:.3f} -> {report['error_after']:.3f}")
        lines += [_refit_line(s["output_layer"]) for s in report["steps"] if s.get("output_layer")]
    return "\n".join(lines)


def _refit_line(refit: dict) -> str:
    if refit["applied"]:
        return (f"output layer {refit['layer']} refitted to the dense outputs: error on held-out calibration images "
                f"{refit['error_before']:.3f} -> {refit['error_after']:.3f}")
    layer = f"output layer {refit['layer']}" if refit["layer"] else "output layer"
    return f"{layer} left as it was: {refit['reason']}"


def _prune_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    parser.add_argument("--plan", metavar="FILE", help="a plan written by `latprune plan`")
    parser.add_argument("--uniform", type=finite_float, metavar="R", help="keep the fraction R of every group instead")
    planning_options(parser)
    recovery_options(parser)
    output_options(parser, "pruned.pt")
    json_option(parser)


@command("prune", "build a pruned model from a plan", _prune_options, _format_recovered)
def cmd_prune(args: argparse.Namespace) -> dict:
    """Build the pruned network of a plan (or a uniform keep ratio) and save it."""
    from latprune import pipeline
    from latprune.planner.plan import Plan
    from latprune.pruned_file import save_pruned
    from latprune.surgery import count_parameters

    if (args.plan is None) == (args.uniform is None):
        raise LatpruneError("give exactly one of --plan FILE and --uniform RATIO")
    recovery = recovery_request(args)
    check_output(args.out, [args.weights, args.plan], args.force)
    plan = Plan.load(args.plan) if args.plan else None
    loaded = dense_model(args)
    analysis = pipeline.analyse(loaded)
    if plan is None:
        plan = pipeline.uniform(analysis, args.uniform, plan_settings(args, "uniform"),
                                calib=importance_images(args, loaded))
    pruned = pipeline.prune(analysis, plan)
    pruned, report = pipeline.repair(analysis, pruned, recovery, progress=not args.json)
    save_pruned(pruned, args.out)
    return {"model": loaded.spec, "out": args.out, "widths": pruned.widths, "params": count_parameters(pruned.model),
            "dense_params": count_parameters(loaded.model), "method": plan.method,
            "recovery": report.to_dict() if report else None}


def _recover_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pruned", required=True, metavar="FILE", help="a pruned model saved by latprune")
    model_options(parser)
    recovery_options(parser, required=True)
    calib_options(parser)
    output_options(parser, "recovered.pt")
    json_option(parser)


@command("recover", "repair a pruned model from unlabeled images", _recover_options, _format_recovered)
def cmd_recover(args: argparse.Namespace) -> dict:
    """Repair a pruned (or sparsified) model toward its dense original from unlabeled images."""
    from latprune import pipeline
    from latprune.pruned_file import read_pruned, save_pruned

    recovery = recovery_request(args)
    check_output(args.out, [args.pruned, args.weights], args.force)
    saved = read_pruned(args.pruned)
    analysis = pipeline.analyse(pipeline.load_dense_for(saved, args.model, args.weights, args.input_shape))
    recovered, report = pipeline.repair(analysis, saved.build(analysis), recovery, progress=not args.json)
    save_pruned(recovered, args.out)
    return {"model": analysis.spec, "out": args.out, "recovery": report.to_dict() if report else None}
