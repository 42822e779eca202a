"""Issue #7: vanilla fine-tuning vs over-parameterised fine-tuning with SP-KD, equal epochs.

cifar resnet56 (shared checkpoint) pruned to a uniform plan at 0.35x of the dense MACs
(l2 importance, widths in steps of 2); fine-tuned with labels on the 10,000 ``train/``
images, SGD + cosine learning rate, the same epochs, batch and learning rate for both:
``finetune`` (cross-entropy) and ``overparam`` (expanded 2x, cross-entropy + SP-KD from the
dense network's stage outputs, merged back exactly). Each from two starts: the pruned
network as it is, and after the best post-training recovery of #6 (two-stage on 1,024
unlabeled images). Accuracy on all 10,000 ``test/`` images.
Run: ``python -m benchmarks.finetune [--epochs 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import CIFAR10, SHARED, markdown_table, write_result
from benchmarks.recovery import CHECKPOINTS, test_tensors, top1, uniform_for_macs
from latprune.data import calibration_tensor, image_folder
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.pruned_file import prune_loaded
from latprune.recovery import FinetuneSettings, recover
from latprune.surgery import count_parameters


def train_tensors(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = image_folder(CIFAR10 / "train", "cifar", (1, 3, 32, 32))
    images, labels = zip(*torch.utils.data.DataLoader(dataset, batch_size=500, num_workers=2))
    images, labels = torch.cat(images), torch.cat(labels)
    if limit:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:limit]
        images, labels = images[keep], labels[keep]
    return images, labels


def run(arch: str, level: float, epochs: int, quick: bool) -> None:
    torch.manual_seed(0)
    test_images, test_labels = test_tensors(1000 if quick else None)
    train_images, train_labels = train_tensors(1000 if quick else None)
    loaded = load_model(f"cifar:{arch}", weights=str(SHARED / "models" / "cifar10" / CHECKPOINTS[arch]))
    calib = calibration_tensor(CIFAR10 / "train", "cifar", loaded.input_shape,
                               size=256 if quick else 1024, seed=0)
    analysis = analyse(loaded)
    plan, macs = uniform_for_macs(analysis, level, step=2)
    pruned = prune_loaded(analysis, plan.kept())
    dense_top1 = top1(loaded.model, test_images, test_labels)
    tuning = FinetuneSettings(epochs=epochs)
    label = f"{level:g}x MACs (keep {plan.solver['ratio']:.2f}, {macs:.3f}x)"
    starts = {"pruned + bn": recover(analysis, pruned, "bn", calib)[0],
              "two-stage": recover(analysis, pruned, "two-stage", calib)[0]}
    rows, records = [], []
    for start_name, start in starts.items():
        start_top1 = top1(start.model, test_images, test_labels)
        for method in ("finetune", "overparam"):
            began = time.perf_counter()
            tuned, report = recover(analysis, start, method, train_images, labels=train_labels, tuning=tuning,
                                    progress=True)
            seconds = time.perf_counter() - began
            accuracy = top1(tuned.model, test_images, test_labels)
            records.append({
                "model": arch, "pruning": label, "start": start_name, "start_top1": round(start_top1, 4),
                "method": method, "epochs": epochs, "top1": round(accuracy, 4), "dense_top1": round(dense_top1, 4),
                "seconds": round(seconds, 1), "train_images": len(train_images),
                "parameters": count_parameters(tuned.model), "pruned_parameters": count_parameters(pruned.model),
                "loss": report.steps[-1]["loss"], "settings": vars(tuning),
            })
            rows.append([arch, start_name, f"{100 * start_top1:.2f}", method, epochs, f"{100 * accuracy:.2f}",
                         f"{100 * (accuracy - start_top1):+.2f}", f"{seconds:.0f}"])
            table = markdown_table(["model", "start", "start top-1 %", "fine-tune", "epochs", "top-1 %",
                                    "gain (points)", "seconds"], rows)
            header = (f"{label}; dense top-1 {100 * dense_top1:.2f}%. Fine-tuning with labels on {len(train_images)} "
                      f"train images (lr {tuning.lr}, batch {tuning.batch_size}, SGD + cosine, flips and shifts); "
                      f"overparam: expansion {tuning.expansion}x, SP-KD beta {tuning.sp_beta:g} on the stage "
                      f"outputs. Accuracy on {len(test_images)} test images.\n\n")
            write_result("finetune" + ("_quick" if quick else ""), {"quick": quick, "rows": records}, header + table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56", choices=sorted(CHECKPOINTS))
    parser.add_argument("--level", type=float, default=0.35, help="MACs of the uniform plan, fraction of dense")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="resnet20, 1 epoch on 1,000 images, 1,000 test images")
    args = parser.parse_args(argv)
    if args.quick:
        run("resnet20", args.level, 1, True)
    else:
        run(args.model, args.level, args.epochs, False)


if __name__ == "__main__":
    main()
