"""How many optimiser steps fit in a wall-time box, judged from the steps' own pace."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Steps:
    """What a run of optimiser steps did: the mean loss per epoch (the last one maybe partial), and the steps
    done out of those its epochs hold (fewer within a time box)."""

    losses: list[float]
    done: int
    planned: int

    def to_json(self) -> dict:
        return {"loss": [round(v, 5) for v in self.losses], "steps": self.done, "steps_planned": self.planned}


class StepBox:
    """Steps planned within ``seconds`` (None: all ``planned``). The first step warms up (allocations, caches);
    after each of the steps 2 to ``JUDGED_STEPS``, only the steps that fit in what is left of the box at the median
    pace of the steps so far (the first left out) stay planned. One slow second step no longer sets the pace: in a
    Lite0 run it left 72 s of phase 1's 300 s unused. Judged early only, so that what depends on the planned total
    (phase 1's removal decay, the fine-tune's cosine schedule) sees it settled within a few steps."""

    JUDGED_STEPS = 5

    def __init__(self, planned: int, seconds: float | None):
        self.planned = self.total = max(planned, 1)
        self.seconds = seconds
        self.done = 0
        self.began = self.last = time.perf_counter()
        self.paces: list[float] = []

    def step_done(self) -> int:
        """Count a finished step; returns the steps now planned in all."""
        self.done += 1
        if self.seconds is not None and self.done <= self.JUDGED_STEPS:
            now = time.perf_counter()
            if self.done == 1:
                self.total = 1 if now - self.began >= self.seconds else self.total
            elif self.total > 1:
                self.paces.append(now - self.last)
                fit = int((self.began + self.seconds - now) / max(statistics.median(self.paces), 1e-9))
                self.total = min(self.planned, self.done + max(fit, 0))
            self.last = now
        return self.total

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, box: StepBox) -> float:
    """One optimiser step on ``loss``, counted in ``box`` before the scheduler steps (a schedule over ``box.total``
    sees the steps now planned); the loss's value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    box.step_done()
    scheduler.step()
    return float(loss.detach())


def cosine_over_box(optimizer: torch.optim.Optimizer, box: StepBox) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate cosine-decayed to 0 over the steps ``box`` plans (read at each step, so a boxed run that
    plans fewer steps still ends at a small learning rate)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / box.total, 1.0))))
