"""The inputs of a network's layers in execution order, each computed with the layers before it as they are now.

Ridge reconstruction refits layers one at a time in execution order, and each layer is fitted from its input as
the already refitted layers before it produce it. Running the network from its input again for every layer costs a
forward pass per layer, quadratic in depth: on EfficientNet-Lite0 at 224x224 (33 refitted layers, 750 images) it
was 94% of ridge's time. A :class:`LayerWalk` runs each batch's forward pass in a thread of its own that stops at
the next layer's input until told to go on, so the whole walk costs one forward pass per batch. The threads run one
at a time and each layer runs with the weights it has when its batch reaches it, so the inputs are those a fresh
forward pass would give; the price is memory: every batch's live activations are held at once
(:func:`walk_fits` says whether they fit).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from latprune.recovery.taps import layer_input

# Most activation memory a walk may hold (twice the largest layer input of every image): 40% of this machine's
# memory. Falling back costs a pass per layer: ridge on EfficientNet-Lite0 over 1,000 photos (6.4 GB by this
# estimate) ran past 15 minutes under a 6 GB cap.
WALK_MEMORY_BYTES = 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Stopped(Exception):
    """Raised in a walking thread to end its forward pass early."""


class _Walker:
    """One batch's forward pass in a thread, stopping at each of ``layers``' first call."""

    def __init__(self, model: nn.Module, batch: torch.Tensor, layers: Sequence[str], current: threading.local):
        self.model, self.batch, self.layers, self.current = model, batch, list(layers), current
        self.next = 0  # index in ``layers`` of the layer whose input this walker reports next
        self.reports: queue.Queue = queue.Queue()  # ("at", tensor) | ("done", None) | ("error", exception)
        self.orders: queue.Queue = queue.Queue()  # True: go on; False: stop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.current.walker = self  # the hooks find the walker of the thread they run in
        try:
            with torch.no_grad():
                self.model(self.batch)
            self.reports.put(("done", None))
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the walk's thread, which raises it
            self.reports.put(("error", exc))

    def arrive(self, name: str, tensor: torch.Tensor) -> None:
        """Called in this walker's thread at a layer's input: report it if expected, then wait for an order."""
        if self.next >= len(self.layers) or name != self.layers[self.next]:
            return  # a later call of a layer already passed, or one not walked
        self.next += 1
        self.reports.put(("at", tensor))
        if not self.orders.get():
            raise _Stopped

    def advance(self) -> torch.Tensor:
        """Let the forward pass run to the next walked layer; that layer's input."""
        if self.thread.ident is None:
            self.thread.start()
        else:
            self.orders.put(True)
        kind, value = self.reports.get()
        if kind == "error":
            raise value
        if kind == "done":
            raise RuntimeError(f"layer {self.layers[self.next]} was not called in the forward pass")
        return value

    def stop(self) -> None:
        if self.thread.is_alive():
            self.orders.put(False)
            self.thread.join()


class LayerWalk:
    """Walks ``model`` over ``batches`` through ``layers`` (names, in the order of their first call). Use as a
    context manager; :meth:`inputs` returns each layer's inputs, one tensor per batch, in turn."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], layers: Sequence[str]):
        self.model, self.layers = model, list(layers)
        self.current = threading.local()
        self.walkers = [_Walker(model, batch, layers, self.current) for batch in batches]
        self.reached = 0
        self.hooks: list = []

    def __enter__(self) -> "LayerWalk":
        modules = dict(self.model.named_modules())
        for name in dict.fromkeys(self.layers):
            self.hooks.append(modules[name].register_forward_pre_hook(self._hook_for(name)))
        return self

    def __exit__(self, *exc) -> None:
        try:
            for walker in self.walkers:
                walker.stop()
        finally:
            for hook in self.hooks:
                hook.remove()

    def _hook_for(self, name: str):
        def hook(module, inputs):
            walker = getattr(self.current, "walker", None)
            if walker is not None:
                walker.arrive(name, inputs[0])

        return hook

    def inputs(self, layer: str) -> list[torch.Tensor]:
        """The input of ``layer`` for every batch; layers must be asked for in the walk's order."""
        if self.reached >= len(self.layers) or self.layers[self.reached] != layer:
            raise ValueError(f"the walk's next layer is not {layer!r}")
        self.reached += 1
        return [walker.advance() for walker in self.walkers]  # one thread runs at a time


def walk_fits(model: nn.Module, batches: Sequence[torch.Tensor], layers: Sequence[str]) -> bool:
    """Whether a walk holds at most :data:`WALK_MEMORY_BYTES`, taking its activations as twice the largest walked
    layer input of every image (the input and what a skip holds), measured on one image."""
    modules = dict(model.named_modules())
    largest = [0]

    def hook(module, inputs):
        largest[0] = max(largest[0], inputs[0].numel() * inputs[0].element_size())

    hooks = [modules[name].register_forward_pre_hook(hook) for name in dict.fromkeys(layers)]
    try:
        with torch.no_grad():
            model(batches[0][:1])
    finally:
        for h in hooks:
            h.remove()
    return 2 * largest[0] * sum(len(b) for b in batches) <= WALK_MEMORY_BYTES


@contextmanager
def walked_inputs(model: nn.Module, batches: Sequence[torch.Tensor],
                  layers: Sequence[str]) -> Iterator[Callable[[str], list[torch.Tensor]]]:
    """A function giving each layer's inputs, one per batch, asked for in ``layers``' order: a :class:`LayerWalk`
    where its memory fits, else a forward pass up to the layer for each batch."""
    if not layers or not batches:
        yield lambda name: []
    elif walk_fits(model, batches, layers):
        with LayerWalk(model, batches, layers) as walk:
            yield walk.inputs
    else:
        with torch.no_grad():
            yield lambda name: [layer_input(model, name, batch) for batch in batches]
