"""The calibration loss of a plan: what the planner's search minimises.

The dense model is pruned to the plan's kept channels, the fast repair re-estimates its
BatchNorm statistics on the calibration images, and the loss is the KL divergence of the dense
outputs from the pruned ones on the same images (:func:`latprune.planner.damage.output_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from latprune.analysis import ModelAnalysis
from latprune.batching import forward_in_batches
from latprune.planner.damage import output_loss
from latprune.pruned_file import prune_loaded
from latprune.recovery.batchnorm import recalibrate_batchnorm

DESCRIPTION = "KL(dense || pruned) on the calibration images after BatchNorm recalibration"


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
