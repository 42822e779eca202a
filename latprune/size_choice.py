"""``latprune run --input-size auto``: the input size a run plans at, chosen from the dense network's paired latency
at each candidate size.

On EfficientNet-Lite0 (ort-cpu; docs/planning.md, "Choosing the size automatically") the best result at every speedup
came from the largest size whose dense network alone met the budget or nearly did, the widths giving the rest: 1.25x
at 192, alone, 85.2% top-1 (widths at 224: 83.6%); 1.5x at 176, its dense network 1.4% slower than the budget, 82.1%
(192 with widths: 79.7-80.9%); 2x at 160, the smallest size tried, none meeting it alone, 76.9% (176 with widths:
75.0-75.5%). Widths for the last few percent cost little, where a larger size with more widths lost points. The rule
takes exactly that, on the sizes ``latprune sizes`` tries (multiples of 8 down to 0.7 of the model's own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from latprune.budget import BudgetRequest
from latprune.network import PairedRatio

if TYPE_CHECKING:
    from latprune.models import LoadedModel

AUTO = "auto"
NEAR = 0.05  # a size whose dense network alone is at most this much slower than the budget is taken; widths do the rest


@dataclass(frozen=True)
class SizeChoice:
    """The size chosen, why, and what it was chosen from: each candidate's dense ratio to the network at its own size
    (largest size first) and the ratio the budget asks for."""

    size: int
    reason: str
    needed_ratio: float
    candidates: tuple[tuple[int, PairedRatio], ...]

    @property
    def ratio(self) -> PairedRatio:
        """The chosen size's dense ratio."""
        return dict(self.candidates)[self.size]

    def describe(self) -> str:
        tried = ", ".join(f"{size}: {ratio.ratio:.3f}" for size, ratio in self.candidates)
        return (f"--input-size auto chose {self.size}, {self.reason} (the budget asks for {self.needed_ratio:.3f} of "
                f"the dense network at its own size; the dense network at each size tried, paired: {tried})")

    def to_json(self) -> dict:
        return {"size": self.size, "reason": self.reason, "needed_ratio": self.needed_ratio, "near": NEAR,
                "candidates": [{"size": size, "ratio": ratio.to_json()} for size, ratio in self.candidates]}


def choose_size(candidates: Sequence[tuple[int, PairedRatio]], needed_ratio: float, near: float = NEAR) -> SizeChoice:
    """The largest size whose dense ratio is at most ``needed_ratio`` times ``1 + near``; where none is, the
    smallest."""
    if not candidates:
        raise ValueError("no candidate size to choose from")
    ordered = tuple(sorted(candidates, key=lambda c: -c[0]))
    for size, ratio in ordered:
        if ratio.ratio <= needed_ratio:
            return SizeChoice(size, "the largest size whose dense network alone meets the budget", needed_ratio,
                              ordered)
        if ratio.ratio <= needed_ratio * (1 + near):
            return SizeChoice(size, f"the largest size whose dense network alone comes within {near:.0%} of the "
                                    f"budget (widths give the rest)", needed_ratio, ordered)
    return SizeChoice(ordered[-1][0], f"the smallest size tried: none comes within {near:.0%} of the budget alone "
                                      f"(widths give the rest)", needed_ratio, ordered)


def needed_ratio(budget: BudgetRequest, dense_ms: float) -> float:
    """The latency relative to the dense network at its own size that ``budget`` allows, with ``dense_ms`` that
    network's measured median: what the result is judged by (``--margin`` is the widths' headroom, not the size's,
    as in :meth:`~latprune.input_size.InputSize.alone_meets`)."""
    return budget.resolve(dense_ms, "measured dense").ms / dense_ms


def choose_input_size(native: LoadedModel, backend: str, budget: BudgetRequest, weights: str | None = None,
                      preprocessing: Mapping | None = None, threads: int | None = None,
                      global_warmup_s: float = 5.0, db: str | None = None, progress: bool = True
                      ) -> tuple[SizeChoice, LoadedModel, float]:
    """Time the dense network at every candidate size against itself at its own (``latprune sizes``' timing, no
    images) and choose (:func:`choose_size`): the choice, the network at the chosen size, and the median
    milliseconds of the network at its own size in those rounds."""
    from latprune.size_survey import run_survey

    survey = run_survey(native, backend, weights=weights, preprocessing=preprocessing, threads=threads,
                        global_warmup_s=global_warmup_s, db=db, progress=progress, label="latprune run")
    choice = choose_size([(r.size, r.ratio) for r in survey.readings],
                         needed_ratio(budget, survey.timing.reference.median_ms))
    chosen = next(n for r, n in zip(survey.readings, survey.networks, strict=True) if r.size == choice.size)
    return choice, chosen, survey.timing.reference.median_ms
