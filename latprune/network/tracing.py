"""Static per-layer facts of a network: attributes, input size and epilogue.

These do not change with pruning (only widths do), so they are traced once per model
and combined with the widths of a pruned variant into :class:`LayerSignature` objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from latprune.errors import LatpruneError
from latprune.network.signature import LayerSignature, channel_alignment

TIMED_TYPES = (nn.Conv2d, nn.Linear)
DTYPE = "float32"


def run_model(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    """Run ``model`` once without gradients; errors become one-line user errors."""
    try:
        with torch.no_grad():
            out = model(example_input)
    except Exception as exc:
        raise LatpruneError(
            f"model failed on an input of shape {tuple(example_input.shape)}: {first_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise LatpruneError(f"model returns {type(out).__name__}; latprune needs a model that returns one tensor")
    return out


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Calls that move no data (shape queries, views, attribute reads) say nothing about cost.
_FREE_OPS = {
    "get", "size", "dim", "numel", "shape", "contiguous", "view", "reshape", "flatten", "t",
    "transpose", "permute", "unsqueeze", "squeeze", "is_floating_point", "detach", "to", "type",
    "requires_grad", "has_torch_function", "getitem", "len", "stride", "is_contiguous", "device",
    "dtype", "ndim", "setstate", "dropout", "identity", "set_grad_enabled",
}


@dataclass(frozen=True)
class LayerInfo:
    """One conv/linear layer as it runs in the dense network."""

    name: str
    kind: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    depthwise: bool
    height: int
    width: int
    epilogue: str

    def signature(self, cin: int, cout: int, batch: int, dtype: str, backend: str, *, next_align: int
                  ) -> LayerSignature:
        """The signature of this layer at widths ``cin`` -> ``cout``, before a layer of channel alignment
        ``next_align`` (0: the last layer)."""
        return LayerSignature(
            kind=self.kind,
            cin=cin,
            cout=cout,
            kernel=self.kernel,
            stride=self.stride,
            padding=self.padding,
            groups=cin if self.depthwise else self.groups,
            dilation=self.dilation,
            height=self.height,
            width=self.width,
            batch=batch,
            dtype=dtype,
            backend=backend,
            epilogue=self.epilogue,
            next_align=next_align,
        )


def layer_widths(module: nn.Module) -> tuple[int, int]:
    """(input, output) channels of a conv or linear layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _normalise(name: str) -> str:
    name = name.strip("_")
    if name.startswith("i") and name[1:] in {"add", "mul", "sub"}:
        name = name[1:]
    return name


class _OpLog(TorchFunctionMode):
    """Records torch calls made outside conv/linear layers, in execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0:
            name = _normalise(getattr(func, "__name__", ""))
            if name and name not in _FREE_OPS:
                self.events.append(("op", name))
        return func(*args, **(kwargs or {}))


def trace_layers(model: nn.Module, example_input: torch.Tensor) -> dict[str, LayerInfo]:
    """Every conv2d/linear layer of ``model`` in execution order, with its static facts."""
    names = {m: n for n, m in model.named_modules()}
    log = _OpLog()
    shapes: dict[str, tuple[int, ...]] = {}

    def enter(module, inputs):
        log.events.append(("layer", names[module]))
        shapes.setdefault(names[module], tuple(inputs[0].shape))
        log.depth += 1

    def leave(module, inputs, output):
        log.depth -= 1

    hooks = []
    for module in model.modules():
        if isinstance(module, TIMED_TYPES):
            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with log:
            run_model(model, example_input)
    finally:
        for h in hooks:
            h.remove()

    epilogues: dict[str, list[str]] = {}
    current = None
    for kind, value in log.events:
        if kind == "layer":
            current = value
            epilogues.setdefault(current, [])
        elif current is not None and value not in epilogues[current]:
            epilogues[current].append(value)

    modules = dict(model.named_modules())
    layers = {}
    for name in epilogues:
        module = modules[name]
        cin, cout = layer_widths(module)
        shape = shapes[name]
        if isinstance(module, nn.Conv2d):
            layers[name] = LayerInfo(
                name=name, kind="conv", cin=cin, cout=cout,
                kernel=tuple(module.kernel_size), stride=tuple(module.stride),
                padding=_pair(module.padding), dilation=tuple(module.dilation),
                groups=module.groups, depthwise=module.groups > 1 and module.groups == cin == cout,
                height=shape[2], width=shape[3], epilogue="+".join(epilogues[name]),
            )
        else:
            layers[name] = LayerInfo(
                name=name, kind="linear", cin=cin, cout=cout, kernel=(1, 1), stride=(1, 1),
                padding=(0, 0), dilation=(1, 1), groups=1, depthwise=False, height=1, width=1,
                epilogue="+".join(epilogues[name]),
            )
    return layers


def _pair(padding) -> tuple[int, int]:
    if isinstance(padding, str):  # "same"/"valid": resolved by the backend, keep it distinct
        return (-1, -1) if padding == "same" else (0, 0)
    return tuple(padding)


def layer_signatures(model: nn.Module, layers: dict[str, LayerInfo], batch: int, backend: str
                     ) -> dict[str, LayerSignature]:
    """Signatures of ``model``'s layers at its current widths; ``layers`` traced from its architecture, in
    execution order (each layer's context is the alignment of the one after it)."""
    modules = dict(model.named_modules())
    widths = [layer_widths(modules[name]) for name in layers]
    after = [channel_alignment(*w) for w in widths[1:]] + [0]
    return {name: info.signature(*w, batch, DTYPE, backend, next_align=align)
            for (name, info), w, align in zip(layers.items(), widths, after)}


def network_signatures(model: nn.Module, input_shape: tuple[int, ...], backend: str) -> list[LayerSignature]:
    """The layer signatures of a (pruned) network as it runs on ``backend``."""
    return list(layer_signatures(model, trace_layers(model, torch.zeros(input_shape)), input_shape[0], backend).values())
