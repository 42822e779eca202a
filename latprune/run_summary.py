"""What ``latprune run`` did, as typed immutable records: :class:`RunSummary` holds one :class:`RunResult`
per model. The job builds it, the HTML report and the command's table read it, and ``summary.json`` is its
JSON (format ``latprune-run``, version :data:`SUMMARY_VERSION`; fields in docs/files-and-safety.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from latprune.input_size import InputSize
from latprune.network import Measurement, PairedRatio
from latprune.planner.plan import Plan
from latprune.planner.records import VerificationRecord

SUMMARY_FORMAT = "latprune-run"
SUMMARY_VERSION = 1


@dataclass(frozen=True)
class LatencyFigures:
    """One network's predicted and measured latency. ``measured_ms`` of the pruned network is derived from its
    paired ratio (ratio x the dense median); ``raw_median_ms`` is its own median, shown for reference."""

    predicted_ms: float | None
    measured_ms: float
    p10_ms: float
    p90_ms: float
    spread: float
    runs: int
    raw_median_ms: float | None = None

    @classmethod
    def of(cls, predicted_ms: float | None, measured: Measurement, derived_ms: float | None = None) -> "LatencyFigures":
        """The figures of ``measured``; with ``derived_ms``, that is the claimed latency and the median is raw."""
        return cls(predicted_ms, measured.median_ms if derived_ms is None else derived_ms, measured.p10_ms,
                   measured.p90_ms, measured.spread, measured.runs,
                   None if derived_ms is None else measured.median_ms)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        if self.raw_median_ms is None:
            del data["raw_median_ms"]
        return data


@dataclass(frozen=True)
class LatencyOutcome:
    """The pruned network against its budget, judged by its paired ratio to the dense network."""

    backend: str
    budget_ms: float  # the request resolved against the dense latency measured in the same rounds
    planned_ms: float  # the ceiling the planner aimed under, in the profile's predicted milliseconds
    margin: float
    budget_basis: str
    budget: dict  # the judged Budget's JSON (latprune.budget)
    plan_budget: dict  # the Budget the plan was made for
    dense: LatencyFigures
    pruned: LatencyFigures
    ratio: PairedRatio
    ratio_converged: bool
    predicted_speedup: float | None
    verification: VerificationRecord | None
    slow_state_rounds: int = 0  # rounds of the final measurement left out: the host ran in its slow state
    in_quiet_state: bool = True  # false: the host never left its slow state, and every round counted

    @property
    def measured_speedup(self) -> float:
        return 1 / self.ratio.ratio

    @property
    def measured_over_budget(self) -> float:
        return self.pruned.measured_ms / self.budget_ms

    @property
    def measured_over_predicted(self) -> float | None:
        return self.pruned.measured_ms / self.pruned.predicted_ms if self.pruned.predicted_ms else None

    @property
    def meets_budget(self) -> bool:
        return self.pruned.measured_ms <= self.budget_ms

    @property
    def budget_verdict(self) -> str:
        """"met"; "within noise" when the measured latency is over the budget but its ratio's 95% interval
        reaches below it (the measurement cannot tell it from a plan that meets it); else "missed"."""
        if self.meets_budget:
            return "met"
        return "within noise" if self.ratio.low * self.dense.measured_ms <= self.budget_ms else "missed"

    def drift_note(self) -> str | None:
        """For a result over its budget whose closed loop had measured the same network within it, what moved and
        what buys room (None otherwise): on a shared host the paired ratio moves by 1-2% between two measurements
        minutes apart (Lite0 at --input-size: final / loop 0.984-1.024 over six runs), and the loop accepts a plan
        anywhere in its band, up to the budget itself."""
        loop = self.verification
        if self.meets_budget or loop is None or not loop.verified or not loop.dense_measured_ms:
            return None
        allowed, looped = self.budget_ms / self.dense.measured_ms, loop.measured_ms / loop.dense_measured_ms
        if looped > allowed:
            return None
        return (f"over the budget in the final measurement ({self.ratio.ratio:.3f} of the dense network, "
                f"{allowed:.3f} allowed) although the closed loop had measured the same network within it "
                f"({looped:.3f}): the paired ratio moved {100 * (self.ratio.ratio / looped - 1):+.1f}% between the "
                f"two measurements; --margin 0.03 plans with that much headroom")

    def verdict_text(self) -> str:
        """The verdict in a few words: "yes", "within noise (+0.5%; +-6.1%)", "no (+4.0%)"."""
        over = f"+{100 * (self.measured_over_budget - 1):.1f}%"
        return {"met": "yes", "within noise": f"within noise ({over}; +-{100 * self.ratio.half_width:.1f}%)",
                "missed": f"no ({over})"}[self.budget_verdict]

    @property
    def noise(self) -> float:
        """The larger round spread of the two networks: how much the host moved while they were timed."""
        return max(self.dense.spread, self.pruned.spread)

    def to_json(self) -> dict:
        return {"backend": self.backend, "budget_ms": self.budget_ms, "planned_ms": self.planned_ms,
                "margin": self.margin, "budget_basis": self.budget_basis, "budget": self.budget,
                "plan_budget": self.plan_budget, "dense": self.dense.to_json(), "pruned": self.pruned.to_json(),
                "ratio": self.ratio.to_json(), "ratio_converged": self.ratio_converged,
                "slow_state_rounds": self.slow_state_rounds, "in_quiet_state": self.in_quiet_state,
                "measured_speedup": self.measured_speedup, "predicted_speedup": self.predicted_speedup,
                "measured_over_budget": self.measured_over_budget,
                "measured_over_predicted": self.measured_over_predicted, "meets_budget": self.meets_budget,
                "budget_verdict": self.budget_verdict,
                "noise": self.noise, "verification": self.verification.to_json() if self.verification else {}}


@dataclass(frozen=True)
class Accuracy:
    """Top-1 on the labelled images: dense, pruned before recovery (None without recovery), recovered."""

    images: int
    dense: float
    pruned: float | None
    recovered: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunResult:
    """One model's run: its plan, latency against the budget, accuracy, recovery and where the files went."""

    name: str
    model: str
    weights: str | None
    input_shape: tuple[int, ...]
    device: str
    plan: Plan
    latency: LatencyOutcome
    accuracy: Accuracy | None
    recovery: dict | None  # latprune.recovery.RecoveryReport's JSON
    onnx_max_abs_diff: float
    profile: dict
    perf_model: dict
    stages_s: dict[str, float]
    notes: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    input_size: InputSize | None = None  # the plan was made at a smaller input size than the model's own

    def to_json(self) -> dict:
        plan = self.plan.to_json()  # the summary lists each group's widths, not its channels
        plan["groups"] = [{"id": g.id, "full_width": g.full_width, "width": g.width} for g in self.plan.groups]
        return {"name": self.name, "model": self.model, "weights": self.weights, "input_shape": list(self.input_shape),
                "device": self.device, "plan": plan, "latency": self.latency.to_json(),
                "accuracy": self.accuracy.to_json() if self.accuracy else None, "recovery": self.recovery,
                "onnx_max_abs_diff": self.onnx_max_abs_diff, "profile": self.profile, "perf_model": self.perf_model,
                "stages_s": dict(self.stages_s), "notes": list(self.notes), "files": dict(self.files),
                "input_size": self.input_size.to_json() if self.input_size else None}


@dataclass(frozen=True)
class RunSummary:
    """Every run of one ``latprune run``, and the summary and report files written for them."""

    latprune: str
    created: str
    runs: tuple[RunResult, ...]
    files: dict[str, str] = field(default_factory=dict)

    def with_files(self, files: dict[str, str]) -> "RunSummary":
        return dataclasses.replace(self, files=dict(files))

    def to_json(self) -> dict:
        return {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "latprune": self.latprune,
                "created": self.created, "runs": [r.to_json() for r in self.runs], "files": dict(self.files)}
