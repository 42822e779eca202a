"""The plan file: per-group widths and kept channels, with the prediction and how it was found."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from latprune.errors import LatpruneError
from latprune.outputs import atomic_path

FORMAT = "latprune-plan"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GroupPlan:
    id: str
    width: int
    full_width: int
    kept: list[int]


@dataclass
class Plan:
    """What to keep of each group, and what the planner predicts for it."""

    model: str
    input_shape: list[int]
    backend: str
    cost: str  # what the budget constrains: "latency" (ms) or "macs" (millions)
    method: str  # "latency-dp", "latency-search", "flops-dp", "uniform", "tp-global-magnitude"
    importance: str
    budget_ms: float | None
    predicted_ms: float | None
    dense_predicted_ms: float | None
    importance_kept: float  # fraction of the dense model's total importance
    macs: int
    dense_macs: int
    groups: list[GroupPlan]
    solver: dict = field(default_factory=dict)
    device: str = ""
    budget: dict = field(default_factory=dict)  # the resolved Budget the plan was made for (latprune.budget)
    # "importance": the DP on summed channel importance; "calibrated": the search on calibration loss
    # (latprune.planner.search), whose record ``search`` holds.
    objective: str = "importance"
    search: dict = field(default_factory=dict)
    # How the plan was checked on the device: the closed loop's rounds (latprune.planner.closed_loop), or why not.
    verification: dict = field(default_factory=dict)

    @property
    def predicted_speedup(self) -> float | None:
        if self.predicted_ms and self.dense_predicted_ms:
            return self.dense_predicted_ms / self.predicted_ms
        return None

    def kept(self) -> dict[str, list[int]]:
        return {g.id: list(g.kept) for g in self.groups}

    def widths(self) -> dict[str, int]:
        return {g.id: g.width for g in self.groups}

    def to_json(self) -> dict:
        data = asdict(self)
        data["predicted_speedup"] = self.predicted_speedup
        return {"format": FORMAT, "version": FORMAT_VERSION, **data}

    def header(self) -> dict:
        """The plan without its per-group channels: what a pruned model's metadata records."""
        return {k: v for k, v in self.to_json().items() if k != "groups"}

    @classmethod
    def from_json(cls, data: Mapping) -> "Plan":
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise LatpruneError("not a latprune plan file")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise LatpruneError(f"plan format {data['version']} is newer than this latprune reads ({FORMAT_VERSION})")
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["groups"] = [GroupPlan(**g) for g in data["groups"]]
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LatpruneError(f"plan file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise LatpruneError(f"cannot read plan {path}: {exc}") from None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError) as exc:
            raise LatpruneError(f"plan {path} is incomplete or malformed ({exc})") from None
