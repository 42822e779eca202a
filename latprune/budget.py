"""Latency budgets: what the user asked for, checked once, and the milliseconds it resolves to.

A request is either milliseconds or a speedup over the dense model. A speedup only becomes
milliseconds against a dense latency: the *predicted* one when a plan is made, the one
*measured* in the same rounds as the pruned model when a result is judged. Either kind is
judged by the pruned model's paired ratio to the dense model times that dense latency, so a
budget in milliseconds is the ratio ``budget / dense`` on the host as it is during the command. ``margin`` is
headroom: plans aim at ``ms / (1 + margin)``; the closed planning loop
(:mod:`latprune.planner.closed_loop`) moves that aim by what the device measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from latprune.errors import LatpruneError

BASES = ("given", "predicted dense", "measured dense")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: ``ms`` is what the result must meet, ``target_ms`` what a plan aims at."""

    ms: float
    basis: str  # one of BASES: given in ms, or a speedup over the predicted / measured dense latency
    margin: float = 0.0
    speedup: float | None = None
    dense_ms: float | None = None  # the dense latency a speedup divides
    # The fraction of the ceiling a plan aims at in the performance model's milliseconds: 1 for an
    # open-loop plan; set by the closed loop to the band's centre over the measured/predicted correction.
    aim: float = 1.0

    @property
    def ceiling_ms(self) -> float:
        """What a plan may measure at most: ``ms`` less the headroom ``margin``."""
        return self.ms / (1 + self.margin)

    @property
    def target_ms(self) -> float:
        """What a plan aims at in predicted milliseconds."""
        return self.ceiling_ms * self.aim

    def describe(self) -> str:
        if self.speedup is None:
            return "given"
        return f"{self.basis} / {self.speedup:g}"

    def to_json(self) -> dict:
        return {**asdict(self), "ceiling_ms": self.ceiling_ms, "target_ms": self.target_ms,
                "description": self.describe()}

    @classmethod
    def from_json(cls, data: dict) -> "Budget":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass(frozen=True)
class BudgetRequest:
    """Exactly one of ``budget_ms`` and ``speedup``, validated on construction."""

    budget_ms: float | None = None
    speedup: float | None = None
    margin: float = 0.0

    def __post_init__(self) -> None:
        if (self.budget_ms is None) == (self.speedup is None):
            raise LatpruneError("give exactly one of --budget-ms and --speedup")
        if self.speedup is not None and not (math.isfinite(self.speedup) and self.speedup > 1):
            raise LatpruneError(f"--speedup must be a finite number greater than 1 (got {self.speedup})")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise LatpruneError(f"--budget-ms must be a positive finite number (got {self.budget_ms})")
        if not (math.isfinite(self.margin) and 0 <= self.margin < 1):
            raise LatpruneError(f"--margin must be in [0, 1), got {self.margin}")

    @classmethod
    def from_budget(cls, budget: Budget, margin: float = 0.0) -> "BudgetRequest":
        """The request a plan's recorded budget was made from (a speedup, or milliseconds as given)."""
        if budget.speedup is not None:
            return cls(speedup=budget.speedup, margin=margin)
        return cls(budget_ms=budget.ms, margin=margin)

    def judged_ms(self, relative_to_dense: float, dense_ms: float) -> float:
        """The measured latency this request is judged by, for either kind of request: the pruned model's
        latency relative to the dense model, paired round by round (:func:`~latprune.network.paired_ratio`: a
        host's slow spell slows both alike), times ``dense_ms``, the dense median over every round of the same
        command. A budget in ms is thereby the ratio ``budget_ms / dense_ms``, judged like a speedup."""
        return relative_to_dense * dense_ms

    def resolve(self, dense_ms: float, basis: str) -> Budget:
        """Milliseconds of this request against a dense latency (``basis``: predicted or measured dense)."""
        if basis not in BASES[1:]:
            raise ValueError(f"basis must be one of {BASES[1:]}, got {basis!r}")
        if self.speedup is None:
            return Budget(ms=float(self.budget_ms), basis="given", margin=self.margin)
        return Budget(ms=dense_ms / self.speedup, basis=basis, margin=self.margin, speedup=self.speedup,
                      dense_ms=dense_ms)
