"""The ``latprune`` command: parses arguments, calls the Python API, prints a table or JSON.

With ``--json`` a command prints exactly one JSON object on stdout; progress bars and
logs go to stderr. A ``LatpruneError`` is printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable, Sequence

from latprune.defaults import IMPORTANCE_CALIB_SIZE, OBJECTIVES, PLANNERS, RECOVERY_CALIB_SIZE, SEARCH_SECONDS
from latprune.errors import LatpruneError
from latprune.outputs import check_output, check_output_folder

Command = Callable[[argparse.Namespace], dict]

COMMANDS: dict[str, tuple[Command, Callable[[dict], str]]] = {}


def command(name: str, formatter: Callable[[dict], str]):
    """Register ``func(args) -> result dict`` as subcommand ``name`` with a text formatter."""

    def register(func: Command) -> Command:
        COMMANDS[name] = (func, formatter)
        return func

    return register


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- argument -> request helpers


def add_model_options(parser: argparse.ArgumentParser, pruned: bool = False, required: bool = True) -> None:
    parser.add_argument("--model", required=required and not pruned, metavar="SPEC",
                        help="torchvision:<name>, cifar:resnet20|32|44|56|110 or <module>:<callable>")
    parser.add_argument("--weights", metavar="FILE", help="state dict to load into the model")
    parser.add_argument("--input-shape", metavar="NxCxHxW", help="input shape (default per family)")
    if pruned:
        parser.add_argument("--pruned", metavar="FILE", help="a pruned model saved by latprune")


def _model(args: argparse.Namespace):
    from latprune import pipeline

    return pipeline.load_pruned_or_dense(args.model, args.weights, args.input_shape, getattr(args, "pruned", None))


def _dense(args: argparse.Namespace):
    from latprune import pipeline

    return pipeline.load(args.model, args.weights, args.input_shape)


def _budget(args: argparse.Namespace, margin: float = 0.0):
    from latprune.budget import BudgetRequest

    return BudgetRequest(budget_ms=args.budget_ms, speedup=args.speedup, margin=margin)


def _margin(args: argparse.Namespace) -> float:
    """Headroom below the budget: none needed when the plan is measured, 3% when only predicted."""
    if args.margin is not None:
        return args.margin
    return 0.03 if args.no_verify else 0.0


def _plan_settings(args: argparse.Namespace, method: str = "latency"):
    from latprune.pipeline import PlanSettings, SearchSettings

    settings = PlanSettings(method=method, importance=args.importance, widths=args.widths, step=args.step,
                            min_width=args.min_width, bins=getattr(args, "bins", 2000),
                            max_macs=getattr(args, "max_macs", None), hold=tuple(args.hold or ()),
                            objective=getattr(args, "objective", None) or "importance",
                            search=SearchSettings(seconds=getattr(args, "search_seconds", SEARCH_SECONDS)),
                            depth=not getattr(args, "no_depth", False))
    settings.check_images(bool(args.calib))
    return settings


def _importance_images(args: argparse.Namespace, loaded):
    from latprune import pipeline

    if not args.calib:
        return None
    return pipeline.calibration_images(args.calib, loaded, args.calib_size or IMPORTANCE_CALIB_SIZE)


def _recovery_request(args: argparse.Namespace):
    from latprune.pipeline import RecoveryRequest
    from latprune.recovery import FinetuneSettings

    tuning = FinetuneSettings(**{k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "expansion")
                                 if getattr(args, k) is not None})
    return RecoveryRequest(recipe=args.recovery, calib=args.calib, train=args.train, calib_size=args.calib_size,
                           tuning=tuning)


# ---------------------------------------------------------------- commands


def _format_groups(result: dict) -> str:
    rows = [
        (g["id"], g["width"], g["divisor"], len(g["producers"]), len(g["consumers"]), f"{100 * g['flops_share']:.1f}%")
        for g in result["groups"]
    ]
    notes = result.get("depth_notes", {})
    rows = [(*row, "removes " + g["branch"] if g.get("branch") else "no: " + _short_note(notes.get(g["id"], "")))
            for row, g in zip(rows, result["groups"])]
    text = table(["group", "width", "divisor", "producers", "consumers", "MACs touched", "width 0"], rows)
    text += f"\n{len(result['groups'])} prunable groups, {result['total_macs'] / 1e6:.1f} M MACs in conv/linear layers"
    branches = result.get("branches", [])
    if branches:
        text += (f"\n{len(branches)} residual branches can be removed whole (each inner group at width 0, "
                 f"shortcut + constant bias kept; --no-depth to forbid):\n") + "\n".join(
            f"  {b['id']}: {len(b['layers'])} layers, groups {', '.join(b['groups'])}, shortcut {b['shortcut']}"
            for b in branches)
    crossing = [g for g in result["groups"] if g.get("crosses")]
    if crossing:
        text += "\nthrough parameter-free channel ops (rebuilt as index maps when pruned):\n" + "\n".join(
            f"  {g['id']}: {'; '.join(g['crosses'])}" for g in crossing)
    if result["excluded"]:
        text += "\nnot prunable:\n" + "\n".join(f"  {e['id']} ({e['width']}): {e['reason']}" for e in result["excluded"])
    return text


def _short_note(note: str) -> str:
    """The reason a group cannot go to width 0, as a table cell."""
    shorter = {"not inside a residual branch (no skip connection around it)": "no skip",
               "it sets a residual block's channels (the skip), which stay": "skip channels",
               "its block's shortcut has layers (a projection: stride or channel change)": "projection shortcut"}
    return shorter.get(note, note or "?")


@command("groups", _format_groups)
def cmd_groups(args: argparse.Namespace) -> dict:
    """List the model's prunable channel groups."""
    from latprune import pipeline

    loaded = _model(args)
    return {"model": loaded.spec, "input_shape": list(loaded.input_shape), **pipeline.analyse(loaded).to_json()}


