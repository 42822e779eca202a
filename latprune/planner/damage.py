"""The calibrated damage model: how much each group alone hurts the outputs at each candidate width.

For every prunable group and candidate width, the group alone keeps its best channels (by the
plan's importance scores) and the rest of the network stays dense; the damage is the KL
divergence of the dense model's output distribution from that network's, averaged over
unlabeled calibration images (relative squared error for outputs that are not class scores).
At most ``max_points`` widths per group are run; the others are interpolated. Damage never
grows with width, and is 0 at full width.

Measuring takes a forward pass per (group, width), so tables are cached on disk, keyed by
everything they depend on: the model's weights, the images, the groups and the channels kept
at every measured width (:func:`damage_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune.batching import forward_in_batches
from latprune.channels import Layout, masked_channels
from latprune.errors import LatpruneError
from latprune.groups import ChannelGroup
from latprune.outputs import atomic_path, user_cache_dir
from latprune.planner.search_steps import thin_evenly
from latprune.planner.widths import kept_channels

DAMAGE_VERSION = 2
DAMAGE_IMAGES = 64  # images per (group, width) pass
MAX_POINTS = 8  # widths measured per group; the rest interpolated


def output_loss(reference: torch.Tensor, output: torch.Tensor) -> float:
    """KL(reference || output) of class scores, mean over images (nats); relative squared error otherwise."""
    if reference.dim() == 2:
        target = F.log_softmax(reference.double(), dim=1)
        got = F.log_softmax(output.double(), dim=1)
        return float(F.kl_div(got, target, log_target=True, reduction="batchmean"))
    scale = float(reference.double().pow(2).mean()) or 1.0
    return float((output.double() - reference.double()).pow(2).mean()) / scale


@dataclass
class DamageTable:
    """Measured damage per group: ``widths[g]`` ascending (full width last, damage 0) and ``damage[g]``."""

    key: str
    widths: dict[str, list[int]]
    damage: dict[str, list[float]]
    images: int
    seconds: float
    cached: bool = False

    def at(self, group_id: str, widths: Sequence[int]) -> np.ndarray:
        """Damage at any widths of a group, interpolated linearly between measured widths."""
        return np.interp(np.asarray(widths, dtype=float), self.widths[group_id], self.damage[group_id])

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "cached"}


def damage_key(model: nn.Module, spec: str, images: torch.Tensor, groups: Sequence[ChannelGroup],
               kept: Mapping[str, Mapping[int, Sequence[int]]]) -> str:
    """A digest of everything a damage table depends on; ``kept[g][w]``: the channels group ``g`` keeps at
    measured width ``w`` (exactly what each pass masks, whatever ranking produced it)."""
    digest = hashlib.sha256(f"latprune-damage-{DAMAGE_VERSION}|{spec}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    layout = [(g.id, g.width, [(int(w), [int(i) for i in k]) for w, k in kept[g.id].items()]) for g in groups]
    digest.update(json.dumps(layout).encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$LATPRUNE_CACHE``, else ``<user cache dir>/latprune``; damage tables go to its ``damage`` folder."""
    if os.environ.get("LATPRUNE_CACHE"):
        return Path(os.environ["LATPRUNE_CACHE"])
    return user_cache_dir()


def measured_widths(candidates: np.ndarray, max_points: int = MAX_POINTS) -> list[int]:
    """The candidate widths that are run: all when few, else evenly thinned (narrowest and full kept)."""
    return thin_evenly([int(w) for w in candidates], max_points)


