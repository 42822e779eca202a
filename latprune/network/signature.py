"""``LayerSignature``: everything a conv/linear layer's in-network latency depends on."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields


# Part of every device fingerprint: rows of another version are timed under another key and never mixed.
# 2: a layer's signature carries the next layer's alignment (``next_align``).
SIGNATURE_VERSION = 2
ALIGNMENT_CAP = 16  # float32 channels in the widest blocked layouts (512-bit vectors): more alignment changes nothing


def channel_alignment(*widths: int) -> int:
    """The largest power of two, at most :data:`ALIGNMENT_CAP`, dividing every one of ``widths``."""
    align = ALIGNMENT_CAP
    while align > 1 and any(w % align for w in widths):
        align //= 2
    return align


@dataclass(frozen=True)
class LayerSignature:
    """Everything a layer's in-network latency depends on, for one backend.

    ``epilogue`` names the ops that run between this layer and the next conv/linear
    (e.g. ``batch_norm+add+relu``): backends fuse them into the layer or run them right
    after it, and their cost is timed with it. ``next_align`` is the channel alignment of the
    next layer (:func:`channel_alignment` of its widths; 0 after the last layer): a backend with
    a blocked channel layout converts the layout back after this layer when the next one cannot
    use it, unfusing its epilogue, and that runs in this layer's time (measured on ONNX Runtime:
    a 16->16 conv with add+relu 0.042 ms before an aligned layer, 0.068 ms before a 13-channel one).
    """

    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    dilation: tuple[int, int]
    height: int
    width: int
    batch: int
    dtype: str
    backend: str
    epilogue: str
    next_align: int = ALIGNMENT_CAP

    def key(self) -> str:
        """Canonical text form, used as the database key (computed once: a plan's cost tables ask for it
        about a hundred thousand times)."""
        cached = self.__dict__.get("_key")
        if cached is None:
            cached = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_key", cached)  # not a field: equality, hashing and to_json ignore it
        return cached

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in _FIELD_NAMES}  # as asdict, without its deep copy

    @classmethod
    def from_json(cls, data: Mapping) -> "LayerSignature":
        # Rows recorded before ``next_align`` existed belong to another device fingerprint; read them as aligned.
        values = {f.name: data.get(f.name, ALIGNMENT_CAP) if f.name == "next_align" else data[f.name]
                  for f in fields(cls)}
        for name in ("kernel", "stride", "padding", "dilation"):
            values[name] = tuple(values[name])
        return cls(**values)

    def family(self) -> tuple:
        """Everything but the widths: the same layer of the same network at any pruning."""
        data = self.to_json()
        for varying in ("cin", "cout", "groups", "next_align"):
            data.pop(varying)
        return tuple(sorted((k, str(v)) for k, v in data.items()))

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.cin == self.cout and self.groups > 1

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer (output pixels x kernel volume x cin per group)."""
        if self.kind == "linear":
            return self.batch * self.cin * self.cout
        out_h = (self.height + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        out_w = (self.width + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        per_output = (self.cin // self.groups) * self.kernel[0] * self.kernel[1]
        return self.batch * self.cout * out_h * out_w * per_output

    def padded_macs(self, step: int) -> float:
        """MACs with input and output channels rounded up to a multiple of ``step``."""
        def up(c: int) -> int:
            return math.ceil(c / step) * step

        cin, cout = up(self.cin), up(self.cout)
        groups = cin if self.depthwise else self.groups
        ratio = (cin // max(groups, 1)) * cout / max((self.cin // self.groups) * self.cout, 1)
        return self.macs * ratio


_FIELD_NAMES = tuple(f.name for f in fields(LayerSignature))
