"""What a request asks of the pipeline, checked when it is made (before any slow stage runs): how to plan,
whether the plan is verified on the device, and how the pruned network is recovered."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from latprune.budget import BudgetRequest
from latprune.defaults import (DEFAULT_RECOVERY, OBJECTIVES, PLANNERS, RECOVERY_CALIB_SIZE, RECOVERY_SECONDS,
                               SELECTION_IMAGES)
from latprune.errors import LatpruneError
from latprune.groups import ChannelGroup
from latprune.models import LoadedModel
from latprune.planner.closed_loop import LoopSettings
from latprune.planner.search import SearchSettings
from latprune.planner.widths import WidthPolicy
from latprune.profiler.api import ProfileSettings
from latprune.recovery import FINETUNES, FinetuneSettings, parse_recipe


@dataclass(frozen=True)
class SelectionSettings:
    """The recovery the calibrated search's last stage runs on its finalists, the one the user will run: fitted on
    the first ``fit_images`` calibration images (recovery's), scored on up to ``SELECTION_IMAGES`` after them.
    ``recipe`` None: no such stage. Post-training recipes only (a fine-tune per finalist would take hours)."""

    recipe: str | None = DEFAULT_RECOVERY
    fit_images: int = RECOVERY_CALIB_SIZE
    seconds: float | None = RECOVERY_SECONDS  # each training step's time box, as the recovery's

    def __post_init__(self) -> None:
        if self.recipe is not None and any(step in FINETUNES for step in parse_recipe(self.recipe)):
            raise LatpruneError(f"the search's finalists are recovered post-training only, not by {self.recipe!r}")
        if self.fit_images < 1:
            raise LatpruneError(f"the recovery's image count must be at least 1, got {self.fit_images}")

    @classmethod
    def for_recipe(cls, recipe: str, fit_images: int | None, seconds: float | None) -> "SelectionSettings":
        """The selection for a recovery recipe: its post-training steps before any fine-tune (None when none)."""
        steps = parse_recipe(recipe)
        before = steps[:next((i for i, s in enumerate(steps) if s in FINETUNES), len(steps))]
        return cls("+".join(before) or None, fit_images or RECOVERY_CALIB_SIZE, seconds)

    @property
    def images(self) -> int:
        """How many calibration images the search can use beyond recovery's."""
        return SELECTION_IMAGES if self.recipe else 0


@dataclass(frozen=True)
class PlanSettings:
    """How to plan: method, importance criterion, width grid and solver resolution."""

    method: str = "latency"
    importance: str = "l2"
    widths: str = "aligned"  # "aligned" to the profile's step, or "any"
    step: int | None = None  # alignment step; None: the profile's detected step
    min_width: float = 0.1
    bins: int = 2000
    max_macs: float | None = None
    hold: tuple[str, ...] = ()  # group ids kept at full width; "channel-ops": every group crossing one
    objective: str = "importance"  # or "calibrated": the damage-model DP searched on calibration loss
    search: SearchSettings = field(default_factory=SearchSettings)
    cache_dir: str | os.PathLike | None = None  # damage tables; None: $LATPRUNE_CACHE or the user cache
    depth: bool = True  # residual branches may be removed whole (width 0 of their inner groups)
    selection: SelectionSettings = field(default_factory=SelectionSettings)  # the search's recovered last stage

    def __post_init__(self) -> None:
        if self.method not in PLANNERS:
            raise LatpruneError(f"unknown planning method {self.method!r}; choose one of {', '.join(PLANNERS)}")
        if self.objective not in OBJECTIVES:
            raise LatpruneError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "calibrated" and self.method != "latency":
            raise LatpruneError("the calibrated objective applies to the latency planner only")
        if self.max_macs is not None and self.method != "latency":
            raise LatpruneError("--max-macs applies to the latency planner only")

    @classmethod
    def for_request(cls, has_images: bool, importance: str | None = None, objective: str | None = None,
                    **options) -> "PlanSettings":
        """The settings every command and the job plan with. Where not given: with calibration images,
        data-driven importance (taylor) and, for the latency planner, the calibrated objective; without them,
        l2 importance and summed importance. Refused before any slow stage when the images are needed and absent."""
        method = options.get("method", "latency")
        importance = importance or ("taylor" if has_images else "l2")
        objective = objective or ("calibrated" if has_images and method == "latency" else "importance")
        settings = cls(importance=importance, objective=objective, **options)
        settings.check_images(has_images)
        return settings

    def check_images(self, has_images: bool) -> None:
        """The calibrated objective plans on data: refuse it, before any slow stage, when no images are given."""
        if self.objective == "calibrated" and not has_images:
            raise LatpruneError("--objective calibrated needs unlabeled calibration images: --calib DIR "
                                "(or --objective importance)")

    @property
    def extra_images(self) -> int:
        """Calibration images beyond recovery's the search's last stage reads: none when it is off (no recipe, or
        fewer than 2 plans to recover)."""
        return self.selection.images if self.search.recovered > 1 else 0

    def policy(self, profile_step: int | None, groups: Sequence[ChannelGroup] = ()) -> WidthPolicy:
        return WidthPolicy(step=self.step or profile_step or 16, aligned=self.widths == "aligned",
                           min_fraction=self.min_width, hold=held_groups(self.hold, groups), depth=self.depth)


HOLD_CHANNEL_OPS = "channel-ops"


def held_groups(names: Sequence[str], groups: Sequence[ChannelGroup]) -> frozenset[str]:
    """Group ids to keep at full width: ``names`` are group ids, or ``channel-ops`` for every group that
    crosses a parameter-free channel op (the residual streams of option-A ResNets)."""
    known = {g.id for g in groups}
    held = set()
    for name in names:
        if name == HOLD_CHANNEL_OPS:
            held |= {g.id for g in groups if g.crosses}
        elif name in known:
            held.add(name)
        else:
            raise LatpruneError(f"--hold: unknown group {name!r}; run `latprune groups` to list them")
    return frozenset(held)


@dataclass(frozen=True)
class Verification:
    """Whether a plan is checked on the device by the closed loop, and where its timings go.

    On by default; it runs only when the performance model is this machine's (a plan made
    from another device's profile is labelled as not verified).
    """

    enabled: bool = True
    db: str | os.PathLike | None = None
    threads: int | None = None
    loop: LoopSettings = field(default_factory=LoopSettings)
    timing: ProfileSettings = field(default_factory=ProfileSettings)  # the profiler's timing method, per plan
    progress: bool = True
    reference: LoopReference | None = None  # the dense network plans are timed against, where not the planned one


@dataclass(frozen=True)
class LoopReference:
    """The dense network the closed loop times plans against where it is not the planned network, and the request
    as judged against it: a run at a smaller input size plans there and is judged against the model at its own
    size, so each plan is timed against that network in the same rounds (two ratios measured apart, multiplied,
    were off by 1-5%)."""

    model: LoadedModel
    request: BudgetRequest


@dataclass(frozen=True)
class RecoveryRequest:
    """A recovery recipe and the images it reads, checked when made.

    Post-training steps read unlabeled ``calib`` images; fine-tuning (finetune, overparam)
    reads ``calib`` (distilling the dense model) or labelled ``train`` folders.
    """

    recipe: str = "none"
    calib: str | None = None
    train: str | None = None
    calib_size: int | None = None  # None: RECOVERY_CALIB_SIZE, or every image for fine-tuning
    tuning: FinetuneSettings = field(default_factory=FinetuneSettings)
    seconds: float | None = RECOVERY_SECONDS  # each training step's time box: two-stage, finetune, overparam

    def __post_init__(self) -> None:
        steps = parse_recipe(self.recipe)
        tunes = any(s in FINETUNES for s in steps)
        if self.train and not tunes:
            raise LatpruneError("--train (labelled images) is read by the fine-tuning methods finetune and "
                                "overparam; post-training recovery takes unlabeled --calib DIR")
        if self.train and self.calib:
            raise LatpruneError("give one of --calib DIR (unlabeled) and --train DIR (labelled)")
        if steps and not (self.calib or self.train):
            hint = " or labelled --train DIR" if tunes else ""
            raise LatpruneError(f"recovery {self.recipe} needs unlabeled calibration images: --calib DIR{hint}")
        if self.calib_size is not None and self.calib_size < 1:
            raise LatpruneError(f"--calib-size must be at least 1, got {self.calib_size}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise LatpruneError(f"--recovery-seconds must be a positive number (0: no time box), got {self.seconds}")

    @property
    def steps(self) -> list[str]:
        return parse_recipe(self.recipe)

    @property
    def size(self) -> int | None:
        """How many images the recipe reads: ``calib_size``, else every image for fine-tuning, else 1,024."""
        tunes = any(s in FINETUNES for s in self.steps)
        return self.calib_size or (None if tunes else RECOVERY_CALIB_SIZE)

    @property
    def selection(self) -> SelectionSettings:
        """The recovery the planner's last stage runs on its finalists: this recipe's post-training steps."""
        return SelectionSettings.for_recipe(self.recipe, self.size, self.seconds)

    @property
    def boxed_tuning(self) -> FinetuneSettings:
        """The fine-tuning settings within this request's time box."""
        return replace(self.tuning, seconds=self.seconds)

    def images(self, loaded: LoadedModel, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images (and labels, from ``train``) the recipe reads, at the model's input size, and up to ``extra``
        more after them where the request reads a fixed count (the planner's; the recipe reads the first
        :attr:`size`)."""
        size = self.size
        if size is not None:
            size += extra
        if self.train:
            from latprune.data import labelled_tensors

            return labelled_tensors(self.train, loaded.preprocessing, loaded.input_shape, size=size)
        from latprune.data import calibration_tensor

        return calibration_tensor(self.calib, loaded.preprocessing, loaded.input_shape, size=size), None
