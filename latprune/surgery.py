"""Physical pruning: turn kept channel indices per group into a smaller dense network."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from latprune.branch_removal import remove_branches, removed_in
from latprune.branches import Branch
from latprune.channels import Layout, masked_mismatch
from latprune.errors import LatpruneError
from latprune.graph import remove_channels, run_model
from latprune.groups import ChannelGroup


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    groups: Sequence[ChannelGroup],
    kept: Mapping[str, Sequence[int]],
    layout: Layout | None = None,
    branches: Sequence[Branch] = (),
) -> nn.Module:
    """Return a pruned copy of ``model`` keeping ``kept[group_id]`` channels of each group.

    Groups absent from ``kept`` stay at full width. A group of one of ``branches`` kept at no channels
    removes that residual branch (all its inner groups must be at 0): the block keeps its shortcut
    plus the branch's constant output. The result is a real dense network (no masks) whose output
    shape equals the original's; with the groups' ``layout`` it is also checked to compute what
    ``model`` computes with the removed channels masked, and refused if not.
    """
    by_id = {g.id: g for g in groups}
    unknown = sorted(set(kept) - set(by_id))
    if unknown:
        raise LatpruneError(f"unknown channel group {unknown[0]!r}; run `latprune groups` to list them")
    removals = {}
    for gid, idxs in kept.items():
        group = by_id[gid]
        keep = set(group.validate_kept(idxs))
        removals[gid] = [i for i in range(group.width) if i not in keep]
    removed = removed_in(kept, branches)
    gone = {gid for b in removed for gid in b.groups}
    expected = run_model(model, example_input).shape
    pruned = copy.deepcopy(model)
    remove_channels(pruned, example_input, {gid: idxs for gid, idxs in removals.items() if gid not in gone})
    pruned = remove_branches(pruned, example_input, removed)
    out = run_model(pruned, example_input)
    if out.shape != expected:
        raise LatpruneError(f"pruning changed the output shape from {tuple(expected)} to {tuple(out.shape)}")
    if layout is not None:
        mismatch = masked_mismatch(pruned, model, layout, removals, example_input)
        if mismatch is not None:
            raise LatpruneError(f"the pruned network is not the dense one with those channels removed: {mismatch}; "
                                f"refused (an op moves channels where latprune cannot follow)")
    return pruned.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