def _format_eval(result: dict) -> str:
    return f"{result['model']}: top-1 {result['top1']:.4f} on {result['images']} images from {result['data']}"


@command("eval", _format_eval)
def cmd_eval(args: argparse.Namespace) -> dict:
    """Top-1 accuracy on an ImageFolder dataset."""
    from latprune import pipeline

    loaded = _model(args)
    top1, images = pipeline.evaluate(loaded.model, args.data, loaded.family, loaded.input_shape, limit=args.limit,
                                     batch_size=args.batch_size)
    return {"model": loaded.spec, "data": args.data, "images": images, "top1": top1}


def _format_export(result: dict) -> str:
    return (f"wrote {result['onnx']} (opset {result['opset']}); ONNX Runtime vs PyTorch max abs diff "
            f"{result['max_abs_diff']:.2e}")


@command("export", _format_export)
def cmd_export(args: argparse.Namespace) -> dict:
    """Export to ONNX and check ONNX Runtime's output against PyTorch's."""
    from latprune import pipeline

    check_output(args.out, [args.weights, args.pruned], args.force)
    loaded = _model(args)
    diff = pipeline.export(loaded.model, loaded.input_shape, args.out, opset=args.opset)
    return {"model": loaded.spec, "onnx": args.out, "opset": args.opset, "max_abs_diff": diff}


def _format_profile(result: dict) -> str:
    return "\n".join([
        f"profiled {result['model']} on {result['backend']} (device {result['device']}) into {result['db']}",
        f"variants: {result['variants_timed']} timed, {result['variants_reused']} reused from other models, "
        f"{result['variants_already_done']} already done (of {result['variants_planned']})",
        f"layer signatures: {result['new_layer_rows']} new, {result['layer_rows']} in the database",
        (f"alignment step detected: {result['alignment_step']} channels" if result["alignment_detected"] else
         f"alignment step: inconclusive at this noise, using the {result['alignment_step']}-channel grid"),
        f"noise: round spread {100 * result['noise_round_spread']:.1f}%, p10-p90 {100 * result['noise_p10_p90']:.1f}%;"
        f" drift of the reference network {100 * result['drift']:.1f}%",
        f"wall time {result['wall_s']:.0f} s",
    ])


@command("profile", _format_profile)
def cmd_profile(args: argparse.Namespace) -> dict:
    """Time every prunable layer inside pruned variants of the model; resumes if interrupted."""
    from latprune import pipeline
    from latprune.profiler.api import ProfileSettings

    settings = ProfileSettings(widths=args.widths, variants=args.variants, rounds=args.rounds, runs=args.runs,
                               profiled_runs=args.runs, warmup=args.warmup, step=args.step,
                               global_warmup_s=args.global_warmup)
    analysis = pipeline.analyse(_dense(args))
    return pipeline.profile(analysis, args.backend, db=args.db, settings=settings, threads=args.threads).to_json()


def _format_measure(result: dict) -> str:
    dense = result["dense"]
    spread = (f"p10 {dense['p10_ms']:.3f}, p90 {dense['p90_ms']:.3f}, {dense['runs']} runs, round spread "
              f"{100 * dense['spread']:.1f}%")
    if "ratio" not in result:
        return f"{result['model']} on {result['backend']}: median {dense['median_ms']:.3f} ms ({spread})"
    ratio = result["ratio"]
    return (f"{result['model']} pruned ({result['pruned']}) on {result['backend']}: {ratio['ratio']:.4f} of the dense "
            f"model's latency, paired round by round (95% interval {ratio['low']:.4f}-{ratio['high']:.4f}, "
            f"+-{100 * ratio['half_width']:.1f}%, {ratio['rounds']} rounds): speedup {1 / ratio['ratio']:.2f}x\n"
            f"that is {result['derived_ms']:.3f} ms at the dense model's {dense['median_ms']:.3f} ms ({spread})")


