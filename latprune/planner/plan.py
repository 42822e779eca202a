"""The plan file: per-group widths and kept channels, with the prediction and how it was found."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latprune.groups import ChannelGroup

from latprune import schema
from latprune.errors import LatpruneError
from latprune.outputs import atomic_path
from latprune.planner.records import SearchRecord, VerificationRecord
from latprune.preprocessing import Preprocessing

FORMAT = "latprune-plan"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GroupPlan:
    id: str
    width: int
    full_width: int
    kept: list[int]


@dataclass(frozen=True)
class Plan:
    """What to keep of each group, and what the planner predicts for it. Built once: the search's and the
    closed loop's records are attached with :meth:`with_records`, which returns a new plan."""

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
    search: SearchRecord | None = None
    # How the plan was checked on the device: the closed loop's rounds (latprune.planner.closed_loop), or why not.
    verification: VerificationRecord | None = None
    # Residual branches the plan removes whole (their inner groups at width 0; latprune.branches).
    removed: list[str] = field(default_factory=list)
    # The image preprocessing the model was planned with (calibration images read so); None in older files.
    preprocessing: Preprocessing | None = None

    @property
    def predicted_speedup(self) -> float | None:
        if self.predicted_ms and self.dense_predicted_ms:
            return self.dense_predicted_ms / self.predicted_ms
        return None

    def with_records(self, **records) -> "Plan":
        """This plan with ``search``, ``verification`` or ``objective`` set (a new plan; this one is unchanged)."""
        unknown = set(records) - {"search", "verification", "objective"}
        if unknown:
            raise TypeError(f"not a plan record: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **records)

    def kept(self) -> dict[str, list[int]]:
        return {g.id: list(g.kept) for g in self.groups}

    def widths(self) -> dict[str, int]:
        return {g.id: g.width for g in self.groups}

    def to_json(self) -> dict:
        data = asdict(self)
        data["search"] = self.search.to_json() if self.search else {}
        data["verification"] = self.verification.to_json() if self.verification else {}
        data["preprocessing"] = self.preprocessing.to_json() if self.preprocessing else {}
        data["predicted_speedup"] = self.predicted_speedup
        return {"format": FORMAT, "version": FORMAT_VERSION, **data}

    def header(self) -> dict:
        """The plan without its per-group channels: what a pruned model's metadata records."""
        return {k: v for k, v in self.to_json().items() if k != "groups"}

    @classmethod
    def from_json(cls, data: Mapping, source: str = "plan") -> "Plan":
        """A plan from its JSON, every field checked (type, range, width == len(kept), no repeated group or
        channel): a bad file is one error naming the field, before any work."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise LatpruneError(f"{source} is not a latprune plan file")
        schema.version(data.get("version"), source, FORMAT_VERSION)
        missing = [k for k in ("model", "input_shape", "groups") if k not in data]
        if missing:
            raise LatpruneError(f"{source} is incomplete: no {', '.join(missing)}")
        optional_text = {k: schema.text(data.get(k, ""), source, k, empty=True)
                         for k in ("backend", "cost", "method", "importance", "device", "objective") if k in data}
        optional_numbers = {k: schema.number(data.get(k), source, k, minimum=0, optional=True)
                            for k in ("budget_ms", "predicted_ms", "dense_predicted_ms") if k in data}
        records = {k: dict(schema.mapping(data[k], source, k)) for k in ("solver", "budget") if k in data}
        for key, record in (("search", SearchRecord), ("verification", VerificationRecord)):
            if key in data and schema.mapping(data[key], source, key):  # {}: no record
                records[key] = record.from_json(data[key], source)
        return cls(
            model=schema.text(data["model"], source, "model"),
            input_shape=list(schema.input_shape(data["input_shape"], source)),
            backend=optional_text.get("backend", ""), cost=optional_text.get("cost", "latency"),
            method=optional_text.get("method", ""), importance=optional_text.get("importance", ""),
            budget_ms=optional_numbers.get("budget_ms"), predicted_ms=optional_numbers.get("predicted_ms"),
            dense_predicted_ms=optional_numbers.get("dense_predicted_ms"),
            importance_kept=schema.number(data.get("importance_kept", 0.0), source, "importance_kept", minimum=0),
            macs=schema.integer(data.get("macs", 0), source, "macs", minimum=0),
            dense_macs=schema.integer(data.get("dense_macs", 0), source, "dense_macs", minimum=0),
            groups=_groups_from_json(data["groups"], source),
            device=optional_text.get("device", ""), objective=optional_text.get("objective", "importance"),
            removed=[schema.text(r, source, "removed") for r in _list(data.get("removed", []), source, "removed")],
            preprocessing=Preprocessing.from_json(data["preprocessing"], source) if data.get("preprocessing") else None,
            **records,
        )

    def check_groups(self, groups: Sequence["ChannelGroup"], source: str = "the plan") -> None:
        """Refuse a plan whose groups are not exactly the model's (a plan made for another model, edited, or
        incomplete) or whose kept channels the model's groups cannot take."""
        planned = {g.id: g for g in self.groups}
        known = {g.id: g for g in groups}
        unknown = sorted(set(planned) - set(known))
        if unknown:
            raise LatpruneError(f"{source} names group {unknown[0]!r}, which {self.model} does not have "
                                f"({len(unknown)} unknown); run `latprune groups` to list them")
        missing = [gid for gid in known if gid not in planned]
        if missing:
            raise LatpruneError(f"{source} lacks group {missing[0]!r} ({len(missing)} of {len(known)} missing): a plan "
                                f"names every prunable group, at full width to keep it")
        for gid, group in known.items():
            if planned[gid].full_width != group.width:
                raise LatpruneError(f"{source}: group {gid!r} has full width {planned[gid].full_width} in the plan "
                                    f"but {group.width} in {self.model}: the plan is for another model")
            group.validate_kept(planned[gid].kept)
        for branch in {g.branch for g in groups if g.branch}:
            members = [g.id for g in groups if g.branch == branch]
            if len({planned[gid].width == 0 for gid in members}) > 1:
                raise LatpruneError(f"{source} removes only part of the residual branch {branch}: its groups "
                                    f"{', '.join(members)} must all be at width 0, or none")

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
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
            raise LatpruneError(f"cannot read plan {path}: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise LatpruneError(f"cannot read plan {path}: nested too deeply") from None
        return cls.from_json(data, f"plan {path}")


def _list(value, source: str, name: str) -> list:
    if not isinstance(value, list):
        raise LatpruneError(f"{source}: {name} must be a list")
    return value


def _groups_from_json(value, source: str) -> list[GroupPlan]:
    """The plan's groups: each an object with id, width, full_width and kept; no id twice; width == len(kept);
    kept channels distinct and within the full width."""
    if not isinstance(value, list) or not value:
        raise LatpruneError(f"{source}: groups must be a non-empty list")
    groups, seen = [], set()
    for index, entry in enumerate(value):
        field_name = f"groups[{index}]"
        entry = schema.mapping(entry, source, field_name)
        missing = [k for k in ("id", "width", "full_width", "kept") if k not in entry]
        if missing:
            raise LatpruneError(f"{source}: {field_name} has no {', '.join(missing)}")
        gid = schema.text(entry["id"], source, f"{field_name}.id")
        if gid in seen:
            raise LatpruneError(f"{source}: group {gid!r} is listed twice")
        seen.add(gid)
        full = schema.integer(entry["full_width"], source, f"group {gid!r} full_width", minimum=1)
        kept = schema.integers(entry["kept"], source, f"group {gid!r} kept", minimum=0)
        width = schema.integer(entry["width"], source, f"group {gid!r} width", minimum=0)
        if width != len(kept):
            raise LatpruneError(f"{source}: group {gid!r} has width {width} but keeps {len(kept)} channels")
        if len(set(kept)) != len(kept):
            raise LatpruneError(f"{source}: group {gid!r} keeps a channel twice")
        if width > full or (kept and max(kept) >= full):
            raise LatpruneError(f"{source}: group {gid!r} keeps channels beyond its full width {full}")
        groups.append(GroupPlan(gid, width, full, sorted(kept)))
    return groups
