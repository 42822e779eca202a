"""A network run at a smaller input size than its own: fewer pixels through every layer, no channel removed.

On ort-cpu, EfficientNet-Lite0 at 192x192 ran at 0.766 of itself at 224x224 and kept 84.3% top-1 of 87.2%, where
every widths-only plan near that latency kept 81.8-83.6% (docs/planning.md). ``latprune run --input-size`` takes
that lever with the widths: the dense network at the smaller size is timed against the dense network at its own
size (paired, same rounds), and the widths are planned at the smaller size, the first plan for what is left of the
budget. Every claim keeps its reference: the closed loop and the final measurement time the plans against the dense
network at its own input size, and top-1 compares with it at its own preprocessing.

The images are resized so that the crop keeps the field of view of the model's own preprocessing (a 256 resize
and 224 crop become 219 and 192), so objects keep their share of the picture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from latprune.budget import BudgetRequest
from latprune.errors import LatpruneError
from latprune.network import PairedRatio
from latprune.preprocessing import Preprocessing

if TYPE_CHECKING:
    from latprune.analysis import ModelAnalysis
    from latprune.budget import Budget
    from latprune.models import LoadedModel
    from latprune.planner.plan import Plan
    from latprune.size_adaptation import Adaptation
    from latprune.size_choice import SizeChoice

SIZE_ONLY = "input-size"  # the method of a plan that keeps every channel: the size alone met the budget
MIN_SIZE = 8  # pixels on the shorter side; below this a network's strided layers run out of image


def input_shape_at(native_shape: Sequence[int], size: int) -> tuple[int, ...]:
    """``native_shape`` with its shorter spatial side at ``size`` and the other scaled alike (aspect kept)."""
    height, width = int(native_shape[-2]), int(native_shape[-1])
    scale = size / min(height, width)
    return (*(int(d) for d in native_shape[:-2]), max(1, round(height * scale)), max(1, round(width * scale)))


def check_input_size(size: int, native_shape: Sequence[int]) -> None:
    """Refuse a size that is not smaller than the model's own input or too small to run."""
    shorter = min(int(native_shape[-2]), int(native_shape[-1]))
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size < shorter:
        raise LatpruneError(f"--input-size must be a whole number of pixels from {MIN_SIZE} to {shorter - 1} (smaller "
                            f"than the model's input {'x'.join(map(str, native_shape[-2:]))}), got {size!r}")


def preprocessing_at(preprocessing: Preprocessing, native_shape: Sequence[int], size: int) -> dict:
    """The preprocessing parts to replace for ``size`` (``load``'s mapping): the resize scaled like the crop."""
    if preprocessing.exact:
        raise LatpruneError(f"a smaller input size needs images that are resized and cropped, but this model takes "
                            f"images as they are at {'x'.join(map(str, native_shape[-2:]))}: give its resize with "
                            f"--resize")
    shorter = min(int(native_shape[-2]), int(native_shape[-1]))
    return {"resize": max(size, round(preprocessing.resize_to(native_shape) * size / shorter))}


def unpruned_plan(analysis: ModelAnalysis, budget: Budget) -> Plan:
    """Every channel kept (method ``input-size``): the plan of a run whose input size alone meets ``budget``, so
    that the pruned file, the report and a later ``prune`` read it like any other."""
    from latprune.planner.api import build_plan, prepare

    inputs = prepare(analysis)
    return build_plan(inputs, list(inputs.full_widths), SIZE_ONLY, budget)


def load_at_size(native: LoadedModel, weights: str | None, size: int,
                 preprocessing: Mapping[str, Any] | None = None) -> LoadedModel:
    """The model of ``native`` loaded again at ``size`` on the shorter side, built for that size where its factory
    takes the input shape, its images resized so that the crop keeps the field of view (``preprocessing``: the
    parts given for the model at its own size)."""
    from latprune.models import load_model

    return load_model(native.spec, weights=weights, input_shape=input_shape_at(native.input_shape, size),
                      preprocessing={**(preprocessing or {}),
                                     **preprocessing_at(native.preprocessing, native.input_shape, size)})


