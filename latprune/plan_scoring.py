"""The calibration loss of a plan: what the planner's search minimises.

The dense model is pruned to the plan's kept channels, the fast repair re-estimates its
BatchNorm statistics on the calibration images, and the loss is the KL divergence of the dense
outputs from the pruned ones on the same images (:func:`latprune.planner.damage.output_loss`).
The search's finalists are re-scored with :class:`RepairedLoss`: ridge reconstruction on part of
the images, and on the others the share whose top class differs from the dense model's. Top-class
disagreement, not KL, because KL is dominated by the images the pruned network gets confidently
wrong: over 12 plans of cifar resnet56 at 2x predicted (``benchmarks.plan_proxy``) the finalists'
held-out KL ranked plans by top-1 after two-stage at Spearman -0.86 (-0.83 on 1,024 images) and
picked a 73.4% plan; disagreement on 1,024 images (256 held out) ranked them at -0.91 and picked
74.7% (best 76.0%). On 64 held-out images one image is 1.6 points, so the finalists get every
calibration image the caller has, up to :data:`FINALIST_IMAGES`; the search's fast loss keeps
the first :data:`~latprune.defaults.IMPORTANCE_CALIB_SIZE`.

Ridge still ranks plans of different structures (depth only, depth and width) wrongly: at cifar resnet56 0.5x it
put a depth-and-width plan ahead of the depth-only one (0.180 vs 0.246) and two-stage reversed them (74.3% vs
75.0%, ``pareto_avx512_disagree``). Where the caller has images beyond those recovery fits on, the search's last
stage (:class:`RecoveredLoss`) runs the user's own recovery on the best plan of each structure and scores it on
those other images: the one proxy that ranked all 58 pairs of plans right in ``benchmarks.plan_proxy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from latprune.analysis import ModelAnalysis
from latprune.batching import forward_in_batches
from latprune.defaults import IMPORTANCE_CALIB_SIZE, MIN_SELECTION_IMAGES, SELECTION_IMAGES
from latprune.planner.api import PlanningInputs
from latprune.planner.damage import DAMAGE_IMAGES, measure_damage, output_loss
from latprune.planner.search import CalibratedSearch
from latprune.pruned_file import prune_loaded
from latprune.recovery import ReconstructionSettings, parse_recipe, recover
from latprune.recovery.batchnorm import recalibrate_batchnorm
from latprune.settings import PlanSettings, SelectionSettings

DESCRIPTION = "KL(dense || pruned) on the calibration images after BatchNorm recalibration"
REPAIRED_DESCRIPTION = ("share of held-out calibration images whose top class differs from the dense model's, "
                        "after ridge reconstruction")
FINALIST_IMAGES = 1024  # most calibration images RepairedLoss fits on and holds out
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


def disagreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """The share of images whose top class in ``output`` differs from ``reference``'s, for class scores;
    :func:`output_loss` for any other output (a single score or a feature map has no top class)."""
    if reference.dim() != 2 or reference.shape[1] < 2:
        return output_loss(reference, output)
    return float((output.argmax(1) != reference.argmax(1)).double().mean())


class RepairedLoss:
    """Callable: kept channels per group -> the pruned network's top-class :func:`disagreement` with the dense
    model on held-out images after ridge reconstruction on the rest. Ridge is the cheapest repair that rebuilds
    weights (a few seconds on cifar resnet20), and held-out images keep a plan with more weights to fit from
    looking better than it is. Plans that tie are told apart by the search (its fast loss). Layers that pad with a
    child module are left as they are (EfficientNet-Lite0's depthwise layers: refitting them doubled the repair's
    60 s per plan)."""

    description = REPAIRED_DESCRIPTION

    def __init__(self, analysis: ModelAnalysis, images: torch.Tensor):
        images = images[:FINALIST_IMAGES]
        held = max(1, round(len(images) * HELD_OUT_SHARE))
        self.analysis, self.fit, self.held = analysis, images[:-held], images[-held:]
        analysis.model.eval()
        self.reference = forward_in_batches(analysis.model, self.held)

    @classmethod
    def for_images(cls, analysis: ModelAnalysis, images: torch.Tensor) -> "RepairedLoss | None":
        """The repaired loss on ``images``; None where they are too few to hold some out."""
        return cls(analysis, images) if len(images) >= MIN_REPAIR_IMAGES else None

    def __call__(self, kept: Mapping[str, Sequence[int]]) -> float:
        repaired, _ = recover(self.analysis, prune_loaded(self.analysis, kept), "ridge", self.fit,
                              ReconstructionSettings(padded_layers=False), scoring=True)
        return disagreement(self.reference, forward_in_batches(repaired.model, self.held))


class RecoveredLoss:
    """Callable: kept channels per group -> the pruned network's top-class :func:`disagreement` with the dense model
    on images recovery never saw, after the recovery the user will run (``selection.recipe``) on recovery's own
    images (the first ``selection.fit_images``). About 75 s per plan for two-stage on cifar resnet56, so the search
    runs it on a few plans only."""

    def __init__(self, analysis: ModelAnalysis, images: torch.Tensor, selection: SelectionSettings):
        fit = selection.fit_images
        self.analysis, self.selection = analysis, selection
        self.fit, self.held = images[:fit], images[fit:fit + SELECTION_IMAGES]
        analysis.model.eval()
        self.reference = forward_in_batches(analysis.model, self.held)
        self.description = (f"share of {len(self.held)} calibration images recovery did not fit on whose top class "
                            f"differs from the dense model's, after {selection.recipe} on the first {len(self.fit)}")

    @classmethod
    def for_images(cls, analysis: ModelAnalysis, images: torch.Tensor | None,
                   selection: SelectionSettings) -> "RecoveredLoss | None":
        """The recovered loss on ``images``; None without a recipe or with fewer than ``MIN_SELECTION_IMAGES``
        images beyond recovery's."""
        if images is None or not selection.recipe or not parse_recipe(selection.recipe):
            return None
        if len(images) - selection.fit_images < MIN_SELECTION_IMAGES:
            return None
        return cls(analysis, images, selection)

    def __call__(self, kept: Mapping[str, Sequence[int]]) -> float:
        recovered, _ = recover(self.analysis, prune_loaded(self.analysis, kept), self.selection.recipe, self.fit,
                               ReconstructionSettings(seconds=self.selection.seconds), scoring=True)
        return disagreement(self.reference, forward_in_batches(recovered.model, self.held))


