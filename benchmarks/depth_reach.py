"""Issue #25: the latency reach of depth: the fastest plan with and without removing residual branches.

For each model (ort-cpu, batch 1): the fastest plan latprune may choose, every group at its narrowest
candidate width (the planner's default grid: aligned, at least 10% of the group), once width only
(``--no-depth``) and once with every removable branch removed, each timed interleaved with the dense
model until the paired ratio's 95% interval is within +-1.5% (or three minutes). No profile is
needed: these are the two ends of the planner's reach, measured directly.
Run: ``python -m benchmarks.depth_reach [--models resnet18,resnet50,mobilenet_v2,cifar:resnet56] [--quick]``.
Run it alone.
"""

from __future__ import annotations

import argparse

from benchmarks.common import markdown_table, write_result
from latprune import pipeline
from latprune.planner.widths import WidthPolicy
from latprune.profiler.api import RoundsRule, measure_paired
from latprune.pruned_file import prune_loaded

BACKEND = "ort-cpu"


def fastest_kept(analysis, depth: bool) -> dict[str, list[int]]:
    """Kept channels of the fastest plan: the narrowest candidate of every group (0: its branch removed)."""
    policy = WidthPolicy(depth=depth)
    return {g.id: g.leading_channels(int(policy.candidates(g)[0])) for g in analysis.groups}


def reach(spec: str, seconds: float) -> dict:
    shape = (1, 3, 32, 32) if spec.startswith("cifar:") else (1, 3, 224, 224)
    analysis = pipeline.analyse(pipeline.load(spec, input_shape=shape))
    pruned = {depth: prune_loaded(analysis, fastest_kept(analysis, depth)).model for depth in (False, True)}
    timing, device = measure_paired(analysis.model, [pruned[False], pruned[True]], shape, BACKEND,
                                    rule=RoundsRule(min_rounds=10, max_rounds=80, max_seconds=seconds))
    width_only, with_depth = timing.ratios
    return {"model": spec, "input_shape": list(shape), "branches": len(analysis.branches),
            "groups": len(analysis.groups), "dense_ms": timing.reference.median_ms,
            "dense_p10_ms": timing.reference.p10_ms, "dense_p90_ms": timing.reference.p90_ms,
            "dense_spread": timing.reference.spread,
            "width_only": {"ratio": width_only.ratio, "low": width_only.low, "high": width_only.high},
            "with_depth": {"ratio": with_depth.ratio, "low": with_depth.low, "high": with_depth.high},
            "rounds": width_only.rounds, "converged": timing.converged, "device": device.get("cpu", "")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="torchvision:resnet18,torchvision:resnet50,torchvision:mobilenet_v2,"
                                            "cifar:resnet56")
    parser.add_argument("--quick", action="store_true", help="each model timed for at most 40 s, not 180 s")
    args = parser.parse_args(argv)
    name = "depth_reach" + ("_quick" if args.quick else "")
    rows = []
    for spec in args.models.split(","):
        rows.append(reach(spec, 40.0 if args.quick else 180.0))
        print(rows[-1], flush=True)
    table = markdown_table(
        ["model", "removable branches", "dense ms (p10-p90)", "fastest width-only / dense", "fastest with depth / dense",
         "rounds"],
        [[r["model"], r["branches"], f"{r['dense_ms']:.3f} ({r['dense_p10_ms']:.3f}-{r['dense_p90_ms']:.3f})",
          f"{r['width_only']['ratio']:.3f} [{r['width_only']['low']:.3f}, {r['width_only']['high']:.3f}]",
          f"{r['with_depth']['ratio']:.3f} [{r['with_depth']['low']:.3f}, {r['with_depth']['high']:.3f}]",
          r["rounds"]] for r in rows])
    summary = ("Latency reach on ort-cpu, batch 1: the fastest plan (every group at its narrowest candidate) as a "
               "paired ratio to the dense model timed in the same rounds, with its 95% interval.\n\n" + table)
    write_result(name, {"rows": rows, "backend": BACKEND}, summary)


if __name__ == "__main__":
    main()
