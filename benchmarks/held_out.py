"""Issue #25's held-out check: ``latprune run --speedup 1.5`` on a CIFAR ResNet whose checkpoint no setting was
tuned on.

``../shared`` holds only the resnet20 and resnet56 checkpoints, and every planner and recovery default was chosen on
them. This suite makes another: a CIFAR ResNet (default resnet44, seed 1) trained from random weights on the 10,000
labelled train images of ``../shared`` (SGD with Nesterov momentum, cosine learning rate, random flips and shifts:
the fine-tuning loop of ``latprune.recovery``), cached in ``benchmarks/.cache``. Then it runs the real command on it,
as a user would: ``latprune run --model cifar:<name> --weights CKPT --speedup 1.5 --calib train --eval test``
(calibration images from the train split the network learnt from; labels never read), and records the dense and
recovered top-1 on the 10,000 test images, the paired speedup with its interval, and minutes per stage.
Goal (#25): recovered top-1 within 4 points of dense, the budget met. The command times the network: run this
alone. Run: ``python -m benchmarks.held_out [--model resnet44] [--seed 1] [--epochs 40] [--speedup 1.5] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import CACHE, CIFAR10, latprune_run, markdown_table, write_result
from latprune.data import evaluate_top1, image_folder, labelled_tensors
from latprune.models.cifar_resnet import cifar_resnet
from latprune.outputs import atomic_path
from latprune.recovery.finetune import FinetuneSettings, finetune

INPUT_SHAPE = (1, 3, 32, 32)


def train_checkpoint(name: str, seed: int, epochs: int, lr: float) -> tuple[Path, dict]:
    """The cached checkpoint of ``name`` trained with ``seed`` for ``epochs`` at ``lr``, trained here when absent."""
    path = CACHE / f"held_out_{name}_seed{seed}_e{epochs}_lr{lr:g}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return path, json.loads(saved["recipe"])
    torch.manual_seed(seed)
    model = cifar_resnet(name)
    images, labels = labelled_tensors(CIFAR10 / "train", "cifar", INPUT_SHAPE)
    settings = FinetuneSettings(epochs=epochs, lr=lr, batch_size=128, seed=seed)
    began = time.perf_counter()
    steps = finetune(model, model, images, labels, settings, progress=True)  # with labels the teacher never runs
    minutes = (time.perf_counter() - began) / 60
    top1 = evaluate_top1(model, image_folder(CIFAR10 / "test", "cifar", INPUT_SHAPE))
    recipe = {"model": name, "seed": seed, "epochs": epochs, "lr": lr, "batch_size": 128, "images": len(images),
              "weight_decay": settings.weight_decay, "train_minutes": round(minutes, 1),
              "final_loss": round(steps.losses[-1], 4), "test_top1": top1}
    CACHE.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # an interrupted save never leaves a checkpoint that looks finished
        torch.save({"state_dict": model.state_dict(), "recipe": json.dumps(recipe)}, tmp)
    return path, recipe


def run_latprune(name: str, checkpoint: Path, speedup: float, out: Path, db: Path) -> dict:
    """``latprune run`` on the checkpoint through the command line; its run record from ``summary.json``."""
    return latprune_run(["--model", f"cifar:{name}", "--weights", str(checkpoint), "--speedup", str(speedup),
                         "--calib", str(CIFAR10 / "train"), "--eval", str(CIFAR10 / "test"), "--db", str(db)], out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet44", help="CIFAR ResNet to train (resnet20|32|44|56|110)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--speedup", type=float, default=1.5)
    parser.add_argument("--db", type=Path, default=CACHE / "held_out.sqlite", help="profile database of the run")
    parser.add_argument("--out", type=Path, default=CACHE / "held_out_run")
    parser.add_argument("--name", default="held_out", help="result name (with --quick: <name>_quick)")
    parser.add_argument("--quick", action="store_true", help="resnet20 trained for 5 epochs (a pipeline check)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.epochs = "resnet20", 5
    name = args.name + ("_quick" if args.quick else "")
    if not CIFAR10.exists():
        parser.error(f"{CIFAR10} is missing: this suite needs ../shared's CIFAR-10 images")
    checkpoint, recipe = train_checkpoint(args.model, args.seed, args.epochs, args.lr)
    print(f"checkpoint {checkpoint}: {recipe}", flush=True)
    began = time.perf_counter()
    run = run_latprune(args.model, checkpoint, args.speedup, args.out, args.db)
    minutes = (time.perf_counter() - began) / 60
    accuracy, latency = run["accuracy"], run["latency"]
    ratio = latency["ratio"]
    gap = 100 * (accuracy["dense"] - accuracy["recovered"])
    row = [f"cifar {args.model} (seed {args.seed})", f"{100 * accuracy['dense']:.2f}",
           f"{100 * accuracy['recovered']:.2f}", f"{gap:.2f}", f"{1 / ratio['ratio']:.3f}",
           f"{ratio['ratio']:.3f} ({ratio['low']:.3f}-{ratio['high']:.3f})",
           f"{latency['dense']['measured_ms']:.2f} ({100 * latency['dense']['spread']:.0f}%)",
           latency["budget_verdict"], len(run["plan"].get("removed") or []), f"{minutes:.1f}"]
    headers = ["network", "dense top-1 %", "recovered %", "gap (points)", "speedup", "ratio (95%)",
               "dense ms (spread)", "budget", "branches removed", "run minutes"]
    goal_met = gap <= 4 and latency["meets_budget"]
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in run["stages_s"].items())
    text = "\n".join([
        f"`latprune run --speedup {args.speedup}` on a CIFAR ResNet trained here ({recipe['images']:,} labelled "
        f"train images of ../shared, {recipe['epochs']} epochs, {recipe['train_minutes']} min), whose checkpoint no "
        "default was tuned on; calibration from the same train split (images it learnt from), top-1 on the 10,000 test "
        "images. Trained on a fifth of CIFAR-10's training set, it scores lower than the checkpoints of ../shared.",
        "",
        markdown_table(headers, [row]), "",
        f"Goal (#25): within 4 points of dense and the budget met: **{'met' if goal_met else 'not met'}** "
        f"({gap:.2f} points). Minutes per stage: {stages}.",
    ])
    write_result(name, {"recipe": recipe, "speedup": args.speedup, "goal_met": goal_met, "gap_points": gap,
                        "minutes": minutes, "run": run}, text)


if __name__ == "__main__":
    main()