def scoring_images(calib: torch.Tensor | None) -> torch.Tensor | None:
    """The calibration images importance and the search's own loss score: the first ``IMPORTANCE_CALIB_SIZE``."""
    return None if calib is None else calib[:IMPORTANCE_CALIB_SIZE]


def calibrated_search(inputs: PlanningInputs, settings: PlanSettings, calib: torch.Tensor | None,
                      progress: bool = True) -> CalibratedSearch:
    """The calibrated objective of a model: its damage table (measured or cached), :class:`CalibrationLoss` on
    the :func:`scoring_images` of ``calib``, the finalists' :class:`RepairedLoss` on up to ``FINALIST_IMAGES`` and,
    with images beyond recovery's, the last stage's :class:`RecoveredLoss`."""
    settings.check_images(calib is not None)
    analysis = inputs.analysis
    damage = measure_damage(analysis.model, analysis.spec, inputs.groups, analysis.layout, inputs.scores,
                            inputs.macs.candidates, calib[:DAMAGE_IMAGES], cache_dir=settings.cache_dir,
                            progress=progress)
    return CalibratedSearch(damage, CalibrationLoss(analysis, scoring_images(calib)), settings.search, progress,
                            DESCRIPTION, repaired=RepairedLoss.for_images(analysis, calib),
                            recovered=RecoveredLoss.for_images(analysis, calib, settings.selection))
