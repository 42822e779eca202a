"""Commands on the device and its latency: profile, measure, devices, fit, predict, validate."""

from __future__ import annotations

import argparse

from latprune.cli.options import (backend_options, db_option, finite_float, json_option, model_options, natural_int,
                                  positive_int)
from latprune.cli.registry import command
from latprune.cli.requests import dense_model, loaded_model
from latprune.cli.text import table


def _format_profile(result: dict) -> str:
    return "\n".join([
        f"profiled {result['model']} on {result['backend']} (device {result['device']}) into {result['db']}",
        f"variants: {result['variants_timed']} timed, {result['variants_reused']} reused from other models, "
        f"{result['variants_already_done']} already done, {result['variants_by_others']} by another profiler of this "
        f"device (of {result['variants_planned']})",
        f"layer signatures: {result['new_layer_rows']} new, {result['layer_rows']} in the database",
        (f"alignment step detected: {result['alignment_step']} channels" if result["alignment_detected"] else
         f"alignment step: inconclusive at this noise, using the {result['alignment_step']}-channel grid"),
        f"noise: round spread {100 * result['noise_round_spread']:.1f}%, p10-p90 {100 * result['noise_p10_p90']:.1f}%;"
        f" drift of the reference network {100 * result['drift']:.1f}%",
        *([f"host load: {result['visits_retimed']} visits timed again, {result['visits_kept_loaded']} kept loaded "
           "(scaled by the dense network's slowdown)"] if result.get("visits_retimed") else []),
        f"wall time {result['wall_s']:.0f} s",
    ])


def _profile_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    backend_options(parser)
    db_option(parser)
    parser.add_argument("--widths", type=positive_int, default=32, help="candidate widths per group (default 32)")
    parser.add_argument("--variants", type=positive_int, default=64, help="pruned variants to time (default 64)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timing rounds, shuffled order each (default 3)")
    parser.add_argument("--runs", type=positive_int, default=8,
                        help="timed runs per round, plain and profiled each (default 8)")
    parser.add_argument("--warmup", type=natural_int, default=3, help="warm-up runs before each timing (default 3)")
    parser.add_argument("--step", type=positive_int, default=16, help="grid of aligned widths to cover (default 16)")
    parser.add_argument("--claim-batch", type=positive_int, default=16, metavar="N",
                        help="variants claimed and timed together; profilers of one device sharing a --db split the "
                             "variants in such batches (default 16)")
    json_option(parser)


@command("profile", "time layers in-network into the profile database", _profile_options, _format_profile)
def cmd_profile(args: argparse.Namespace) -> dict:
    """Time every prunable layer inside pruned variants of the model; resumes if interrupted."""
    from latprune import pipeline
    from latprune.profiler.api import ProfileSettings

    settings = ProfileSettings(widths=args.widths, variants=args.variants, rounds=args.rounds, runs=args.runs,
                               profiled_runs=args.runs, warmup=args.warmup, step=args.step,
                               global_warmup_s=args.global_warmup, claim_batch=args.claim_batch)
    analysis = pipeline.analyse(dense_model(args))
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
            f"+-{100 * ratio['half_width']:.1f}%, {ratio['rounds']} quiet rounds): speedup {1 / ratio['ratio']:.2f}x\n"
            f"that is {result['derived_ms']:.3f} ms at the dense model's {dense['median_ms']:.3f} ms ({spread})")


def _measure_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, pruned=True)
    backend_options(parser)
    parser.add_argument("--rounds", type=positive_int,
                        help="rounds (default 5); with --pruned the least number before the interval rule (default 10)")
    parser.add_argument("--max-seconds", type=finite_float, default=120.0, metavar="S",
                        help="with --pruned: stop timing after this long even if the ratio is not yet known to "
                             "+-1.5%% (default 120)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed runs per round (default 10)")
    db_option(parser)  # with --pruned: the dense model's profiled quiet time, to leave out slow-state rounds
    json_option(parser)


@command("measure", "whole-model latency", _measure_options, _format_measure)
def cmd_measure(args: argparse.Namespace) -> dict:
    """Whole-model latency on a backend. A dense model: median, p10, p90 over shuffled rounds. A pruned model
    (--pruned): timed in the same rounds as the dense model it was made from, until their paired ratio is known
    to +-1.5% (95% interval) or --max-seconds; its milliseconds are that ratio times the dense median."""
    from latprune import pipeline
    from latprune.models import load_model

    loaded = loaded_model(args)
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
                                                    global_warmup_s=args.global_warmup,
                                                    quiet_ms=pipeline.quiet_dense_ms(args.db, args.backend, dense,
                                                                                     args.threads))
    return {**common, "pruned": args.pruned, "ratio": timing.ratios[0].to_json(), "speedup": 1 / timing.ratios[0].ratio,
            "derived_ms": timing.derived_ms(0), "converged": timing.converged, "seconds": timing.seconds,
            "slow_state_rounds": timing.slow_state_rounds, "in_quiet_state": timing.settled,
            "dense": timing.reference.to_json(samples=True), "pruned_raw": timing.networks[0].to_json(samples=True),
            "device": device}


def _format_devices(result: dict) -> str:
    rows = [(d["fingerprint"], d["backend"], d["description"].get("cpu", ""), d["description"].get("threads", ""),
             d["layer_rows"], d["network_rows"], d["last_profiled_utc"] or "-", d["fit"])
            for d in result["devices"]]
    return f"{result['db']}\n" + table(["device", "backend", "cpu", "threads", "layer rows", "network rows",
                                        "last profiled (UTC)", "performance model"], rows)