@command("measure", _format_measure)
def cmd_measure(args: argparse.Namespace) -> dict:
    """Whole-model latency on a backend. A dense model: median, p10, p90 over shuffled rounds. A pruned model
    (--pruned): timed in the same rounds as the dense model it was made from, until their paired ratio is known
    to +-1.5% (95% interval) or --max-seconds; its milliseconds are that ratio times the dense median."""
    from latprune import pipeline
    from latprune.models import load_model

    loaded = _model(args)
    common = {"model": loaded.spec, "backend": args.backend, "input_shape": list(loaded.input_shape)}
    if not args.pruned:
        (measurement,), device = pipeline.measure([loaded.model], loaded.input_shape, args.backend,
                                                  rounds=args.rounds or 5, runs=args.runs, threads=args.threads,
                                                  global_warmup_s=args.global_warmup)
        return {**common, "dense": measurement.to_json(samples=True), "device": device}
    dense = load_model(loaded.spec, input_shape=loaded.input_shape)  # its architecture: weights do not time
    rule = pipeline.RoundsRule(min_rounds=max(args.rounds or 10, 2), max_rounds=max(args.rounds or 10, 60),
                               max_seconds=args.max_seconds)
    timing, device = pipeline.measure_against_dense(dense.model, [loaded.model], loaded.input_shape, args.backend,
                                                    rule=rule, threads=args.threads,
                                                    global_warmup_s=args.global_warmup)
    return {**common, "pruned": args.pruned, "ratio": timing.ratios[0].to_json(), "speedup": 1 / timing.ratios[0].ratio,
            "derived_ms": timing.derived_ms(0), "converged": timing.converged, "seconds": timing.seconds,
            "dense": timing.reference.to_json(samples=True), "pruned_raw": timing.networks[0].to_json(samples=True),
            "device": device}


def _format_devices(result: dict) -> str:
    rows = [(d["fingerprint"], d["backend"], d["description"].get("cpu", ""), d["description"].get("threads", ""),
             d["layer_rows"], d["network_rows"]) for d in result["devices"]]
    return f"{result['db']}\n" + table(["device", "backend", "cpu", "threads", "layer rows", "network rows"], rows)


@command("devices", _format_devices)
def cmd_devices(args: argparse.Namespace) -> dict:
    """Devices and backends in a profile database, with row counts."""
    from dataclasses import asdict

    from latprune.profiler.api import ProfileStore

    with ProfileStore(args.db, readonly=True) as store:
        return {"db": str(store.path), "devices": [asdict(s) for s in store.summaries()]}


def _format_fit(result: dict) -> str:
    lines = [f"{result['backend']} performance model ({result['status']}): {result['layer_rows']} layer timings, "
             f"{result['network_rows']} whole-network timings, alignment step {result['alignment_step']}"]
    for kind, scores in result["selection"].items():
        rows = [(name, f"{100 * s['mape']:.1f}%", f"{100 * s['p95']:.1f}%", f"{100 * s['within_10pct']:.0f}%", s["n"])
                for name, s in scores.items()]
        lines.append(f"{kind} layers, held-out (cin, cout) pairs; chosen: {result['chosen'][kind]}")
        lines.append(table(["estimator", "MAPE", "p95 error", "within 10%", "held out"], rows))
    return "\n".join(lines)


@command("fit", _format_fit)
def cmd_fit(args: argparse.Namespace) -> dict:
    """Fit the performance model of this device and backend on its profile (and store it)."""
    from latprune import pipeline

    return pipeline.fit(args.db, args.backend, args.threads, estimator=args.estimator)[1].to_json()


def _format_predict(result: dict) -> str:
    text = f"{result['model']} on {result['backend']}: predicted {result['predicted_ms']:.3f} ms"
    if result.get("dense_predicted_ms"):
        text += f" (dense {result['dense_predicted_ms']:.3f} ms, speedup {result['predicted_speedup']:.2f}x)"
    return text


@command("predict", _format_predict)
def cmd_predict(args: argparse.Namespace) -> dict:
    """Predicted latency of a dense or pruned model from the fitted performance model."""
    from latprune import pipeline

    loaded = _model(args)
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads)
    return {"model": loaded.spec, "backend": args.backend, **pipeline.predict(perf, fitted, loaded, args.backend),
            "perf_model": fitted.status}