def measure_damage(model: nn.Module, spec: str, groups: Sequence[ChannelGroup], layout: Layout,
                   scores: Mapping[str, np.ndarray], candidates: Sequence[np.ndarray], images: torch.Tensor,
                   cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DamageTable:
    """The damage table of ``model`` on ``images`` (loaded from the cache when it holds this exact table).

    ``scores`` rank each group's channels (the best ``w`` are kept at width ``w``); ``candidates``
    are the widths the planner may choose per group (held groups have only their full width)."""
    widths = {g.id: measured_widths(c) for g, c in zip(groups, candidates)}
    kept = {g.id: {w: kept_channels(g, scores[g.id], w) for w in widths[g.id]} for g in groups}
    key = damage_key(model, spec, images, groups, kept)
    path = Path(cache_dir or default_cache_dir()) / "damage" / f"{key}.json"
    cached, problem = _read(path, key, widths)
    if cached is not None:
        return cached
    if problem is not None:
        print(f"latprune: warning: cached damage table {path} {problem}; measuring it again", file=sys.stderr)
    began = time.perf_counter()
    model.eval()
    reference = forward_in_batches(model, images)
    damage = {}
    runs = [(g, w) for g in groups for w in widths[g.id] if w < g.width]
    measured: dict[tuple[str, int], float] = {}
    for group, width in tqdm(runs, desc="damage per group and width", unit="pass", disable=not progress,
                             leave=False):
        keep = set(kept[group.id][width])
        removed = [i for i in range(group.width) if i not in keep]
        with masked_channels(model, layout, {group.id: removed}):
            measured[group.id, width] = output_loss(reference, forward_in_batches(model, images))
    bad = [k for k, v in measured.items() if not np.isfinite(v)]
    if bad:
        raise LatpruneError(f"the model's outputs are not finite on the calibration images with group {bad[0][0]} "
                            f"at width {bad[0][1]}: its damage cannot be measured")
    for group in groups:
        values = [measured.get((group.id, w), 0.0) for w in widths[group.id]]
        # more channels never hurt more: the damage at a width is at least the damage at any wider one
        damage[group.id] = list(np.maximum.accumulate(values[::-1])[::-1].astype(float))
    table = DamageTable(key, widths, damage, len(images), time.perf_counter() - began)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(table.to_json()))
    except (OSError, LatpruneError) as exc:  # a plan does not fail for want of a cache
        print(f"latprune: warning: damage table not cached ({exc})", file=sys.stderr)
    return table


def _read(path: Path, key: str, widths: Mapping[str, list[int]]) -> tuple[DamageTable | None, str | None]:
    """The cached table at ``path`` if it is this exact, valid table; else (None, what is wrong with the file,
    or None when there is no file). Cached files are read as untrusted: wrong types, other groups or widths,
    and values that are not finite, negative or growing with width are all rejected."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    problem = _table_problem(data, key, widths)
    if problem is not None:
        return None, problem
    return DamageTable(key, {g: list(widths[g]) for g in widths},
                       {g: [float(v) for v in data["damage"][g]] for g in widths}, data["images"],
                       float(data["seconds"]), cached=True), None


def _table_problem(data, key: str, widths: Mapping[str, list[int]]) -> str | None:
    """What makes ``data`` not the valid damage table ``key`` of these measured widths (None when it is)."""
    if not isinstance(data, dict) or set(data) != {"key", "widths", "damage", "images", "seconds"}:
        return "is not a damage table"
    if data["key"] != key:
        return "holds another table than its name says"
    if data["widths"] != {g: list(w) for g, w in widths.items()}:
        return "is for other groups or widths"
    if isinstance(data["images"], bool) or not isinstance(data["images"], int) or data["images"] < 1:
        return "has an invalid image count"
    if isinstance(data["seconds"], bool) or not isinstance(data["seconds"], (int, float)):
        return "has an invalid time"
    damage = data["damage"]
    if not isinstance(damage, dict) or set(damage) != set(widths):
        return "has damage for other groups"
    for group, values in damage.items():
        if (not isinstance(values, list) or len(values) != len(widths[group])
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            return f"has malformed damage for group {group}"
        array = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(np.diff(array) > 0):
            return f"has damage for group {group} that is not finite, non-negative and non-increasing in width"
    return None