def _devices_options(parser: argparse.ArgumentParser) -> None:
    db_option(parser)
    json_option(parser)


@command("devices", "devices and backends in a profile database", _devices_options, _format_devices)
def cmd_devices(args: argparse.Namespace) -> dict:
    """The devices and backends in a profile database (a file or a team's server): row counts, when each was
    last profiled, and whether its fitted performance model is current."""
    import datetime

    from latprune import pipeline

    location, devices = pipeline.fleet(args.db)
    for device in devices:
        when = device["last_profiled"]
        device["last_profiled_utc"] = (datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
                                       .strftime("%Y-%m-%d %H:%M") if when else None)
    return {"db": location, "devices": devices}


def _format_fit(result: dict) -> str:
    lines = [f"{result['backend']} performance model ({result['status']}): {result['layer_rows']} layer timings, "
             f"{result['network_rows']} whole-network timings, alignment step {result['alignment_step']}"]
    for kind, scores in result["selection"].items():
        rows = [(name, f"{100 * s['mape']:.1f}%", f"{100 * s['p95']:.1f}%", f"{100 * s['within_10pct']:.0f}%", s["n"])
                for name, s in scores.items()]
        lines.append(f"{kind} layers, held-out (cin, cout) pairs; chosen: {result['chosen'][kind]}")
        lines.append(table(["estimator", "MAPE", "p95 error", "within 10%", "held out"], rows))
    return "\n".join(lines)


def _fit_options(parser: argparse.ArgumentParser) -> None:
    backend_options(parser)
    db_option(parser)
    parser.add_argument("--estimator", default="auto", help="auto (best held-out), hist-gbm, random-forest, family-linear")
    json_option(parser)


@command("fit", "fit the performance model on the profile", _fit_options, _format_fit)
def cmd_fit(args: argparse.Namespace) -> dict:
    """Fit the performance model of this device and backend on its profile (and store it)."""
    from latprune import pipeline

    return pipeline.fit(args.db, args.backend, args.threads, estimator=args.estimator)[1].to_json()


def _format_predict(result: dict) -> str:
    text = f"{result['model']} on {result['backend']}: predicted {result['predicted_ms']:.3f} ms"
    if result.get("dense_predicted_ms"):
        text += f" (dense {result['dense_predicted_ms']:.3f} ms, speedup {result['predicted_speedup']:.2f}x)"
    return text


def _predict_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser, pruned=True)
    backend_options(parser)
    db_option(parser)
    json_option(parser)


@command("predict", "predicted latency of a model", _predict_options, _format_predict)
def cmd_predict(args: argparse.Namespace) -> dict:
    """Predicted latency of a dense or pruned model from the fitted performance model."""
    from latprune import pipeline

    loaded = loaded_model(args)
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads)
    return {"model": loaded.spec, "backend": args.backend, **pipeline.predict(perf, fitted, loaded, args.backend),
            "perf_model": fitted.status}


def _format_validate(result: dict) -> str:
    def kind(r: dict) -> str:
        if r["kind"] == "plan":
            return f"plan at {r['budget_fraction']:g}x"
        return ("random, " if r["kind"] == "random" else "branches removed, ") + ("grid" if r["on_grid"] else "any")

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
        *([errors("random variants with residual branches removed", result["depth"])] if result.get("depth") else []),
        errors("plan-like variants", result.get("plan_like") or {}),
        f"dense reference: predicted {dense['predicted_ms']:.3f} ms, measured {dense['measured_ms']:.3f} ms (p10 "
        f"{dense['p10_ms']:.3f}, p90 {dense['p90_ms']:.3f}): {100 * dense['error']:+.1f}%",
        f"{result['rounds']} quiet paired rounds ({known}); measurement noise (round spread) {100 * result['noise']:.1f}%",
        *(f"wrote {f}" for f in result.get("files", [])),
    ])


def _validate_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    backend_options(parser)
    db_option(parser)
    parser.add_argument("--variants", type=positive_int, default=20,
                        help="random pruned variants, and as many again with residual branches removed (default 20)")
    parser.add_argument("--no-plan-like", dest="plan_like", action="store_false",
                        help="leave out the planner's own choices at 0.35-0.9x of the dense latency")
    parser.add_argument("--rounds", type=positive_int, default=10,
                        help="least measurement rounds; more until every paired ratio is known to +-1.5%% (default 10)")
    parser.add_argument("--out", metavar="DIR", help="write the JSON and a PNG scatter plot here")
    json_option(parser)


@command("validate", "check predictions against measurement", _validate_options, _format_validate)
def cmd_validate(args: argparse.Namespace) -> dict:
    """Predict and measure random pruned variants and the planner's own choices at 0.35-0.9x of the
    dense latency (interleaved with the dense model); errors of the two kinds are reported apart."""
    from latprune import pipeline

    analysis = pipeline.analyse(dense_model(args))
    perf, fitted = pipeline.fit(args.db, args.backend, args.threads)
    plan_like = pipeline.plan_like_widths(analysis, perf, fitted, args.backend) if args.plan_like else ()
    result = pipeline.validate(analysis, args.backend, perf, fitted.alignment_step, variants=args.variants,
                               rounds=args.rounds, threads=args.threads, out_dir=args.out, plan_like=plan_like,
                               quiet_ms=pipeline.quiet_dense_ms(args.db, args.backend, analysis.loaded, args.threads))
    result["perf_model"] = fitted.status
    return result