def _format_validate(result: dict) -> str:
    def kind(r: dict) -> str:
        if r["kind"] == "plan":
            return f"plan at {r['budget_fraction']:g}x"
        return "random, " + ("grid" if r["on_grid"] else "any")

    def errors(name: str, e: dict) -> str:
        if not e or not e.get("n"):
            return f"{name}: none"
        return (f"{name} ({e['n']}): ratio MAPE {100 * e['mape']:.2f}% (mean {100 * e['mean_error']:+.2f}%), max "
                f"|error| {e['max_abs_pct_error']:.1f}%, within 5%: {100 * e['within_5pct']:.0f}%, Kendall tau "
                f"{e['kendall_tau']:.3f}")

    rows = [(r["variant"], kind(r), f"{r['predicted_ratio']:.3f}", f"{r['measured_ratio']:.3f}",
             f"{r['ratio_low']:.3f}-{r['ratio_high']:.3f}", f"{100 * r['error']:+.1f}%") for r in result["per_variant"]]
    dense = result["dense"]
    known = ("every ratio known to +-1.5%" if result["converged"] else
             f"widest ratio interval +-{100 * result['widest_interval']:.1f}%")
    return "\n".join([
        table(["variant", "kind", "predicted / dense", "measured / dense", "95% interval", "error"], rows),
        errors("random variants", result),
        errors("plan-like variants", result.get("plan_like") or {}),
        f"dense reference: predicted {dense['predicted_ms']:.3f} ms, measured {dense['measured_ms']:.3f} ms (p10 "
        f"{dense['p10_ms']:.3f}, p90 {dense['p90_ms']:.3f}): {100 * dense['error']:+.1f}%",
        f"{result['rounds']} paired rounds ({known}); measurement noise (round spread) {100 * result['noise']:.1f}%",
        *(f"wrote {f}" for f in result.get("files", [])),
    ])


@command("validate", _format_validate)
def cmd_validate(args: argparse.Namespace) -> dict:
    """Predict and measure random pruned variants and the planner's own choices at 0.35-0.9x of the
    dense latency (interleaved with the dense model); errors of the two kinds are reported apart."""
    from latprune import pipeline
    from latprune.perfmodel.validate import validate_model

    analysis = pipeline.analyse(_dense(args))
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads)
    plan_like = pipeline.plan_like_widths(analysis, perf, fitted, args.backend) if args.plan_like else ()
    result = validate_model(analysis, args.backend, perf, fitted.alignment_step, variants=args.variants,
                            rounds=args.rounds, threads=args.threads, out_dir=args.out, plan_like=plan_like)
    result["perf_model"] = fitted.status
    return result


def search_line(search: dict) -> str:
    """One line on the calibrated search: what it minimised, how long, and the chosen plan vs the plain DP."""
    damage = search["damage"]
    measured = "cached" if damage["cached"] else f"measured in {damage['seconds']:.1f} s"
    return (f"search: {search['candidates_scored']} plans scored in {search['seconds']:.1f} s (damage table "
            f"{measured}); {search['objective']}: "
            f"{search['loss_chosen']:.4g} chosen ({search['chosen_from']}) vs {search['loss_plain_dp']:.4g} plain DP")


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
    lines += _verification_lines(result.get("verification") or {})
    if result.get("out"):
        lines.append(f"wrote {result['out']}")
    return "\n".join(lines)


def _verification_lines(verification: dict) -> list[str]:
    """The closed loop's rounds as a table and a verdict (or why the plan was not verified)."""
    if not verification:
        return []
    if not verification.get("verified"):
        return [f"not verified on the device: {verification.get('reason', 'unknown')}"]
    from latprune.pipeline import ROUND_COLUMNS, round_cells

    low, high = verification["band_ms"]
    return [table(ROUND_COLUMNS, [round_cells(r) for r in verification["rounds"]]),
            f"verified on this device: measured {verification['measured_ms']:.4g} ms (dense "
            f"{verification['dense_measured_ms']:.4g} ms, band {low:.4g}-{high:.4g} ms): {verification['status']}, "
            f"round {verification['chosen_round']} of {verification['rounds_used']}, {verification['seconds']:.1f} s"]


@command("plan", _format_plan)
def cmd_plan(args: argparse.Namespace) -> dict:
    """Choose per-group widths that keep the most importance within a latency budget.

    On this machine's profile the plan is verified by a closed loop: each plan is measured on the
    device next to the dense model, its layers are added to the profile, the performance model is
    refitted and corrected, and the budget is re-planned until the measured latency lies within
    [(1 - tol) x budget, budget] (--no-verify trusts the prediction instead).
    """
    from latprune import pipeline

    request, settings, verify = _budget(args), _plan_settings(args, args.method), _verification(args)
    if args.out:
        check_output(args.out, [args.weights, args.db], args.force)
    loaded = _dense(args)
    analysis = pipeline.analyse(loaded)
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads, device=args.device)
    plan = pipeline.plan(analysis, request, perf, fitted, args.backend, settings,
                         calib=_importance_images(args, loaded), verify=verify)
    if args.out:
        plan.save(args.out)
    return {**plan.to_json(), "out": args.out}


