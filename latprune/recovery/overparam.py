"""Linear over-parameterisation: expand each compact layer into a linear chain, fold it back exactly.

A convolution ``W`` (cin -> cout, kxk) becomes ``1x1 (cin -> r*cin)`` -> ``kxk (r*cin ->
r*cout)`` -> ``1x1 (r*cout -> cout)`` with no nonlinearity between them; a linear layer
becomes three linear layers the same way. Initialisation keeps the function exactly:

    first  = [I; N1]          (the extra rows random)
    middle = [[W, 0], [N2, N3]]
    last   = [I, 0]

so ``last @ middle @ first = W``, while every factor receives a gradient from the first
step on (the last layer's extra columns see the random rows' outputs, the middle's zero
block sees ``N1 x``). Only the middle layer has a bias (when the compact layer has one):
a bias before a zero-padded convolution could not be folded back exactly. Grouped
convolutions (depthwise included) stay compact: their expansion would not fold back into
the grouped shape.

Training runs the chain as one convolution with the product weight ``last @ middle @ first``,
formed at every forward pass: the chain is linear and its 1x1 ends have no bias or padding,
so that is the same function of the same parameters, with the same gradients for every
factor, at about the compact layer's cost instead of ``expansion**2`` times it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _noise(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) / max(fan_in, 1) ** 0.5


class ExpandedConv2d(nn.Module):
    """A ``Conv2d`` (groups=1) as 1x1 -> kxk -> 1x1 convolutions, ``expansion`` times wider inside."""

    def __init__(self, conv: nn.Conv2d, expansion: int, generator: torch.Generator):
        super().__init__()
        cin, cout = conv.in_channels, conv.out_channels
        wide_in, wide_out = expansion * cin, expansion * cout
        self.first = nn.Conv2d(cin, wide_in, 1, bias=False)
        self.middle = nn.Conv2d(wide_in, wide_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                bias=conv.bias is not None, padding_mode=conv.padding_mode)
        self.last = nn.Conv2d(wide_out, cout, 1, bias=False)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            weight = conv.weight.detach().float()
            first = torch.zeros(wide_in, cin)
            first[:cin] = torch.eye(cin)
            first[cin:] = _noise((wide_in - cin, cin), cin, generator)
            middle = _noise(tuple(self.middle.weight.shape), wide_in * k, generator)
            middle[:cout] = 0
            middle[:cout, :cin] = weight
            last = torch.zeros(cout, wide_out)
            last[:, :cout] = torch.eye(cout)
            self.first.weight.copy_(first[:, :, None, None])
            self.middle.weight.copy_(middle)
            self.last.weight.copy_(last[:, :, None, None])
            if conv.bias is not None:
                self.middle.bias.zero_()
                self.middle.bias[:cout] = conv.bias.detach()
        self.to(conv.weight.dtype)

    def product(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The compact layer's weight and bias, ``last @ middle @ first`` (in ``dtype``, default the layer's own),
        differentiable in every factor."""
        dtype = dtype or self.middle.weight.dtype
        last = self.last.weight[:, :, 0, 0].to(dtype)
        first = self.first.weight[:, :, 0, 0].to(dtype)
        weight = torch.einsum("oj,jlhw,li->oihw", last, self.middle.weight.to(dtype), first)
        bias = None if self.middle.bias is None else last @ self.middle.bias.to(dtype)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.middle._conv_forward(x, *self.product())

    def folded(self) -> nn.Conv2d:
        """The compact convolution computing the same function."""
        m = self.middle
        conv = nn.Conv2d(self.first.in_channels, self.last.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, bias=m.bias is not None, padding_mode=m.padding_mode)
        with torch.no_grad():
            weight, bias = self.product(torch.float64)
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return conv.to(self.middle.weight.dtype)


class ExpandedLinear(nn.Module):
    """A ``Linear`` as three linear layers, ``expansion`` times wider inside."""

    def __init__(self, linear: nn.Linear, expansion: int, generator: torch.Generator):
        super().__init__()
        fin, fout = linear.in_features, linear.out_features
        wide_in, wide_out = expansion * fin, expansion * fout
        self.first = nn.Linear(fin, wide_in, bias=False)
        self.middle = nn.Linear(wide_in, wide_out, bias=linear.bias is not None)
        self.last = nn.Linear(wide_out, fout, bias=False)
        with torch.no_grad():
            first = torch.zeros(wide_in, fin)
            first[:fin] = torch.eye(fin)
            first[fin:] = _noise((wide_in - fin, fin), fin, generator)
            middle = _noise((wide_out, wide_in), wide_in, generator)
            middle[:fout] = 0
            middle[:fout, :fin] = linear.weight.detach().float()
            last = torch.zeros(fout, wide_out)
            last[:, :fout] = torch.eye(fout)
            self.first.weight.copy_(first)
            self.middle.weight.copy_(middle)
            self.last.weight.copy_(last)
            if linear.bias is not None:
                self.middle.bias.zero_()
                self.middle.bias[:fout] = linear.bias.detach()
        self.to(linear.weight.dtype)

    def product(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The compact layer's weight and bias, ``last @ middle @ first`` (in ``dtype``, default the layer's own),
        differentiable in every factor."""
        dtype = dtype or self.middle.weight.dtype
        last = self.last.weight.to(dtype)
        weight = last @ self.middle.weight.to(dtype) @ self.first.weight.to(dtype)
        bias = None if self.middle.bias is None else last @ self.middle.bias.to(dtype)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.product())

    def folded(self) -> nn.Linear:
        """The compact linear layer computing the same function."""
        m = self.middle
        linear = nn.Linear(self.first.in_features, self.last.out_features, bias=m.bias is not None)
        with torch.no_grad():
            weight, bias = self.product(torch.float64)
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear.to(m.weight.dtype)


EXPANDED = (ExpandedConv2d, ExpandedLinear)


def expand_network(model: nn.Module, expansion: int = 2, seed: int = 0) -> list[str]:
    """Replace every Conv2d (groups=1) and Linear of ``model`` in place by its expansion; their names.

    The network computes the same function afterwards (up to float rounding).
    """
    if expansion < 1:
        raise ValueError(f"expansion must be >= 1, got {expansion}")
    if any(isinstance(m, EXPANDED) for m in model.modules()):
        raise ValueError("the network is already expanded; merge it first")
    generator = torch.Generator().manual_seed(seed)
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            _set_module(model, name, ExpandedConv2d(module, expansion, generator).to(module.weight.device))
        elif isinstance(module, nn.Linear):
            _set_module(model, name, ExpandedLinear(module, expansion, generator).to(module.weight.device))
        else:
            continue
        names.append(name)
    return names


def merge_network(model: nn.Module) -> int:
    """Fold every expanded chain of ``model`` back into one compact layer, in place; how many were folded."""
    expanded = [(name, m) for name, m in model.named_modules() if isinstance(m, EXPANDED)]
    for name, module in expanded:
        _set_module(model, name, module.folded().to(module.middle.weight.device))
    return len(expanded)
