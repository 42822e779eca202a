"""Channel groups: sets of coupled channels that must be pruned together.

A group is found with Torch-Pruning's dependency graph and then *verified*: every
candidate group is test-pruned on a copy of the model, and groups whose removal breaks
the forward pass, changes the output shape (the classifier's output, channels fixed by
a parameter-free padding shortcut, ...) or makes a network that does not compute the dense
one with those channels masked (a channel op written inline in a ``forward``, which the
channel-op probes cannot see) are reported as excluded with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from latprune.channel_ops import ChannelMap, wrap_channel_ops
from latprune.channels import masked_mismatch
from latprune.errors import LatpruneError
from latprune.graph import RawGroup, build_graph, layer_slices, output_layers, raw_groups, remove_channels
from latprune.network import run_model


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels pruned as one unit.

    ``id`` is the name of the root layer (whose output channels define the group);
    ``producers`` are layers whose output channels it sets, ``consumers`` those whose
    input channels it sets. A width must be a multiple of ``divisor`` (grouped convs),
    and kept offsets must then repeat in each of the ``divisor`` equal slices.
    ``flops_share`` is the fraction of network MACs in conv/linear layers it touches.
    ``crosses`` names the parameter-free channel ops (:mod:`latprune.channel_ops`) the group
    reaches through, as ``"<module> (<op>, input|output side)"``. ``branch`` names the removable
    residual branch (:mod:`latprune.branches`) whose inner channels the group is: width 0 then
    removes that branch (with its other inner groups); "" when the group cannot go to 0.
    """

    id: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    width: int
    divisor: int
    flops_share: float
    crosses: tuple[str, ...] = ()
    branch: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "ChannelGroup":
        return cls(
            id=data["id"],
            producers=tuple(data["producers"]),
            consumers=tuple(data["consumers"]),
            width=int(data["width"]),
            divisor=int(data["divisor"]),
            flops_share=float(data["flops_share"]),
            crosses=tuple(data.get("crosses", ())),
            branch=str(data.get("branch", "")),
        )

    def candidate_widths(self) -> list[int]:
        """Every width this group can take (multiples of ``divisor`` up to full)."""
        return list(range(self.divisor, self.width + 1, self.divisor))

    def leading_channels(self, width: int) -> list[int]:
        """Root-relative indices that keep the first channels of every slice."""
        return self.slice_pattern(range(width // self.divisor))

    def slice_pattern(self, offsets: Sequence[int]) -> list[int]:
        """Repeat per-slice ``offsets`` in each of the ``divisor`` slices."""
        step = self.width // self.divisor
        return [s * step + o for s in range(self.divisor) for o in sorted(offsets)]

    def validate_kept(self, kept: Sequence[int]) -> list[int]:
        """Check kept root-relative indices; return them sorted (none: the group's branch is removed)."""
        idxs = sorted(int(i) for i in kept)
        if not idxs:
            if self.branch:
                return idxs
            raise LatpruneError(f"group {self.id}: width 0 removes a residual branch, and this group is in none "
                                f"(`latprune groups` lists the removable ones)")
        if len(set(idxs)) != len(idxs):
            raise LatpruneError(f"group {self.id}: kept channel indices repeat")
        if not idxs or idxs[0] < 0 or idxs[-1] >= self.width:
            raise LatpruneError(f"group {self.id}: kept indices must be non-empty and within 0..{self.width - 1}")
        if len(idxs) % self.divisor:
            raise LatpruneError(f"group {self.id}: width {len(idxs)} is not a multiple of {self.divisor}")
        step = self.width // self.divisor
        offsets = [i for i in idxs if i < step]
        if self.divisor > 1 and idxs != self.slice_pattern(offsets):
            raise LatpruneError(f"group {self.id}: grouped layers need the same kept offsets in each of {self.divisor} slices")
        return idxs


@dataclass(frozen=True)
class ExcludedGroup:
    """A group Torch-Pruning proposes that cannot be pruned, and why."""

    id: str
    width: int
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GroupAnalysis:
    groups: tuple[ChannelGroup, ...]
    excluded: tuple[ExcludedGroup, ...]
    total_macs: int

    def by_id(self) -> dict[str, ChannelGroup]:
        return {g.id: g for g in self.groups}

    def to_json(self) -> dict:
        return {
            "total_macs": self.total_macs,
            "groups": [g.to_json() for g in self.groups],
            "excluded": [e.to_json() for e in self.excluded],
        }


def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every conv/linear layer for ``example_input``."""
    names = {m: n for n, m in model.named_modules()}
    macs: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            per_output = module.in_features
        else:
            per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        macs[names[module]] = macs.get(names[module], 0) + output.numel() * per_output

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        run_model(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return macs


def find_channel_groups(model: nn.Module, example_input: torch.Tensor, graph: tp.DependencyGraph | None = None
                        ) -> GroupAnalysis:
    """Find and verify every prunable channel group of ``model``.

    ``graph``: its dependency graph, if built (after :func:`~latprune.channel_ops.wrap_channel_ops`);
    without one, the model's parameter-free channel ops are wrapped in place and the graph is traced here.
    """
    reference = run_model(model, example_input)
    if graph is None:
        wrap_channel_ops(model, example_input)
        graph = build_graph(model, example_input)
    classifier = output_layers(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    excluded = [
        ExcludedGroup(names[m], _out_width(m), "sets the network's output") for m in classifier
    ]
    candidates = raw_groups(model, graph, classifier)
    too_narrow = [g for g in candidates if g.width <= g.divisor]
    excluded += [ExcludedGroup(g.root, g.width, "too narrow to remove a channel") for g in too_narrow]
    candidates = [g for g in candidates if g.width > g.divisor]
    failures = _probe_prunability(model, example_input, candidates, reference.shape, graph)
    excluded += [ExcludedGroup(g.root, g.width, failures[g.root]) for g in candidates if g.root in failures]

    macs = layer_macs(model, example_input)
    total = sum(macs.values())
    modules = dict(model.named_modules())
    groups = tuple(
        ChannelGroup(
            id=g.root,
            producers=g.producers,
            consumers=g.consumers,
            width=g.width,
            divisor=g.divisor,
            flops_share=sum(macs.get(n, 0) for n in set(g.producers) | set(g.consumers)) / max(total, 1),
            crosses=_crossed_ops(modules, g),
        )
        for g in candidates
        if g.root not in failures
    )
    return GroupAnalysis(groups=groups, excluded=tuple(excluded), total_macs=total)


def _crossed_ops(modules: Mapping[str, nn.Module], group: RawGroup) -> tuple[str, ...]:
    """The channel maps a group touches: on their output side (it sets their output) or input side."""
    sides = [(n, "output") for n in group.producers] + [(n, "input") for n in group.consumers]
    return tuple(f"{n} ({modules[n].description}, {side} side)" for n, side in sides
                 if isinstance(modules.get(n), ChannelMap))


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _probe_prunability(
    model: nn.Module, example_input: torch.Tensor, candidates: Sequence[RawGroup], out_shape: torch.Size,
    graph: tp.DependencyGraph,
) -> dict[str, str]:
    """Test-prune groups on copies; return ``{root: reason}`` for those that break the model or make
    a network other than the masked dense one.

    All groups are tried together first (one copy in the common case); a failing set is
    bisected down to the single groups responsible, then the survivors are re-checked
    together in case two groups only fail in combination.
    """

    layout = layer_slices(model, graph, {g.root: list(range(g.width)) for g in candidates})

    def attempt(batch: Sequence[RawGroup]) -> str | None:
        trial = copy.deepcopy(model)
        removals = {g.root: _probe_removal(g) for g in batch}
        try:
            remove_channels(trial, example_input, removals)
            out = run_model(trial, example_input)
        except Exception as exc:
            return f"removing channels breaks the forward pass ({str(exc).splitlines()[0]})"
        if out.shape != out_shape:
            return f"removing channels changes the output shape to {tuple(out.shape)}"
        mismatch = masked_mismatch(trial, model, layout, removals, example_input)
        if mismatch is not None:
            return (f"removing channels makes another network ({mismatch}): an op moves channels where the probes "
                    f"cannot follow, e.g. one written inline in a forward")
        return None

    failures: dict[str, str] = {}

    def bisect(batch: Sequence[RawGroup]) -> None:
        reason = attempt(batch)
        if reason is None:
            return
        if len(batch) == 1:
            failures[batch[0].root] = reason
            return
        half = len(batch) // 2
        found_before = len(failures)
        bisect(batch[:half])
        bisect(batch[half:])
        if len(failures) == found_before:  # each half works alone: grow a set until it breaks
            for end in range(2, len(batch) + 1):
                reason = attempt(batch[:end])
                if reason is not None:
                    failures[batch[end - 1].root] = f"{reason}, in combination with other groups"
                    return

    remaining = list(candidates)
    while remaining:
        bisect(remaining)
        survivors = [g for g in remaining if g.root not in failures]
        if len(survivors) == len(remaining):
            break
        remaining = survivors
    return failures


def _probe_removal(group: RawGroup) -> list[int]:
    """Drop the first, middle and last channel of every slice (fewer when a slice is narrower than four): a small
    legal change, not symmetric under reversal or rotation, so an unseen permutation or slice shows."""
    step = group.width // group.divisor
    offsets = sorted({0, step // 2, step - 1})[:max(step - 1, 1)]
    return [s * step + o for s in range(group.divisor) for o in offsets]
