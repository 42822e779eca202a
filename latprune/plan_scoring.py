"""The calibration loss of a plan: what the planner's search minimises.

The dense model is pruned to the plan's kept channels, the fast repair re-estimates its
BatchNorm statistics on the calibration images, and the loss is the KL divergence of the dense
outputs from the pruned ones on the same images (:func:`latprune.planner.damage.output_loss`).
The search's finalists are re-scored with :class:`RepairedLoss`: ridge reconstruction on part of
the images, KL on the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from latprune.analysis import ModelAnalysis
from latprune.batching import forward_in_batches
from latprune.planner.damage import output_loss
from latprune.pruned_file import prune_loaded
from latprune.recovery import recover
from latprune.recovery.batchnorm import recalibrate_batchnorm

DESCRIPTION = "KL(dense || pruned) on the calibration images after BatchNorm recalibration"
REPAIRED_DESCRIPTION = "KL(dense || pruned) on held-out calibration images after ridge reconstruction"
HELD_OUT_SHARE = 0.25  # of the calibration images, scored by RepairedLoss and not fitted on
MIN_REPAIR_IMAGES = 32  # fewer calibration images than this: no repaired re-scoring


class CalibrationLoss:
    """Callable: kept channels per group -> the pruned network's loss after BN recalibration."""

    def __init__(self, analysis: ModelAnalysis, images: torch.Tensor):
        self.analysis, self.images = analysis, images
        analysis.model.eval()
        self.reference = forward_in_batches(analysis.model, images)

    def __call__(self, kept: Mapping[str, Sequence[int]]) -> float:
        pruned = prune_loaded(self.analysis, kept).model
        recalibrate_batchnorm(pruned, self.images)
        return output_loss(self.reference, forward_in_batches(pruned, self.images))


class RepairedLoss:
    """Callable: kept channels per group -> the pruned network's KL on held-out images after ridge reconstruction
    on the rest. Ridge is the cheapest repair that rebuilds weights (a few seconds on cifar resnet20), and held-out
    images keep a plan with more weights to fit from looking better than it is."""

    description = REPAIRED_DESCRIPTION

    def __init__(self, analysis: ModelAnalysis, images: torch.Tensor):
        held = max(1, round(len(images) * HELD_OUT_SHARE))
        self.analysis, self.fit, self.held = analysis, images[:-held], images[-held:]
        analysis.model.eval()
        self.reference = forward_in_batches(analysis.model, self.held)

    @classmethod
    def for_images(cls, analysis: ModelAnalysis, images: torch.Tensor) -> "RepairedLoss | None":
        """The repaired loss on ``images``; None where they are too few to hold some out."""
        return cls(analysis, images) if len(images) >= MIN_REPAIR_IMAGES else None

    def __call__(self, kept: Mapping[str, Sequence[int]]) -> float:
        repaired, _ = recover(self.analysis, prune_loaded(self.analysis, kept), "ridge", self.fit)
        return output_loss(self.reference, forward_in_batches(repaired.model, self.held))
