"""Residual branches that can be removed whole: depth as one more width.

A residual block computes ``act(branch(x) + shortcut(x))``. When every channel inside the branch is
removed (its *inner* groups at width 0), the branch's output no longer depends on ``x``: it is the
constant shift of its last normalisation. Removing the branch then costs nothing in exactness: the
block becomes ``act(shortcut(x) + c)``, and the branch's layers, with their fixed per-operator cost,
are gone from the network.

Blocks are found on a ``torch.fx`` trace: an add whose one operand is the block input through an
identity or parameter-free ops (a channel pad, a subsample), the other a branch that reads only the
block input and is read only by the add. Whether the branch output is constant with its inner
channels zeroed is *measured* on two random inputs, not assumed (a 3x3 convolution of a constant
map with zero padding is not constant at the border). The constant is kept as a per-channel bias
layer (a depthwise 1x1 convolution with weight 1 and bias ``c``: ``x * 1 + c`` is ``x + c``
exactly), so the profiler times it and the performance model predicts it like any layer.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from latprune.channel_ops import ChannelMap
from latprune.errors import LatpruneError
from latprune.network.tracing import TIMED_TYPES, first_line

REMOVED_SUFFIX = "removed_branch"
_ADDS = {operator.add, operator.iadd, torch.add}
# A branch output within this fraction of its scale of a per-channel constant is that constant.
CONSTANT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Branch:
    """A residual branch that can go: all of ``groups`` at width 0 removes ``layers`` and puts the bias layer
    ``id`` (``width`` channels, after the shortcut ``shortcut``) in their place."""

    id: str
    layers: tuple[str, ...]
    groups: tuple[str, ...]
    hub: str  # the group that sets the channels at the add ("" when they are fixed)
    width: int
    shortcut: str
    zeroed: tuple[str, ...]  # the inner groups' producers: zeroing their outputs makes the branch constant

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ResidualBlock:
    """A residual add on a traced graph, with its branch and shortcut sides."""

    add: fx.Node
    branch: fx.Node
    shortcut: fx.Node
    modules: tuple[str, ...]  # every module the branch calls
    layers: tuple[str, ...]  # its conv/linear layers
    shortcut_text: str
    problem: str | None  # why the branch cannot be removed, structurally


class _Tracer(fx.Tracer):
    """Channel maps are single ops (their forward branches on pruned widths), and so is every convolution or
    linear layer, also a subclass from another package (a convolution with "same" padding built in)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (ChannelMap, *TIMED_TYPES)) or super().is_leaf_module(m, qualname)


def trace_fx(model: nn.Module) -> fx.GraphModule:
    """``model`` as a graph module sharing its submodules, or a one-line error."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise LatpruneError(f"torch.fx cannot trace it ({first_line(exc)})") from None
    return fx.GraphModule(model, graph)


def _node_inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensors a plain ``a + b`` node adds (None for any other node)."""
    is_add = ((node.op == "call_function" and node.target in _ADDS)
              or (node.op == "call_method" and node.target in ("add", "add_")))
    if not is_add or node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return a, b
    return None


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        for parent in _node_inputs(stack.pop()):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _has_parameters(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return any(True for _ in module.parameters())
    return node.op == "get_attr"


def _shortcut_chain(gm: fx.GraphModule, node: fx.Node) -> list[tuple[fx.Node, bool]]:
    """``node`` and the single-input nodes it is computed from, nearest first, each with whether the chain
    up to it has parameters (a projection)."""
    chain, weighted = [(node, False)], False
    while True:
        inputs = [n for n in _node_inputs(node) if n.op != "get_attr"]
        if len(inputs) != 1 or node.op == "placeholder":
            return chain
        weighted = weighted or _has_parameters(gm, node)
        node = inputs[0]
        chain.append((node, weighted))


def _describe(gm: fx.GraphModule, source: fx.Node, shortcut: fx.Node) -> str:
    steps = []
    node = shortcut
    while node is not source:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            steps.append(module.description if isinstance(module, ChannelMap) else type(module).__name__)
        else:
            steps.append(getattr(node.target, "__name__", str(node.target)))
        node = [n for n in _node_inputs(node) if n.op != "get_attr"][0]
    steps = [s for s in steps if s != "Identity"]
    return "identity" if not steps else " <- ".join(steps)


def _block_at(gm: fx.GraphModule, add: fx.Node, branch: fx.Node, shortcut: fx.Node) -> ResidualBlock | None:
    """The residual block of ``add`` read with ``branch`` as the branch side, or None when the other side is
    not reached from the branch's input."""
    above = _ancestors(branch) | {branch}
    found = next(((n, w) for n, w in _shortcut_chain(gm, shortcut) if n in above and n is not branch), None)
    if found is None:
        return None
    source, weighted = found
    nodes = above - (_ancestors(source) | {source})
    nodes = {n for n in nodes if n.op != "get_attr"}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    modules = tuple(dict.fromkeys(n.target for n in sorted(nodes, key=order.__getitem__) if n.op == "call_module"))
    layers = tuple(m for m in modules if isinstance(gm.get_submodule(m), TIMED_TYPES))
    if not layers:
        return None
    problem = None
    outside = [p for n in nodes for p in _node_inputs(n) if p not in nodes and p is not source and p.op != "get_attr"]
    escaping = [n for n in nodes if n is not branch and any(u not in nodes for u in n.users)]
    if weighted:
        problem = "its block's shortcut has layers (a projection: stride or channel change)"
    elif outside:
        problem = "its branch reads more than the block input"
    elif escaping or len(branch.users) != 1:
        problem = "its branch's activations are used outside the block"
    return ResidualBlock(add, branch, shortcut, modules, layers, _describe(gm, source, shortcut) if not weighted else "",
                  problem)


def residual_blocks(gm: fx.GraphModule) -> list[ResidualBlock]:
    """Every residual add of the traced network with its branch (the side holding layers; for an add of two
    branches, the one whose other side is computed from its input)."""
    blocks = []
    for node in gm.graph.nodes:
        operands = _add_operands(node)
        if operands is None:
            continue
        found = [b for b in (_block_at(gm, node, operands[0], operands[1]), _block_at(gm, node, operands[1], operands[0]))
                 if b is not None]
        found.sort(key=lambda b: (b.problem is not None, -len(b.layers)))
        if found:
            blocks.append(found[0])
    return blocks


def _block_name(layers: Sequence[str], used: set[str]) -> str:
    parts = [name.split(".") for name in layers]
    prefix = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        prefix.append(pieces[0])
    prefix = prefix[:-1] if len(prefix) == len(parts[0]) else prefix  # a one-layer branch: its parent
    base = ".".join([*prefix, REMOVED_SUFFIX])
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}{k}"
    used.add(name)
    return name


