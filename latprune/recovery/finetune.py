"""Short fine-tuning of a pruned network, optionally with similarity-preserving distillation.

The loss is cross-entropy when labels are given, otherwise distillation of the dense
network's logits (KL divergence at temperature ``temperature``, scaled by its square), so
fine-tuning works from unlabeled images too. Similarity-preserving KD (Tung & Mori 2019)
adds, for each chosen layer, ``beta * ||G_dense - G_pruned||_F^2 / b^2`` where ``G = A A^T``
over the batch (activations flattened per image), rows L2-normalised: it matches which
images look alike to a layer, so widths may differ between the networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune.errors import LatpruneError
from latprune.memory_format import channels_last
from latprune.recovery.taps import capture_outputs, forward_once
from latprune.recovery.timebox import StepBox, Steps, cosine_over_box, optimiser_step


@dataclass
class FinetuneSettings:
    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sp_beta: float = 3000.0
    temperature: float = 4.0
    expansion: int = 2
    augment: bool = True
    seed: int = 0
    seconds: float | None = None  # wall-time box: the steps that fit, the learning rate decayed over those

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "batch_size": self.batch_size >= 2,
                  "expansion": self.expansion >= 1, "sp_beta": self.sp_beta >= 0, "temperature": self.temperature > 0,
                  "seconds": self.seconds is None or (math.isfinite(self.seconds) and self.seconds > 0)}
        for name, ok in checks.items():
            if not ok:
                raise LatpruneError(f"fine-tuning {name} = {getattr(self, name)} is out of range")


def similarity_matrix(activations: torch.Tensor) -> torch.Tensor:
    """``A A^T`` over the batch with rows L2-normalised (A: one flattened activation per image)."""
    flat = activations.reshape(activations.shape[0], -1)
    return F.normalize(flat @ flat.T, p=2, dim=1)


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||G_teacher - G_student||_F^2 / b^2`` for one layer's activations."""
    batch = student.shape[0]
    return (similarity_matrix(teacher) - similarity_matrix(student)).pow(2).sum() / batch**2


def stage_outputs(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """For each spatial resolution, the module that finishes last at it (e.g. a ResNet's stages).

    These are the layers whose activations similarity-preserving KD compares: the ends of
    the network's stages, found from one forward pass (containers included, the root and
    globally pooled 1x1 maps excluded).
    """
    finished: list[tuple[str, tuple[int, ...]]] = []

    def record_for(name):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                finished.append((name, tuple(output.shape[2:])))

        return record

    hooks = [m.register_forward_hook(record_for(n)) for n, m in model.named_modules() if n]
    try:
        forward_once(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    last_at: dict[tuple[int, ...], str] = {}
    for name, size in finished:
        last_at.pop(size, None)  # keep the order of each resolution's last finisher
        last_at[size] = name
    return list(last_at.values())


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random shifts of up to 1/8 of the image (zero padding)."""
    flip = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    height, width = batch.shape[2:]
    pad_h, pad_w = height // 8, width // 8
    padded = F.pad(batch, (pad_w, pad_w, pad_h, pad_h))
    dy = int(torch.randint(0, 2 * pad_h + 1, (), generator=generator))
    dx = int(torch.randint(0, 2 * pad_w + 1, (), generator=generator))
    return padded[:, :, dy:dy + height, dx:dx + width]


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    settings: FinetuneSettings,
    sp_layers: Sequence[str] = (),
    progress: bool = False,
) -> Steps:
    """SGD (momentum, learning rate cosine-decayed over the steps planned) on ``student``; the mean loss per
    epoch and the steps done. Within ``settings.seconds`` the steps that fit are planned after the second one,
    and the decay follows them, so a boxed run still ends at a small learning rate.

    ``teacher`` (the dense network) stays in eval mode; the student trains in train mode,
    so its BatchNorms use batch statistics.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=True)
    steps_per_epoch = len(images) // settings.batch_size + (len(images) % settings.batch_size >= 2)
    box = StepBox(settings.epochs * steps_per_epoch, settings.seconds)
    scheduler = cosine_over_box(optimizer, box)
    teacher.eval()
    needs_teacher = labels is None or bool(sp_layers)
    history = []
    bar = tqdm(total=box.total, desc="fine-tune", unit="step", disable=not progress, leave=False)
    with (channels_last(student, teacher, example=images) as layout,
          capture_outputs(student, sp_layers) as got, capture_outputs(teacher, sp_layers) as want):
        for _ in range(settings.epochs):
            if box.finished:
                break
            student.train()
            losses = []
            for order in torch.randperm(len(images), generator=generator).split(settings.batch_size):
                if box.finished:
                    break
                if len(order) < 2:
                    continue  # a batch of one cannot train BatchNorm
                batch = images[order]
                if settings.augment:
                    batch = augment(batch, generator)
                batch = layout(batch)
                with torch.no_grad():
                    teacher_logits = teacher(batch) if needs_teacher else None
                logits = student(batch)
                if labels is not None:
                    loss = F.cross_entropy(logits, labels[order])
                else:
                    t = settings.temperature
                    loss = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                                    reduction="batchmean", log_target=True) * t * t
                for name in sp_layers:
                    loss = loss + settings.sp_beta * similarity_loss(got[name], want[name])
                losses.append(optimiser_step(loss, optimizer, scheduler, box))
                bar.total = box.total
                bar.update()
            history.append(sum(losses) / max(len(losses), 1))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    student.eval()
    return Steps(history, box.done, box.planned)
