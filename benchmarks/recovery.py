"""Issue #6: post-training recovery on real CIFAR-10 (shared checkpoints), no labels used.

(a) structured: uniform plans at 0.5x and 0.35x of the dense MACs (l2 importance, widths
    in steps of 4); recipes none / bn / layerwise / asr / two-stage / two-stage+asr, plus
    the closed-form ridge and ridge+asr.
(b) unstructured: global magnitude sparsity 50/70/80/90%; none / bn / layerwise / asr.

Calibration: 1,024 images from ``train/`` (seed 0); accuracy on all 10,000 ``test/`` images.
Each row records the recovery's wall time. Results are rewritten after every row.
Run: ``python -m benchmarks.recovery [--suite structured|unstructured|all] [--models resnet20,resnet56] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import SHARED, markdown_table, write_result
from latprune.data import calibration_tensor, image_folder
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.planner.api import prepare, uniform_plan
from latprune.planner.widths import WidthPolicy
from latprune.pruned_file import PrunedModel, prune_loaded
from latprune.recovery import recover
from latprune.sparsity import global_magnitude_sparsify, weight_sparsity
from latprune.surgery import count_parameters

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
STRUCTURED = ["none", "bn", "layerwise", "asr", "two-stage", "two-stage+asr", "ridge", "ridge+asr"]
UNSTRUCTURED = ["none", "bn", "layerwise", "asr"]
MACS_LEVELS = [0.5, 0.35]
SPARSITIES = [0.5, 0.7, 0.8, 0.9]


def test_tensors(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = image_folder(SHARED / "data" / "cifar10-jpeg" / "test", "cifar", (1, 3, 32, 32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=500, num_workers=2)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    if limit:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
        images, labels = images[keep], labels[keep]
    return images, labels


def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(images[i:i + 500]).argmax(1) for i in range(0, len(images), 500)])
    return float((predictions == labels).float().mean())


def uniform_for_macs(analysis, level: float, step: int = 4):
    """The largest uniform keep ratio (widths in multiples of ``step``) whose MACs are at most ``level`` x dense."""
    inputs = prepare(analysis, "l2", policy=WidthPolicy(step=step))
    dense = inputs.macs.cost_of_widths(inputs.full_widths)
    low, high = 0.01, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        plan = uniform_plan(inputs, mid)
        if inputs.macs.cost_of_widths([plan.widths()[g.id] for g in inputs.groups]) <= level * dense:
            low = mid
        else:
            high = mid
    plan = uniform_plan(inputs, low)
    return plan, inputs.macs.cost_of_widths([plan.widths()[g.id] for g in inputs.groups]) / dense


def run(suite: str, models: list[str], quick: bool) -> None:
    torch.manual_seed(0)
    images, labels = test_tensors(1000 if quick else None)
    rows, records = [], []
    name = ("recovery" if suite == "all" else f"recovery_{suite}") + ("_quick" if quick else "")
    for arch in models:
        loaded = load_model(f"cifar:{arch}", weights=str(SHARED / "models" / "cifar10" / CHECKPOINTS[arch]))
        calib = calibration_tensor(SHARED / "data" / "cifar10-jpeg" / "train", "cifar", loaded.input_shape,
                                   size=256 if quick else 1024, seed=0)
        dense_top1 = top1(loaded.model, images, labels)
        analysis = analyse(loaded)
        cases = []
        if suite in ("structured", "all"):
            for level in MACS_LEVELS:
                plan, macs = uniform_for_macs(analysis, level)
                pruned = prune_loaded(analysis, plan.kept())
                label = f"{level:g}x MACs (keep {plan.solver['ratio']:.2f}, {macs:.3f}x)"
                cases.append(("structured", label, pruned, STRUCTURED))
        if suite in ("unstructured", "all"):
            for sparsity in SPARSITIES:
                model = copy.deepcopy(loaded.model)
                global_magnitude_sparsify(model, sparsity)
                pruned = PrunedModel(model, loaded.spec, loaded.input_shape, {}, loaded.family,
                                     {"sparsity": sparsity})
                cases.append(("unstructured", f"{weight_sparsity(model):.0%} sparse", pruned, UNSTRUCTURED))
        for kind, label, pruned, recipes in cases:
            for recipe in recipes:
                started = time.perf_counter()
                recovered, report = recover(analysis, pruned, recipe, calib)
                seconds = time.perf_counter() - started
                accuracy = top1(recovered.model, images, labels)
                record = {
                    "model": arch, "kind": kind, "pruning": label, "recipe": recipe,
                    "top1": round(accuracy, 4), "dense_top1": round(dense_top1, 4),
                    "drop_points": round(100 * (dense_top1 - accuracy), 2),
                    "recovery_s": round(seconds, 1), "calibration_images": len(calib),
                    "tap_error_before": round(report.error_before, 4), "tap_error_after": round(report.error_after, 4),
                    "parameters": count_parameters(recovered.model), "steps": report.steps,
                }
                records.append(record)
                rows.append([arch, label, recipe, f"{100 * accuracy:.2f}", f"{record['drop_points']:.2f}",
                             f"{seconds:.1f}", f"{report.error_before:.2f} -> {report.error_after:.2f}"])
                table = markdown_table(["model", "pruning", "recovery", "top-1 %", "drop (points)", "recovery s",
                                        "tap error"], rows)
                header = (f"Calibration: {len(calib)} unlabeled train images; accuracy on {len(images)} test images. "
                          "Tap error: summed relative squared error of every layer output against the dense "
                          "network's (kept channels), on the calibration images.\n\n")
                write_result(name, {"quick": quick, "rows": records}, header + table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["structured", "unstructured", "all"], default="all")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--quick", action="store_true", help="256 calibration and 1,000 test images")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.suite, [m.strip() for m in args.models.split(",") if m.strip()], args.quick)


if __name__ == "__main__":
    main()
