"""Attribute ONNX Runtime's per-node profile times to the network's conv/linear layers (layer segments)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from latprune.errors import LatpruneError

LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


class NodeAttribution:
    """Maps ONNX Runtime's optimised nodes back to the network's conv/linear layers.

    The exporter emits Conv/Gemm nodes in the order PyTorch runs the layers, which names
    them. ORT renames fused nodes after a tensor of the exported graph (e.g.
    ``/layer1/layer1.0/relu/Relu_output_0_nchwc``); walking back from that tensor's
    producer to the nearest Conv/Gemm finds the layer. Other nodes join the segment of
    the layer that ran before them; nodes before the first layer form the prologue.
    """

    PROLOGUE = ""

    def __init__(self, producer: dict[str, object], node_layer: dict[str, str], by_name: dict[str, object]):
        self._producer = producer
        self._node_layer = node_layer
        self._by_name = by_name
        self._cache: dict[str, str | None] = {}

    @classmethod
    def from_onnx(cls, path: Path, layers: Sequence[str]) -> "NodeAttribution":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        layer_nodes = [n for n in graph.node if n.op_type in LAYER_OPS]
        if len(layer_nodes) != len(layers):
            raise LatpruneError(
                f"exported graph has {len(layer_nodes)} conv/gemm nodes but the network runs {len(layers)} layers"
            )
        node_layer = {n.name: layer for n, layer in zip(layer_nodes, layers)}
        producer = {out: n for n in graph.node for out in n.output}
        return cls(producer, node_layer, {n.name: n for n in graph.node})

    def layer_of(self, ort_name: str) -> str | None:
        if ort_name not in self._cache:
            self._cache[ort_name] = self._resolve(ort_name)
        return self._cache[ort_name]

    def _resolve(self, ort_name: str) -> str | None:
        name = ort_name.removeprefix("fused ")  # ORT's name for fused Gemm/MatMul nodes
        node = self._by_name.get(name)
        while node is None and name:
            node = self._producer.get(name)
            if node is None and "_" in name:
                name = name.rsplit("_", 1)[0]  # drop ORT's suffixes (_nchwc, _token_N, ...)
            elif node is None:
                break
        for _ in range(16):  # walk back through fused element-wise ops to the conv/gemm
            if node is None or node.op_type == "Concat":  # a concat has no single source layer
                return None
            if node.name in self._node_layer:
                return self._node_layer[node.name]
            node = next((self._producer[i] for i in node.input if i in self._producer), None)
        return None

    def segments(self, nodes: Sequence[Sequence]) -> tuple[dict[str, float], dict[str, int]]:
        """Sum one run's node times [name, op, ms] into layer segments (and count nodes)."""
        times: dict[str, float] = {}
        counts: dict[str, int] = {}
        started: set[str] = set()
        current = self.PROLOGUE
        for name, op, ms in nodes:
            layer = self.layer_of(name) if op in LAYER_OPS else None
            # ORT also emits Conv nodes of its own (a lone BatchNorm becomes a 1x1 conv):
            # those resolve to no layer, or to one already started, and join the segment.
            if layer is not None and layer not in started:
                started.add(layer)
                current = layer
            times[current] = times.get(current, 0.0) + ms
            counts[current] = counts.get(current, 0) + 1
        return times, counts
