"""The network at a smaller input size taught its own outputs at its own size, before anything is pruned.

A network trained at one input size sees every object smaller at a smaller one, and its weights and BatchNorm
statistics were fitted to the other scale. ``latprune run --input-size`` plans, prunes and repairs toward the dense
network at the smaller size, so what the size costs stays in every plan. Distilling the network's outputs at its own
size into it at the smaller size, on the unlabeled calibration photos (each photo preprocessed for each size),
recovers part of that cost first: EfficientNet-Lite0 at 176, 1,000 photos, 5 epochs of Adam at 3e-5 with the
BatchNorm statistics frozen: top-1 on the 1,000 sample photos 81.1% -> 82.1% (docs/planning.md). Every parameter
trains (only the BatchNorm affine parameters, or those and the classifier, gained as much in that test); the
BatchNorm statistics stay, because re-estimating them on 800 photos at 176 lost 11 points.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune.batching import forward_in_batches
from latprune.errors import LatpruneError
from latprune.memory_format import channels_last
from latprune.recovery.timebox import StepBox, Steps, cosine_over_box, optimiser_step
from latprune.size_survey import output_agreement


@dataclass(frozen=True)
class AdaptationSettings:
    """Adam on every parameter, the learning rate cosine-decayed over the steps that fit in ``seconds``."""

    epochs: int = 5
    lr: float = 3e-5
    batch_size: int = 50
    flips: bool = True  # each photo mirrored at random (the same photo's reference output holds for its mirror)
    seconds: float | None = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "batch_size": self.batch_size >= 1,
                  "seconds": self.seconds is None or (math.isfinite(self.seconds) and self.seconds > 0)}
        for name, ok in checks.items():
            if not ok:
                raise LatpruneError(f"size adaptation {name} = {getattr(self, name)} is out of range")


@dataclass(frozen=True)
class Adaptation:
    """What adapting did, read on the photos it learned from: the mean KL(reference || network) per photo and the
    share of photos whose top class is the reference's, before and after."""

    images: int
    kl_before: float
    kl_after: float
    agreement_before: float
    agreement_after: float
    steps: Steps
    seconds: float

    def describe(self) -> str:
        return (f"adapted to the model's own outputs on {self.images} calibration photos ({self.steps.done} of "
                f"{self.steps.planned} steps, {self.seconds:.0f} s): KL {self.kl_before:.3f} -> {self.kl_after:.3f}, "
                f"top class as at its own size {100 * self.agreement_before:.1f}% -> {100 * self.agreement_after:.1f}%"
                f" (on the photos it learned from)")

    def to_json(self) -> dict:
        return {"images": self.images, "kl_before": self.kl_before, "kl_after": self.kl_after,
                "agreement_before": self.agreement_before, "agreement_after": self.agreement_after,
                "seconds": round(self.seconds, 2), **self.steps.to_json()}


def adapt_to_reference(model: nn.Module, images: torch.Tensor, reference: torch.Tensor,
                       settings: AdaptationSettings = AdaptationSettings(), progress: bool = False) -> Adaptation:
    """Train ``model`` in place so that its outputs on ``images`` approach ``reference`` (the outputs of the same
    network at its own input size on the same photos). The model stays in eval mode: BatchNorm statistics are
    kept, their affine parameters and every weight train."""
    if len(images) != len(reference):
        raise LatpruneError(f"size adaptation needs one reference output per photo: {len(images)} photos, "
                            f"{len(reference)} outputs")
    began = time.perf_counter()
    model.eval()
    agreement_before, kl_before = output_agreement(reference, forward_in_batches(model, images))
    generator = torch.Generator().manual_seed(settings.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr)
    batches = math.ceil(len(images) / settings.batch_size)
    box = StepBox(settings.epochs * batches, settings.seconds)
    scheduler = cosine_over_box(optimizer, box)
    target = F.log_softmax(reference.float(), dim=1)
    history = []
    bar = tqdm(total=box.total, desc="adapt to size", unit="step", disable=not progress, leave=False)
    with torch.enable_grad(), channels_last(model, example=images) as layout:
        for _ in range(settings.epochs):
            if box.finished:
                break
            losses = []
            for order in torch.randperm(len(images), generator=generator).split(settings.batch_size):
                if box.finished:
                    break
                batch = images[order]
                if settings.flips:
                    mirrored = torch.rand(len(order), generator=generator) < 0.5
                    batch = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
                logits = model(layout(batch))
                loss = F.kl_div(F.log_softmax(logits, 1), target[order], reduction="batchmean", log_target=True)
                losses.append(optimiser_step(loss, optimizer, scheduler, box))
                bar.total = box.total
                bar.update()
            history.append(sum(losses) / max(len(losses), 1))
    bar.close()
    model.eval()
    for parameter in parameters:
        parameter.grad = None
    agreement_after, kl_after = output_agreement(reference, forward_in_batches(model, images))
    return Adaptation(len(images), kl_before, kl_after, agreement_before, agreement_after,
                      Steps(history, box.done, box.planned), time.perf_counter() - began)