def _format_prune(result: dict) -> str:
    return (f"pruned {result['model']}: {result['params']:,} parameters of {result['dense_params']:,} "
            f"({100 * result['params'] / result['dense_params']:.1f}%), {len(result['widths'])} groups; "
            f"wrote {result['out']}")


def _format_recovered(result: dict) -> str:
    lines = [_format_prune(result)] if "method" in result else [f"wrote {result['out']}"]
    report = result.get("recovery")
    if report:
        steps = ", ".join(f"{s['step']} {s['seconds']:.1f} s" for s in report["steps"])
        lines.append(f"recovery {report['recipe']} on {report['calibration_images']} calibration images: {steps}; "
                     f"layer reconstruction error {report['error_before']:.3f} -> {report['error_after']:.3f}")
    return "\n".join(lines)


@command("prune", _format_recovered)
def cmd_prune(args: argparse.Namespace) -> dict:
    """Build the pruned network of a plan (or a uniform keep ratio) and save it."""
    from latprune import pipeline
    from latprune.planner.plan import Plan
    from latprune.pruned_file import save_pruned
    from latprune.surgery import count_parameters

    if (args.plan is None) == (args.uniform is None):
        raise LatpruneError("give exactly one of --plan FILE and --uniform RATIO")
    recovery = _recovery_request(args)
    check_output(args.out, [args.weights, args.plan], args.force)
    plan = Plan.load(args.plan) if args.plan else None
    loaded = _dense(args)
    analysis = pipeline.analyse(loaded)
    if plan is None:
        plan = pipeline.uniform(analysis, args.uniform, _plan_settings(args), calib=_importance_images(args, loaded))
    pruned = pipeline.prune(analysis, plan)
    pruned, report = pipeline.repair(analysis, pruned, recovery, progress=not args.json)
    save_pruned(pruned, args.out)
    return {"model": loaded.spec, "out": args.out, "widths": pruned.widths, "params": count_parameters(pruned.model),
            "dense_params": count_parameters(loaded.model), "method": plan.method,
            "recovery": report.to_dict() if report else None}


@command("recover", _format_recovered)
def cmd_recover(args: argparse.Namespace) -> dict:
    """Repair a pruned (or sparsified) model toward its dense original from unlabeled images."""
    from latprune import pipeline
    from latprune.pruned_file import read_pruned, save_pruned

    recovery = _recovery_request(args)
    check_output(args.out, [args.pruned, args.weights], args.force)
    saved = read_pruned(args.pruned)
    analysis = pipeline.analyse(pipeline.load_dense_for(saved, args.model, args.weights, args.input_shape))
    recovered, report = pipeline.repair(analysis, saved.build(analysis), recovery, progress=not args.json)
    save_pruned(recovered, args.out)
    return {"model": analysis.spec, "out": args.out, "recovery": report.to_dict() if report else None}


@command("sparsify", lambda r: (f"{r['model']}: {100 * r['sparsity']:.1f}% of conv/linear weights zeroed "
                                f"(global magnitude); wrote {r['out']}"))
def cmd_sparsify(args: argparse.Namespace) -> dict:
    """Zero the smallest-magnitude weights network-wide (unstructured; shapes unchanged)."""
    from latprune import pipeline
    from latprune.pruned_file import save_pruned
    from latprune.sparsity import weight_sparsity

    check_output(args.out, [args.weights], args.force)
    sparse = pipeline.sparsify(_dense(args), args.sparsity)
    save_pruned(sparse, args.out)
    return {"model": sparse.spec, "out": args.out, "sparsity": weight_sparsity(sparse.model)}


