"""Typed, immutable records of how a plan was found and checked: the calibrated search's
(:class:`SearchRecord`), each closed-loop round (:class:`LoopRound`) and the loop's outcome
(:class:`VerificationRecord`). A :class:`~latprune.planner.plan.Plan` carries them; their JSON is part of
the plan file's schema (docs/files-and-safety.md), read back field by field with a one-line error naming
the bad field.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from latprune import schema
from latprune.errors import LatpruneError

R = TypeVar("R")


@dataclass(frozen=True)
class DamageRecord:
    """The damage table the search used: how many images measured it, in how long, and whether it was cached."""

    images: int
    seconds: float
    cached: bool
    key: str


@dataclass(frozen=True)
class Finalist:
    """A plan the search re-scored after a stronger repair: where it came from, the search's loss, the loss
    after that repair on held-out images and, for the plans the last stage recovered, the loss after that
    recovery on images it did not fit."""

    source: str
    loss: float
    repaired_loss: float
    recovered_loss: float | None = None


@dataclass(frozen=True)
class SearchRecord:
    """What the calibrated search did: the loss of the chosen plan against the plain DP's, and its cost. Where the
    finalists (the best plan of each family and the plain DP plan) were re-scored after a stronger repair,
    ``finalists`` holds them and the chosen plan is the one with the lowest repaired loss, or where the last stage
    recovered the best of each structure (``selection_objective``), the lowest recovered loss (its ``structure``)."""

    objective: str
    chosen_from: str
    loss_chosen: float
    loss_plain_dp: float
    candidates_scored: int
    dp_solves: int
    seconds: float
    time_box_s: float  # of each family of plans searched
    damage: DamageRecord
    final_objective: str = ""
    final_seconds: float = 0.0
    finalists: tuple[Finalist, ...] = ()
    finalists_left_out: int = 0  # finalists not repaired: the repair's time box was spent
    selection_objective: str = ""  # the last stage's loss, where it ran
    structure: str = ""  # the structure the last stage chose: depth and width, depth only or width only
    recovered: tuple[Finalist, ...] = ()  # the plans the last stage recovered, with ``recovered_loss``

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["finalists"] = [dataclasses.asdict(f) for f in self.finalists]
        data["recovered"] = [dataclasses.asdict(f) for f in self.recovered]
        return data

    @classmethod
    def from_json(cls, data: Any, source: str, name: str = "search") -> "SearchRecord":
        data = schema.mapping(data, source, name)
        damage = _record(DamageRecord, data.get("damage"), source, f"{name}.damage")
        lists = {}
        for key in ("finalists", "recovered"):
            items = data.get(key, [])
            if not isinstance(items, list):
                raise LatpruneError(f"{source}: {name}.{key} must be a list")
            lists[key] = tuple(_record(Finalist, f, source, f"{name}.{key}[{i}]") for i, f in enumerate(items))
        return _record(cls, {**data, "damage": 0, "finalists": 0, "recovered": 0}, source, name, damage=damage,
                       **lists)


@dataclass(frozen=True)
class LoopRound:
    """One round of the closed loop: the plan it solved for, its measured latency (a paired ratio to the dense
    network times the dense reference) and the judgement against the band."""

    round: int
    aim_ms: float
    correction: float
    predicted_ms: float
    measured_ms: float
    raw_median_ms: float
    relative_to_dense: float
    p10_ms: float
    p90_ms: float
    spread: float
    dense_measured_ms: float
    budget_ms: float
    band_ms: tuple[float, float]
    meets: bool
    in_band: bool
    new_layer_rows: int
    timing_s: float
    ratio_low: float = 0.0
    ratio_high: float = 0.0
    timing_rounds: int = 0
    rejected_rounds: int = 0
    learn_s: float | None = None  # the refit after the round (none after the last)
    seconds: float = 0.0

    def verdict(self) -> str:
        """The outcome in words: in band, below band, over the band (yet within budget), over budget."""
        if self.in_band:
            return "in band"
        if not self.meets:
            return "over budget"
        return "over the band" if self.measured_ms > self.band_ms[1] else "below band"

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["band_ms"] = list(self.band_ms)
        if self.learn_s is None:
            del data["learn_s"]
        return data

    @classmethod
    def from_json(cls, data: Any, source: str, name: str = "round") -> "LoopRound":
        return _record(cls, data, source, name)


@dataclass(frozen=True)
class VerificationRecord:
    """How the plan was checked on the device: the closed loop's outcome and rounds, or why it was not."""

    verified: bool
    reason: str = ""  # why not verified
    device: str = ""
    status: str = ""  # "in band" or "met the budget, outside the band"
    tol: float = 0.0
    band_ms: tuple[float, float] = (0.0, 0.0)
    budget_ms: float = 0.0
    measured_ms: float = 0.0
    dense_measured_ms: float = 0.0
    chosen_round: int = 0
    rounds_used: int = 0
    stop: str = ""
    seconds: float = 0.0
    rounds: tuple[LoopRound, ...] = ()

    @classmethod
    def unverified(cls, reason: str) -> "VerificationRecord":
        return cls(verified=False, reason=reason)

    @property
    def chosen(self) -> LoopRound:
        """The round whose plan was returned."""
        return self.rounds[self.chosen_round - 1]

    def to_json(self) -> dict:
        if not self.verified:
            return {"verified": False, "reason": self.reason}
        data = dataclasses.asdict(self)
        del data["reason"]
        data["band_ms"] = list(self.band_ms)
        data["rounds"] = [r.to_json() for r in self.rounds]
        return data

    @classmethod
    def from_json(cls, data: Any, source: str, name: str = "verification") -> "VerificationRecord":
        data = schema.mapping(data, source, name)
        verified = data.get("verified", False)
        if not isinstance(verified, bool):
            raise LatpruneError(f"{source}: {name}.verified must be true or false, got {verified!r}")
        if not verified:
            return cls.unverified(schema.text(data.get("reason", ""), source, f"{name}.reason", empty=True))
        rounds = data.get("rounds", [])
        if not isinstance(rounds, list):
            raise LatpruneError(f"{source}: {name}.rounds must be a list")
        parsed = tuple(LoopRound.from_json(r, source, f"{name}.rounds[{i}]") for i, r in enumerate(rounds))
        record = _record(cls, {**data, "rounds": 0}, source, name, rounds=parsed)
        if not 1 <= record.chosen_round <= len(parsed):
            raise LatpruneError(f"{source}: {name}.chosen_round {record.chosen_round} names no recorded round "
                                f"({len(parsed)} recorded)")
        return record