class _Capture(fx.Interpreter):
    """Runs a graph module and keeps the values of the ``wanted`` nodes."""

    def __init__(self, gm: fx.GraphModule, wanted: Sequence[fx.Node]):
        super().__init__(gm)
        self.wanted, self.values = set(wanted), {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.wanted:
            self.values[n] = out
        return out


def _zeroed_outputs(gm: fx.GraphModule, modules: Sequence[str]) -> list:
    hooks = []
    for name in modules:
        hooks.append(gm.get_submodule(name).register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    return hooks


def branch_outputs(gm: fx.GraphModule, blocks: Sequence[ResidualBlock], zeroed: Sequence[str], x: torch.Tensor
                    ) -> tuple[dict[fx.Node, torch.Tensor], torch.Tensor]:
    """The branch operands of ``blocks`` with the ``zeroed`` modules' outputs zeroed, and the network's output
    then (what it computes with those branches replaced by their constants)."""
    hooks = _zeroed_outputs(gm, zeroed)
    try:
        with torch.no_grad():
            capture = _Capture(gm, [b.branch for b in blocks])
            output = capture.run(x)
    finally:
        for h in hooks:
            h.remove()
    return capture.values, output


def _constant_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | str:
    """The per-channel constant both branch outputs equal, or why there is none."""
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        return "its branch output is not a 4-D feature map"
    constant = first[:1, :, :1, :1]
    scale = max(float(constant.abs().max()), 1.0)
    for value in (first, second):
        if float((value - constant).abs().max()) > CONSTANT_TOLERANCE * scale:
            return "its branch output is not constant with its channels removed (e.g. a padded convolution after them)"
    return constant.reshape(-1)


def find_branches(model: nn.Module, example_input: torch.Tensor, groups: Sequence, layout: Mapping
                  ) -> tuple[tuple[Branch, ...], dict[str, str]]:
    """The removable residual branches of ``model`` (channel ``groups`` with their ``layout``), and for every
    group that cannot go to width 0, why."""
    notes = {g.id: "not inside a residual branch (no skip connection around it)" for g in groups}
    try:
        gm = trace_fx(model)
    except LatpruneError as exc:
        return (), {g.id: f"depth unavailable: {exc}" for g in groups}
    modules = dict(model.named_modules())
    candidates = []
    for block in residual_blocks(gm):
        inside = set(block.modules)
        inner = [g for g in groups if set(g.producers) | set(g.consumers) <= inside]
        touching = [g for g in groups if g not in inner and (set(g.producers) | set(g.consumers)) & inside]
        problem = block.problem
        if problem is None and not inner:
            problem = "its branch has no prunable inner channels"
        covered = {n for g in inner for n in (*g.producers, *g.consumers)}
        if problem is None and any(layer not in covered for layer in block.layers):
            problem = "a layer of its branch has channels no prunable inner group removes"
        if problem is None and any(len(s.idxs) != _out_channels(modules[s.layer]) for g in inner
                                   for s in layout[g.id] if s.side == "out"):
            problem = "its inner channels share a layer's outputs with other channels"
        for g in inner:
            notes[g.id] = problem or ""
        for g in touching:
            if notes[g.id].startswith("not inside"):
                notes[g.id] = "it sets a residual block's channels (the skip), which stay"
        if problem is None:
            hub = [g.id for g in touching if set(g.producers) & inside]
            candidates.append((block, inner, hub[0] if len(hub) == 1 else ""))
    if not candidates:
        return (), notes
    zeroed = [p for _, inner, _ in candidates for g in inner for p in g.producers]
    second = torch.randn(example_input.shape, generator=torch.Generator().manual_seed(1))
    first_out, _ = branch_outputs(gm, [c[0] for c in candidates], zeroed, example_input)
    second_out, _ = branch_outputs(gm, [c[0] for c in candidates], zeroed, second)
    used: set[str] = set(modules)
    branches = []
    for block, inner, hub in candidates:
        constant = _constant_of(first_out[block.branch], second_out[block.branch])
        if isinstance(constant, str):
            for g in inner:
                notes[g.id] = constant
            continue
        branches.append(Branch(id=_block_name(block.layers, used), layers=block.layers,
                               groups=tuple(g.id for g in inner), hub=hub, width=int(constant.numel()),
                               shortcut=block.shortcut_text,
                               zeroed=tuple(dict.fromkeys(p for g in inner for p in g.producers))))
    return tuple(branches), notes


def _out_channels(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "out_width"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return -1
