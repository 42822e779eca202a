"""Issue #29: what EfficientNet-Lite0's input resolution buys, next to width pruning (ort-cpu, paired ratios).

1. The dense network with its input resized inside (bilinear, from the 224x224 it is given: its input and
   preprocessing stay as they are) to each of ``--sizes``: top-1 on the 1,000 ``imagenet-sample`` photos.
2. With ``--plan`` (a plan made at 224, e.g. ``latprune plan --speedup 1.14 --objective calibrated``) and
   ``--plan-size S``: the plan pruned from the network loaded at SxS, two-stage in ``latprune run``'s time box on
   the 1,000 ``imagen-calib`` photos resized to S, top-1 with the same resize inside.
3. Every network above, and ``--compare`` (a pruned file, e.g. ``latprune run --speedup 1.5``'s), timed
   in the same shuffled rounds as the dense network at 224: each one's paired ratio to it.

No recovery or profile of latprune knows the resized networks: this measures whether resolution should become a
dimension of the plan. Run: ``python -m benchmarks.imagenet_resolution [--sizes 224,208,192,176,160]
[--plan PLAN --plan-size 192] [--compare PRUNED ...] [--name imagenet_resolution]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import markdown_table, write_result
from benchmarks.imagenet import CALIB, SAMPLE, SPEC
from benchmarks.recovery import top1
from latprune import pipeline
from latprune.analysis import as_analysis
from latprune.data import calibration_tensor, labelled_tensors
from latprune.defaults import RECOVERY_SECONDS
from latprune.planner.plan import Plan
from latprune.pruned_file import load_pruned
from latprune.recovery.pipeline import recover
from latprune.recovery.reconstruction import ReconstructionSettings


class InputResize(nn.Module):
    """``network`` fed its input resized to ``size`` x ``size`` (bilinear; exported to ONNX as a Resize)."""

    def __init__(self, network: nn.Module, size: int):
        super().__init__()
        self.network, self.size = network, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(resize(x, self.size))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` at ``size`` x ``size`` (bilinear; as they are when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Many ``images`` resized as :class:`InputResize` resizes them, in batches."""
    return torch.cat([resize(b, size) for b in images.split(100)])


def pruned_at_size(plan: Plan, size: int, calib: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[nn.Module, dict]:
    """The plan pruned from the network loaded at ``size``, repaired by two-stage in the time box on ``calib``
    resized to ``size``; the network (taking ``size`` x ``size`` input) and its row."""
    shape = [1, 3, size, size]
    analysis = as_analysis(pipeline.load(SPEC, input_shape=shape))
    pruned = pipeline.prune(analysis, dataclasses.replace(plan, input_shape=shape))  # its widths, at this size
    before = top1(pruned.model, resized(images, size), labels)
    began = time.perf_counter()
    repaired, report = recover(analysis, pruned, "two-stage", resized(calib, size),
                               ReconstructionSettings(seconds=RECOVERY_SECONDS))
    seconds = time.perf_counter() - began
    after = top1(repaired.model, resized(images, size), labels)
    row = {"network": f"plan at {size}", "size": size, "macs_fraction_of_plan": plan.macs / plan.dense_macs,
           "top1_before_recovery": before, "top1": after, "recovery_seconds": round(seconds, 1),
           "recovery": report.to_dict()}
    return repaired.model.eval(), row


def compared_row(path: str, images: torch.Tensor, labels: torch.Tensor, networks: dict[str, nn.Module]) -> dict:
    """A pruned file's row; one made at a lower input size (``--input-shape``, with ``--resize`` keeping the field
    of view) is fed the 224 images resized inside, as its own preprocessing would have sized them."""
    pruned = load_pruned(path, SPEC)
    size = pruned.input_shape[-1]
    network = pruned.model.eval() if size == images.shape[-1] else InputResize(pruned.model.eval(), size)
    name = f"pruned file {path}"
    networks[name] = network
    return {"network": name, "size": size, "top1": top1(network, images, labels)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,208,192,176,160")
    parser.add_argument("--plan", help="a plan file made at 224 (latprune plan)")
    parser.add_argument("--plan-size", type=int, default=192)
    parser.add_argument("--compare", action="append", default=[], help="a pruned file to time in the same rounds "
                        "(repeatable)")
    parser.add_argument("--name", default="imagenet_resolution")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    dense = pipeline.load(SPEC)
    images, labels = labelled_tensors(SAMPLE, dense.preprocessing, dense.input_shape)
    rows, networks = [], {}
    for size in (int(s) for s in args.sizes.split(",")):
        network = dense.model if size == dense.input_shape[-1] else InputResize(dense.model, size)
        rows.append({"network": f"dense at {size}", "size": size, "top1": top1(network, images, labels)})
        networks[rows[-1]["network"]] = network
        print(json.dumps(rows[-1]), flush=True)
    if args.plan:
        calib = calibration_tensor(CALIB, dense.preprocessing, dense.input_shape, size=1000, seed=0)
        with open(args.plan) as f:
            plan = Plan.from_json(json.load(f), args.plan)
        model, row = pruned_at_size(plan, args.plan_size, calib, images, labels)
        rows.append(row)
        networks[row["network"]] = InputResize(model, args.plan_size)
        print(json.dumps({k: v for k, v in row.items() if k != "recovery"}), flush=True)
    for path in args.compare:
        rows.append(compared_row(path, images, labels, networks))
    timing, device = pipeline.measure_against_dense(dense.model, list(networks.values()), dense.input_shape,
                                                    "ort-cpu")
    ratios = dict(zip(networks, timing.ratios))
    for row in rows:
        ratio = ratios[row["network"]]
        row.update(ratio=ratio.ratio, ratio_low=ratio.low, ratio_high=ratio.high, ratio_rounds=ratio.rounds)
    table = markdown_table(
        ["network", "top-1 (%)", "latency / dense at 224 (95%)", "rounds"],
        [[r["network"], f"{100 * r['top1']:.1f}", f"{r['ratio']:.3f} ({r['ratio_low']:.3f}-{r['ratio_high']:.3f})",
          r["ratio_rounds"]] for r in rows])
    summary = (f"EfficientNet-Lite0 on ort-cpu, batch 1; dense {timing.reference.median_ms:.2f} ms, round spread "
               f"{100 * timing.reference.spread:.0f}%, {len(timing.reference.rounds)} rounds "
               f"({timing.slow_state_rounds} slow-state rounds left out). Top-1 on the 1,000 sample photos "
               f"(about +-1.5 points of sampling error).\n\n{table}\n\n{time.perf_counter() - began:.0f} s in all.")
    write_result(args.name, {"rows": rows, "device": device, "dense_ms": timing.reference.median_ms,
                             "dense_round_spread": timing.reference.spread, "plan": args.plan,
                             "compare": args.compare}, summary)


if __name__ == "__main__":
    main()
