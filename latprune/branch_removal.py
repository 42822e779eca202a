"""Removing residual branches from a network: each removed block becomes ``act(shortcut(x) + c)``.

The branches come from :func:`latprune.branches.find_branches`; here they are cut out of the network's
``torch.fx`` graph, the module whose forward holds each block replaced by its rewritten graph module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from latprune.branches import Branch, ResidualBlock, branch_outputs, residual_blocks, trace_fx
from latprune.errors import LatpruneError
from latprune.network.tracing import run_model


def _owner(model: nn.Module, block: ResidualBlock, traceable: dict[str, bool]) -> str:
    """The innermost module whose forward holds the block's add and all its branch and that torch.fx can trace
    on its own ("" for the network: a block module whose forward branches on an argument, such as a
    drop-connect rate, is traced only as part of its parent's)."""
    stack = [name for name, _ in (block.add.meta.get("nn_module_stack") or {}).values()]
    for owner in reversed(stack):
        if not owner or not all(m.startswith(owner + ".") for m in block.modules):
            continue
        if owner not in traceable:
            try:
                trace_fx(model.get_submodule(owner))
                traceable[owner] = True
            except LatpruneError:
                traceable[owner] = False
        if traceable[owner]:
            return owner
    return ""


def _replace_in(gm: fx.GraphModule, prefix: str, removals: Sequence[tuple[Branch, torch.Tensor]]) -> None:
    """Replace each branch in ``gm`` (the trace of the module named by ``prefix``) by its bias layer."""
    local = {b.layers: b for b in residual_blocks(gm)}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    found = []
    for branch, constant in removals:
        block = local.get(tuple(layer[len(prefix):] for layer in branch.layers))
        if block is None:
            raise LatpruneError(f"cannot find the residual branch {branch.id} in the network to remove it")
        found.append((order[block.add], branch, block, constant))
    replaced: dict[fx.Node, fx.Node] = {}
    for _, branch, block, constant in sorted(found, key=lambda item: item[0]):
        width = int(constant.numel())  # the hub may have been pruned: the dense width no longer holds
        bias = nn.Conv2d(width, width, 1, groups=width, bias=True)
        with torch.no_grad():
            bias.weight.fill_(1.0)
            bias.bias.copy_(constant)
        name = branch.id[len(prefix):]
        gm.add_submodule(name, bias.to(constant.device))
        with gm.graph.inserting_before(block.add):
            replacement = gm.graph.call_module(name, (replaced.get(block.shortcut, block.shortcut),))
        block.add.replace_all_uses_with(replacement)
        replaced[block.add] = replacement
        gm.graph.erase_node(block.add)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()


def remove_branches(model: nn.Module, example_input: torch.Tensor, branches: Sequence[Branch]) -> nn.Module:
    """``model`` with ``branches`` physically removed: each block computes ``act(shortcut(x) + c)``, ``c`` the
    constant its branch outputs with its inner channels removed, held by a bias layer named ``branch.id``.

    Only the module whose forward holds a block (a ResNet's ``layer1.0``) is replaced, by its graph module, so
    every other module keeps its name and place (hooks on ``layer1`` still see its output); where that module
    cannot be traced alone (EfficientNet-Lite's blocks branch on a drop-connect argument), its nearest traceable
    ancestor is, the network itself at worst (its layers keep their names, its block modules become containers). Changes ``model``
    in place and returns it (or, where a block is the network's own forward, its graph module); the result is
    checked to compute what ``model`` computes with those branches' inner channels zeroed.
    """
    if not branches:
        return model
    gm = trace_fx(model)
    by_layers = {b.layers: b for b in residual_blocks(gm)}
    missing = [b.id for b in branches if b.layers not in by_layers]
    if missing:
        raise LatpruneError(f"cannot find the residual branch {missing[0]} in the network to remove it")
    blocks = [by_layers[b.layers] for b in branches]
    outputs, expected = branch_outputs(gm, blocks, [p for b in branches for p in b.zeroed], example_input)
    by_owner: dict[str, list[tuple[Branch, torch.Tensor]]] = {}
    traceable: dict[str, bool] = {}
    for branch, block in zip(branches, blocks):
        constant = outputs[block.branch][0, :, 0, 0].detach().clone()
        by_owner.setdefault(_owner(model, block, traceable), []).append((branch, constant))
    for owner, removals in sorted(by_owner.items(), key=lambda item: -len(item[0])):
        if not owner:
            continue
        module = model.get_submodule(owner)
        owner_gm = trace_fx(module)
        _replace_in(owner_gm, owner + ".", removals)
        owner_gm.train(module.training)
        parent, _, name = owner.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, owner_gm)
    if "" in by_owner:
        training = model.training
        model = trace_fx(model)
        _replace_in(model, "", by_owner[""])
        model.train(training)
    got = run_model(model, example_input)
    scale = max(float(expected.abs().max()), 1.0)
    if got.shape != expected.shape or float((got - expected).abs().max()) > 1e-4 * scale:
        raise LatpruneError("removing the residual branches changed what the network computes; refused")
    return model


def removed_in(kept: Mapping[str, Sequence[int]], branches: Sequence[Branch]) -> list[Branch]:
    """The branches whose inner groups ``kept`` empties, checking that a branch goes whole or stays."""
    removed = []
    for branch in branches:
        empty = [gid for gid in branch.groups if gid in kept and not len(kept[gid])]
        if empty and len(empty) != len(branch.groups):
            raise LatpruneError(f"group {empty[0]} at width 0 removes the branch {branch.id}, so its other groups "
                                f"({', '.join(g for g in branch.groups if g not in empty)}) must be 0 too")
        if empty:
            removed.append(branch)
    return removed