def _format_run(result: dict) -> str:
    rows = []
    for run in result["runs"]:
        latency, accuracy = run["latency"], run.get("accuracy")
        top1 = (f"{100 * accuracy['dense']:.1f} -> {100 * accuracy['recovered']:.1f}%" if accuracy else "-")
        rows.append((run["name"], f"{latency['budget_ms']:.3f}", f"{latency['pruned']['predicted_ms']:.3f}",
                     f"{latency['pruned']['measured_ms']:.3f}", f"{latency['dense']['measured_ms']:.3f}",
                     f"{latency['measured_speedup']:.2f}x", "yes" if latency["meets_budget"] else
                     f"no (+{100 * (latency['measured_over_budget'] - 1):.1f}%)", top1,
                     f"{sum(run['stages_s'].values()):.0f}"))
    lines = [table(["run", "budget ms", "predicted ms", "measured ms", "dense ms", "speedup", "meets budget",
                    "top-1 dense -> pruned", "seconds"], rows)]
    for run in result["runs"]:
        lines.append(f"{run['name']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in run["stages_s"].items()))
        if run["plan"].get("search"):
            lines.append(f"{run['name']}: {search_line(run['plan']['search'])}")
    lines.append(f"wrote {result['files']['report']} and {result['files']['summary']}")
    return "\n".join(lines)


@command("run", _format_run)
def cmd_run(args: argparse.Namespace) -> dict:
    """Profile, fit, plan, prune, recover, export, measure and evaluate; writes report.html and summary.json.

    Without --model, runs the built-in demonstration: latency planning for a torchvision
    ResNet-18, and accuracy on scikit-learn's handwritten digits with a small CNN trained here.
    """
    from latprune.job import JobConfig, default_jobs, run_jobs
    from latprune.models import parse_input_shape
    from latprune.pipeline import SearchSettings

    progress = not args.json
    if args.model is None:
        given = [f"--{k.replace('_', '-')}" for k in ("budget_ms", "speedup", "weights", "input_shape", "calib",
                                                     "eval", "recovery", "objective") if getattr(args, k) is not None]
        if given:
            raise LatpruneError(f"{', '.join(given)} need --model SPEC (without --model, run runs its built-in demo)")
        check_output_folder(args.out, args.force)
        configs = default_jobs(args.out, backend=args.backend, db=args.db, progress=progress,
                               verify=_verification(args), margin=_margin(args))
    else:
        configs = [JobConfig(
            model=args.model, budget=_budget(args, _margin(args)), backend=args.backend, weights=args.weights,
            input_shape=parse_input_shape(args.input_shape) if args.input_shape else None, calib=args.calib,
            eval=args.eval, recovery=args.recovery, importance=args.importance, objective=args.objective,
            search=SearchSettings(seconds=args.search_seconds),
            calib_size=args.calib_size or RECOVERY_CALIB_SIZE, db=args.db, threads=args.threads,
            verify=_verification(args), depth=not args.no_depth)]
        configs[0].check(progress)
        check_output_folder(args.out, args.force)
    return run_jobs(configs, args.out, progress=progress, checked=args.model is not None)


# ---------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="latprune", description="Latency-aware pruning for CNNs.")
    parser.add_argument("--version", action="version", version=f"latprune {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("groups", help="list prunable channel groups", description=cmd_groups.__doc__)
    add_model_options(p, pruned=True)
    _json_option(p)

    p = sub.add_parser("eval", help="top-1 accuracy on an ImageFolder dataset", description=cmd_eval.__doc__)
    add_model_options(p, pruned=True)
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root (<class>/<image>)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    _json_option(p)

    p = sub.add_parser("export", help="export to ONNX and verify with ONNX Runtime", description=cmd_export.__doc__)
    add_model_options(p, pruned=True)
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--opset", type=positive_int, default=17)
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("profile", help="time layers in-network into the profile database",
                       description=cmd_profile.__doc__)
    add_model_options(p)
    _backend_options(p)
    _db_option(p)
    p.add_argument("--widths", type=positive_int, default=32, help="candidate widths per group (default 32)")
    p.add_argument("--variants", type=positive_int, default=64, help="pruned variants to time (default 64)")
    p.add_argument("--rounds", type=positive_int, default=3, help="timing rounds, shuffled order each (default 3)")
    p.add_argument("--runs", type=positive_int, default=8,
                   help="timed runs per round, plain and profiled each (default 8)")
    p.add_argument("--warmup", type=natural_int, default=3, help="warm-up runs before each timing (default 3)")
    p.add_argument("--step", type=positive_int, default=16, help="grid of aligned widths to cover (default 16)")
    _json_option(p)

    p = sub.add_parser("measure", help="whole-model latency", description=cmd_measure.__doc__)
    add_model_options(p, pruned=True)
    _backend_options(p)
    p.add_argument("--rounds", type=positive_int,
                   help="rounds (default 5); with --pruned the least number before the interval rule (default 10)")
    p.add_argument("--max-seconds", type=finite_float, default=120.0, metavar="S",
                   help="with --pruned: stop timing after this long even if the ratio is not yet known to +-1.5%% "
                        "(default 120)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per round (default 10)")
    _json_option(p)

    p = sub.add_parser("fit", help="fit the performance model on the profile", description=cmd_fit.__doc__)
    _backend_options(p)
    _db_option(p)
    p.add_argument("--estimator", default="auto", help="auto (best held-out), hist-gbm, random-forest, family-linear")
    _json_option(p)

    p = sub.add_parser("predict", help="predicted latency of a model", description=cmd_predict.__doc__)
    add_model_options(p, pruned=True)
    _backend_options(p)
    _db_option(p)
    _json_option(p)

    p = sub.add_parser("validate", help="check predictions against measurement", description=cmd_validate.__doc__)
    add_model_options(p)
    _backend_options(p)
    _db_option(p)
    p.add_argument("--variants", type=positive_int, default=20, help="random pruned variants (default 20)")
    p.add_argument("--no-plan-like", dest="plan_like", action="store_false",
                   help="leave out the planner's own choices at 0.35-0.9x of the dense latency")
    p.add_argument("--rounds", type=positive_int, default=10,
                   help="least measurement rounds; more until every paired ratio is known to +-1.5%% (default 10)")
    p.add_argument("--out", metavar="DIR", help="write the JSON and a PNG scatter plot here")
    _json_option(p)

    p = sub.add_parser("plan", help="choose widths for a latency budget", description=cmd_plan.__doc__)
    add_model_options(p)
    _backend_options(p)
    _db_option(p)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=finite_float, metavar="MS",
                        help="latency budget in milliseconds, met as measured on this device (as predicted with "
                             "--no-verify or another device's profile)")
    budget.add_argument("--speedup", type=finite_float, metavar="S",
                        help="budget = dense latency / S (planned on the predicted dense latency, verified against "
                             "the dense model measured in the same rounds)")
    _verify_options(p)
    p.add_argument("--device", metavar="FINGERPRINT",
                   help="plan from another device's profile in the database (`latprune devices`); not verified")
    p.add_argument("--max-macs", type=finite_float, metavar="N", help="also cap multiply-accumulates")
    p.add_argument("--method", choices=PLANNERS, default="latency",
                   help="latency DP (default) or a baseline: FLOPs DP, uniform ratio, Torch-Pruning global magnitude")
    _planning_options(p)
    _objective_options(p, default="importance")
    p.add_argument("--bins", type=positive_int, default=2000, help="cost bins of the DP (default 2000)")
    p.add_argument("--out", metavar="plan.json", help="write the plan here")
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("prune", help="build a pruned model from a plan", description=cmd_prune.__doc__)
    add_model_options(p)
    p.add_argument("--plan", metavar="FILE", help="a plan written by `latprune plan`")
    p.add_argument("--uniform", type=finite_float, metavar="R", help="keep the fraction R of every group instead")
    _planning_options(p)
    _recovery_option(p)
    p.add_argument("--out", required=True, metavar="pruned.pt")
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("recover", help="repair a pruned model from unlabeled images", description=cmd_recover.__doc__)
    p.add_argument("--pruned", required=True, metavar="FILE", help="a pruned model saved by latprune")
    add_model_options(p)
    _recovery_option(p, required=True)
    p.add_argument("--calib", metavar="DIR", help="unlabeled calibration images (any folder layout)")
    p.add_argument("--calib-size", type=positive_int, metavar="N",
                   help=f"images to use (default {RECOVERY_CALIB_SIZE}; all of them for fine-tuning)")
    p.add_argument("--out", required=True, metavar="recovered.pt")
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("sparsify", help="global magnitude sparsity (unstructured)", description=cmd_sparsify.__doc__)
    add_model_options(p)
    p.add_argument("--sparsity", type=finite_float, required=True, metavar="S",
                   help="fraction of weights to zero, [0, 1)")
    p.add_argument("--out", required=True, metavar="sparse.pt")
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("run", help="the whole job: profile -> plan -> prune -> recover -> measure -> report",
                       description=cmd_run.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, required=False)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=finite_float, metavar="X",
                        help="latency budget in milliseconds, judged against the pruned model's measured latency")
    budget.add_argument("--speedup", type=finite_float, metavar="S",
                        help="budget = dense latency / S: planned on the predicted dense latency, judged against "
                             "the dense model measured in the same rounds")
    p.add_argument("--backend", default="ort-cpu", help="torch-cpu, torch-cuda, ort-cpu or ort-cuda (default ort-cpu)")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: physical cores)")
    p.add_argument("--calib", metavar="DIR", help="unlabeled images for importance and recovery (any folder layout)")
    p.add_argument("--calib-size", type=positive_int, metavar="N",
                   help=f"calibration images (default {RECOVERY_CALIB_SIZE})")
    p.add_argument("--eval", metavar="DIR", help="labelled images (<class>/<image> folders): accuracy before and after")
    p.add_argument("--recovery", metavar="METHOD",
                   help="recovery recipe (default two-stage with --calib, none without); see `latprune prune`")
    from latprune.planner.importance import CRITERIA

    p.add_argument("--importance", choices=list(CRITERIA),
                   help="channel importance (default: taylor with --calib, l2 without)")
    p.add_argument("--margin", type=finite_float,
                   help="plan to budget/(1+margin), headroom for measurement noise (default 0, or 0.03 with "
                        "--no-verify)")
    _objective_options(p, default=None)
    _depth_option(p)
    _verify_options(p)
    _db_option(p)
    p.add_argument("--out", default="latprune-run", metavar="DIR",
                   help="output folder: report.html, summary.json, plan, pruned model, ONNX (default latprune-run)")
    _force_option(p)
    _json_option(p)

    p = sub.add_parser("devices", help="devices and backends in a profile database", description=cmd_devices.__doc__)
    _db_option(p)
    _json_option(p)
    return parser