def _record(cls: type[R], data: Any, source: str, name: str, **given: Any) -> R:
    """``cls`` from a JSON object, each field checked against its annotation (fields with a default may be
    absent; unknown keys are ignored); ``given`` fields are taken as they are."""
    data = schema.mapping(data, source, name)
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name in given:
            continue
        label = f"{name}.{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise LatpruneError(f"{source}: {name} has no {f.name}")
            continue
        values[f.name] = _value(hints[f.name], data[f.name], source, label)
    return cls(**values)


def _value(kind: Any, value: Any, source: str, label: str) -> Any:
    optional = type(None) in typing.get_args(kind)
    if optional and value is None:
        return None
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if not isinstance(value, bool):
            raise LatpruneError(f"{source}: {label} must be true or false, got {value!r}")
        return value
    if kind is int:
        return schema.integer(value, source, label, minimum=0)
    if kind is float:
        return float(schema.number(value, source, label))
    if kind is str:
        return schema.text(value, source, label, empty=True)
    if typing.get_origin(kind) is tuple:  # a (low, high) pair of numbers
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise LatpruneError(f"{source}: {label} must be a pair of numbers")
        return tuple(float(schema.number(v, source, label)) for v in value)
    raise TypeError(f"no JSON reader for {kind}")  # a field type this module does not read: a bug here