@dataclass(frozen=True)
class InputSize:
    """The input size a run planned at, and the dense network's latency there relative to its own input size
    (paired: timed in the same rounds)."""

    native_input_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    dense_ratio: PairedRatio
    native_preprocessing: str  # how the reference's images are made (the sized run's own are in its plan)
    adaptation: Adaptation | None = None  # the network at this size taught its outputs at its own size first
    choice: SizeChoice | None = None  # how ``--input-size auto`` chose this size

    def alone_meets(self, asked: BudgetRequest) -> bool:
        """Whether the dense network at this size already meets a speedup, the whole 95% interval of its ratio
        within it: a median alone is a coin toss on a noisy host (Lite0 at 176, 1.5x: 0.653, interval
        0.601-0.711, taken as met; the final measurement 0.740, missed). A budget in milliseconds is planned for:
        its dense latency is the planner's to predict."""
        return asked.speedup is not None and asked.speedup * self.dense_ratio.high <= 1.0

    def _median_meets(self, asked: BudgetRequest) -> bool:
        """Whether the median of the dense network's ratio at this size meets a speedup (its interval may not)."""
        return asked.speedup is not None and asked.speedup * self.dense_ratio.ratio <= 1.0

    def request(self, asked: BudgetRequest) -> BudgetRequest:
        """What the widths must still give at this size, as the planner's first aim: a speedup times the dense
        ratio (1.5x at 0.766 leaves 1.15x), or times the interval's top where the ratio itself meets it (the
        widths give what the measurement could not show); a budget in milliseconds is one at any size. The closed
        loop then judges each plan against the dense network at its own size
        (:class:`~latprune.settings.LoopReference`). Only for a request the size alone does not meet
        (:meth:`alone_meets`)."""
        if asked.speedup is None:
            return asked
        if self.alone_meets(asked):
            raise ValueError(f"the size alone meets --speedup {asked.speedup:g}: there are no widths to plan")
        ratio = self.dense_ratio
        return dataclasses.replace(asked, speedup=asked.speedup * (ratio.high if self._median_meets(asked)
                                                                   else ratio.ratio))

    def describe_uncertain(self, asked: BudgetRequest) -> str | None:
        """Why widths are planned although the dense network's ratio at this size meets a speedup (its interval
        reaches over it); None where the ratio itself does not meet it or the size alone does."""
        if not self._median_meets(asked) or self.alone_meets(asked):
            return None
        ratio = self.dense_ratio
        return (f"at {self.size_text} the dense network runs at {ratio.ratio:.3f} of its latency at "
                f"{self.native_text}, within --speedup {asked.speedup:g}, but its 95% interval reaches "
                f"{ratio.high:.3f}: widths are planned for the rest, the closed loop judging them")

    def describe_alone(self, asked: BudgetRequest) -> str:
        """Why a run at this size prunes nothing."""
        return (f"at {self.size_text} the dense network alone runs at {self.dense_ratio.ratio:.3f} of its latency at "
                f"{self.native_text} (paired, 95% interval {self.dense_ratio.low:.3f}-{self.dense_ratio.high:.3f}), "
                f"which meets --speedup {asked.speedup:g}: no channel is pruned and nothing is repaired; the final "
                f"measurement judges the network at this size")

    @property
    def size_text(self) -> str:
        return _hw(self.input_shape)

    @property
    def native_text(self) -> str:
        return _hw(self.native_input_shape)

    def describe(self) -> str:
        return (f"planned at input size {self.size_text} (the model's own: {self.native_text}): the dense network "
                f"there runs at {self.dense_ratio.describe()}; the latency and top-1 reference is the dense network at "
                f"{self.native_text}, preprocessing {self.native_preprocessing}"
                + ("" if self.choice is None else f"; {self.choice.describe()}")
                + ("" if self.adaptation is None else f"; before planning, {self.adaptation.describe()}"))

    def to_json(self) -> dict:
        return {"native_input_shape": list(self.native_input_shape), "input_shape": list(self.input_shape),
                "dense_ratio": self.dense_ratio.to_json(), "native_preprocessing": self.native_preprocessing,
                "adaptation": None if self.adaptation is None else self.adaptation.to_json(),
                "choice": None if self.choice is None else self.choice.to_json()}


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape[-2:])