def _backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", required=True, help="torch-cpu, torch-cuda, ort-cpu or ort-cuda")
    parser.add_argument("--threads", type=positive_int, help="intra-op threads (default: physical cores)")
    parser.add_argument("--global-warmup", type=finite_float, default=5.0, metavar="SECONDS",
                        help="steady load before timing starts (default 5)")


def _planning_options(parser: argparse.ArgumentParser) -> None:
    from latprune.planner.importance import CRITERIA

    parser.add_argument("--importance", default="l2", choices=list(CRITERIA),
                        help="channel importance (default l2); taylor and sensitivity need --calib")
    parser.add_argument("--calib", metavar="DIR", help="unlabeled calibration images (any folder layout)")
    parser.add_argument("--calib-size", type=positive_int, metavar="N",
                        help=f"calibration images (default {IMPORTANCE_CALIB_SIZE} for importance, "
                             f"{RECOVERY_CALIB_SIZE} for recovery)")
    parser.add_argument("--widths", choices=("aligned", "any"), default="aligned",
                        help="multiples of the alignment step (default) or any width")
    parser.add_argument("--step", type=positive_int, help="alignment step (default: the profile's detected step)")
    parser.add_argument("--min-width", type=finite_float, default=0.1, metavar="FRACTION",
                        help="narrowest width per group as a fraction (default 0.1)")
    parser.add_argument("--hold", type=_comma_list, metavar="GROUPS",
                        help="comma-separated group ids to keep at full width; 'channel-ops' holds every group "
                             "that crosses a parameter-free channel op (e.g. the residual streams of cifar ResNets)")
    _depth_option(parser)


