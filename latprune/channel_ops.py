"""Parameter-free channel ops (channel pads, slices, concatenation with zeros, shuffles) made prunable.

Torch-Pruning cannot carry a channel selection through an op that moves channels without
weights (the option-A shortcut of CIFAR ResNets zero-pads channels), so the groups on either
side of it used to be excluded. Here such ops are found from the traced forward pass: a
submodule without parameters or buffers whose output channel ``j`` is a copy of one input
channel ``src[j]`` (or zero) under the same spatial transform. It is wrapped in a
:class:`ChannelMap`, which Torch-Pruning treats like a layer: its input and output channels
are pruned independently (a residual stream on each side of the shortcut becomes its own
group) and the op is rebuilt as an explicit index map: kept input channels are placed at
their original positions (removed ones read zero), the original op runs, and only the kept
output channels are returned. Dense, the wrapper calls the op unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

_OPAQUE = contextvars.ContextVar("latprune_opaque_channel_maps", default=False)

# autograd nodes that move data between channels (dim 1) without weights, by name
_CHANNEL_OP_NAMES = {
    "ConstantPadNdBackward0": "pad on channels",
    "SliceBackward0": "channel slice",
    "CatBackward0": "concatenation on channels",
    "IndexSelectBackward0": "channel index",
    "IndexBackward0": "channel index",
    "TransposeBackward0": "channel shuffle",
    "PermuteBackward0": "channel shuffle",
    "RepeatBackward0": "channel repeat",
}


class ChannelMap(nn.Module):
    """A parameter-free channel op whose input and output channels can be pruned.

    ``in_index[c]`` is, for each input channel of the original op, its position in the pruned
    input (or the appended zero channel when it was removed); ``out_index`` lists the kept
    output channels of the original op. Both are non-persistent buffers: the state dict of a
    wrapped model equals the original's, and a pruned model rebuilt from its kept channels
    gets the same maps.
    """

    def __init__(self, op: nn.Module, in_channels: int, out_channels: int, description: str):
        super().__init__()
        self.op = op
        self.description = description
        self.in_width = in_channels  # channels the pruned input has
        self.op_out_channels = out_channels  # channels the original op returns
        self.register_buffer("in_index", torch.arange(in_channels), persistent=False)
        self.register_buffer("out_index", torch.arange(out_channels), persistent=False)

    @property
    def out_width(self) -> int:
        return int(self.out_index.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _OPAQUE.get():
            return _Opaque.apply(x, self._mapped)
        return self._mapped(x)

    def _mapped(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_width < self.in_index.numel():  # inputs removed: place the kept ones, zeros elsewhere
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, 1)).index_select(1, self.in_index)
        y = self.op(x)
        if self.out_width < self.op_out_channels:
            y = y.index_select(1, self.out_index)
        return y

    def remove_inputs(self, idxs: Sequence[int]) -> None:
        """Drop input channels (positions in the current input): the op reads zero there."""
        dropped = set(int(i) for i in idxs)
        kept = [i for i in range(self.in_width) if i not in dropped]
        new_position = {old: new for new, old in enumerate(kept)}
        zero = len(kept)
        self.in_index = torch.tensor(
            [new_position.get(int(p), zero) for p in self.in_index.tolist()], dtype=torch.long,
            device=self.in_index.device)
        self.in_width = len(kept)

    def remove_outputs(self, idxs: Sequence[int]) -> None:
        """Drop output channels (positions in the current output)."""
        dropped = set(int(i) for i in idxs)
        self.out_index = self.out_index[[i for i in range(self.out_width) if i not in dropped]]

    def extra_repr(self) -> str:
        return f"{self.description}, in={self.in_width}, out={self.out_width}"


class _Opaque(torch.autograd.Function):
    """One autograd node for the whole map, so Torch-Pruning's tracer sees the wrapper as one layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad)
        return g, None


@contextlib.contextmanager
def opaque_channel_maps() -> Iterator[None]:
    """While tracing a dependency graph, every :class:`ChannelMap` is one autograd node."""
    token = _OPAQUE.set(True)
    try:
        yield
    finally:
        _OPAQUE.reset(token)


class ChannelMapPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning pruner of :class:`ChannelMap`: input and output channels are independent."""

    TARGET_MODULES = ChannelMap

    def prune_out_channels(self, layer: ChannelMap, idxs: Sequence[int]) -> ChannelMap:
        layer.remove_outputs(idxs)
        return layer

    def prune_in_channels(self, layer: ChannelMap, idxs: Sequence[int]) -> ChannelMap:
        layer.remove_inputs(idxs)
        return layer

    def get_out_channels(self, layer: ChannelMap) -> int:
        return layer.out_width

    def get_in_channels(self, layer: ChannelMap) -> int:
        return layer.in_width


CUSTOM_PRUNERS = {ChannelMap: ChannelMapPruner()}


@dataclass(frozen=True)
class ChannelOp:
    """A parameter-free channel op found in a model: where, what, and its channel map."""

    module: str
    description: str
    in_channels: int
    out_channels: int
    source: tuple[int, ...]  # input channel copied to each output channel (-1: zero)

    def to_json(self) -> dict:
        return {"module": self.module, "op": self.description, "in_channels": self.in_channels,
                "out_channels": self.out_channels}


def wrap_channel_ops(model: nn.Module, example_input: torch.Tensor) -> tuple[ChannelOp, ...]:
    """Find the model's parameter-free channel ops and wrap each in a :class:`ChannelMap`, in place.

    Idempotent: a model already wrapped is left as it is (its maps are reported again).
    """
    calls = _record_calls(model, example_input)
    found: list[ChannelOp] = []
    wrapped_prefixes: list[str] = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not name or any(name.startswith(p + ".") for p in wrapped_prefixes):
            continue
        record = calls.get(module)
        if isinstance(module, ChannelMap):  # wrapped by an earlier call (the map itself holds index buffers)
            wrapped_prefixes.append(name)
            inner = calls.get(module.op)
            source = _channel_source(module.op, inner.input_shape) if _wrappable(inner) else None
            found.append(ChannelOp(name, module.description, int(module.in_index.numel()), module.op_out_channels,
                                   source or ()))
            continue
        if not _wrappable(record):
            continue
        source = _channel_source(module, record.input_shape)
        if source is None or (len(source) == record.input_shape[1] and source == tuple(range(len(source)))):
            continue
        description = record.op_names or "channel map"
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, ChannelMap(module, record.input_shape[1], len(source), description))
        wrapped_prefixes.append(name)
        found.append(ChannelOp(name, description, record.input_shape[1], len(source), source))
    return tuple(found)


@dataclass
class _Call:
    count: int
    input_shape: tuple[int, ...]  # empty when a call was not one tensor (ndim >= 2) in, one of the same ndim out
    op_names: str


def _wrappable(record: _Call | None) -> bool:
    """Called once, with one tensor in and one out: a candidate for a channel map."""
    return record is not None and record.count == 1 and bool(record.input_shape)


def _parameter_free(module: nn.Module) -> bool:
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _record_calls(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, _Call]:
    """Every parameter-free submodule's calls: how often, and for a call with one tensor (ndim >= 2) in and
    one of the same ndim out, its input shape and the channel-moving autograd ops between the two."""
    calls: dict[nn.Module, _Call] = {}

    def hook(module, args, kwargs, output):
        previous = calls.get(module)
        count = (previous.count if previous else 0) + 1
        x = args[0] if len(args) == 1 and not kwargs else None
        if (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and x.dim() >= 2
                and output.dim() == x.dim()):
            calls[module] = _Call(count, tuple(x.shape), _ops_between(x, output))
        else:
            calls[module] = _Call(count, (), "")

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
             if m is not model and _parameter_free(m)]
    try:
        with torch.enable_grad():
            model(example_input.detach().clone().requires_grad_())
    finally:
        for h in hooks:
            h.remove()
    return calls


def _ops_between(x: torch.Tensor, y: torch.Tensor) -> str:
    """Names of the channel-moving autograd ops on the way from ``y`` back to ``x`` (the traced graph)."""
    stop = x.grad_fn
    seen, names, stack = set(), [], [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node is stop:
            continue
        seen.add(node)
        label = _CHANNEL_OP_NAMES.get(type(node).__name__)
        if label and _moves_channels(node, x.dim()) and label not in names:
            names.append(label)
        stack.extend(f for f, _ in node.next_functions)
    return " + ".join(names)


def _moves_channels(node, ndim: int) -> bool:
    """Whether an autograd node acts on dim 1 of an ``ndim`` tensor (where it records its dim or padding)."""
    dim = getattr(node, "_saved_dim", None)
    if dim is not None:
        return int(dim) in (1, 1 - ndim)
    pad = getattr(node, "_saved_pad", None)
    if pad is not None:
        pair = 2 * (ndim - 2)  # F.pad lists (before, after) pairs from the last dim backwards
        return any(int(p) for p in list(pad)[pair:pair + 2])
    return True


def _channel_source(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The input channel each output channel copies (-1: zero), or None if the op is not such a map.

    Probe: input channel c holds the constant c + 1; an output channel must read one constant (or 0
    where a spatial pad adds zeros). Then on random data: the op must map zero to zero and commute with
    negation (no offsets, no ReLU), and zeroing a random half of the input channels must zero exactly the
    output channels copied from them (no mixing of channels).
    """
    shape = (1,) + tuple(input_shape[1:])
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    try:
        with torch.no_grad():
            probe = module(torch.arange(1, channels + 1, dtype=torch.float32).reshape(view).expand(shape).clone())
            if probe.dim() != len(shape) or probe.shape[0] != 1:
                return None
            source = []
            for j in range(probe.shape[1]):
                values = set(torch.unique(probe[0, j]).tolist()) - {0.0}
                if len(values) > 1:
                    return None
                value = values.pop() if values else 0.0
                if value != int(value) or not 0 <= value <= channels:
                    return None
                source.append(int(value) - 1)
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=generator)
            y = module(x)
            if module(torch.zeros(shape)).abs().max() > 0 or not torch.allclose(module(-x), -y, atol=1e-6):
                return None
            src = torch.tensor(source)
            for _ in range(2):
                keep = (torch.rand(channels, generator=generator) < 0.5).float()
                out_keep = torch.where(src >= 0, keep[src.clamp_min(0)], torch.zeros(()))
                expected = y * out_keep.reshape((1, -1) + (1,) * (len(shape) - 2))
                if not torch.allclose(module(x * keep.reshape(view)), expected, atol=1e-6):
                    return None
    except Exception:
        return None
    return tuple(source)