def _depth_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-depth", action="store_true",
                        help="never remove a residual branch whole (by default a branch's inner groups may go to "
                             "width 0 where `latprune groups` shows they can)")


def _objective_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    described = "calibrated with --calib, importance without" if default is None else default
    parser.add_argument("--objective", choices=OBJECTIVES, default=default,
                        help=f"what the latency planner maximises: summed channel importance, or calibrated: "
                             f"measured per-group damage, searched on the calibration loss of whole pruned networks "
                             f"(needs --calib; default {described})")
    parser.add_argument("--search-seconds", type=finite_float, default=SEARCH_SECONDS, metavar="S",
                        help=f"time box of the calibrated search (default {SEARCH_SECONDS:g}; re-plans in "
                             f"the verification loop get a quarter)")


def _recovery_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    from latprune.recovery import METHODS

    parser.add_argument("--recovery", required=required, default=None if required else "none", metavar="METHOD",
                        help=f"{', '.join(METHODS)}, or steps joined with + such as two-stage+asr "
                             "(needs --calib; finetune and overparam take labelled --train instead)")
    parser.add_argument("--train", metavar="DIR",
                        help="labelled images (<class>/<image> folders) for finetune/overparam: cross-entropy is "
                             "added; without labels they distil the dense model")
    parser.add_argument("--epochs", type=positive_int, help="fine-tuning epochs (default 3)")
    parser.add_argument("--lr", type=finite_float,
                        help="fine-tuning learning rate, SGD with cosine decay (default 0.01)")
    parser.add_argument("--batch-size", type=positive_int, help="fine-tuning batch size (default 64)")
    parser.add_argument("--expansion", type=positive_int,
                        help="overparam: width factor inside each expanded layer (default 2)")


def _force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output (never one of the inputs)")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


positive_int = _int_at_least(1)
natural_int = _int_at_least(0)


def _comma_list(text: str) -> list[str]:
    """An argparse type: comma-separated names (blanks dropped)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _verify_options(parser: argparse.ArgumentParser) -> None:
    from latprune.pipeline import LoopSettings

    parser.add_argument("--no-verify", action="store_true",
                        help="skip the closed loop: trust the performance model instead of measuring the plan")
    parser.add_argument("--tol", type=finite_float, default=LoopSettings.tol, metavar="FRACTION",
                        help=f"the closed loop stops when measured latency lies in [(1 - tol) x budget, budget] "
                             f"(default {LoopSettings.tol})")
    parser.add_argument("--verify-rounds", type=positive_int, default=LoopSettings.max_rounds, metavar="N",
                        help=f"most plans the closed loop measures (default {LoopSettings.max_rounds})")


def _verification(args: argparse.Namespace):
    from latprune.pipeline import LoopSettings, Verification

    return Verification(enabled=not args.no_verify, db=args.db, threads=args.threads,
                        loop=LoopSettings(tol=args.tol, max_rounds=args.verify_rounds), progress=not args.json)


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH", help="profile database (default $LATPRUNE_DB or the user cache)")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _version() -> str:
    from latprune import __version__

    return __version__


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs."""


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _finite(value):
    """``value`` with non-finite floats as None: the JSON printed is always valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    func, formatter = COMMANDS[args.command]
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = func(args)
    except LatpruneError as exc:
        print(f"latprune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latprune {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"latprune {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(_finite(result), allow_nan=False) if args.json else formatter(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
