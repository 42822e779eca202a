import threading

import pytest
import torch
import torch.nn as nn

import latprune.recovery.layer_walk as layer_walk
from latprune.recovery import recover
from latprune.recovery.layer_walk import LayerWalk, walk_fits, walked_inputs
from latprune.recovery.taps import layer_input


class _Skipped(nn.Module):
    """a -> b -> (b again, shared) + skip -> c: a residual add and a layer called twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)
        self.unused = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(h + self.b(torch.relu(self.b(h))))


class _Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        h = self.a(x)
        if h.shape[0] > 1:
            raise ArithmeticError("no batches of more than one")
        return self.b(h)


def _batches():
    return torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(0)).split(4)


def test_the_walk_gives_each_layer_the_input_a_fresh_pass_gives_after_earlier_layers_change():
    torch.manual_seed(0)
    model, batches = _Skipped().eval(), _batches()
    before = threading.active_count()
    with LayerWalk(model, batches, ["a", "b", "c"]) as walk:
        for name in ("a", "b", "c"):
            got = walk.inputs(name)
            with torch.no_grad():
                want = [layer_input(model, name, batch) for batch in batches]
                getattr(model, name).weight.mul_(-0.5)  # what a refit does before the next layer's inputs
            assert len(got) == 3 and all(torch.equal(g, w) for g, w in zip(got, want))
    assert threading.active_count() == before


def test_the_walk_is_asked_in_order_and_its_threads_end_however_it_ends():
    model, batches = _Skipped().eval(), _batches()
    before = threading.active_count()
    with LayerWalk(model, batches, ["a", "b", "c"]) as walk:
        walk.inputs("a")
        with pytest.raises(ValueError, match="next layer is not 'c'"):
            walk.inputs("c")
    assert threading.active_count() == before  # three threads stopped at b, ended by the exit
    with pytest.raises(RuntimeError, match="layer unused was not called"), \
            LayerWalk(model, batches, ["a", "unused"]) as walk:
        walk.inputs("a")
        walk.inputs("unused")
    assert threading.active_count() == before


def test_an_error_in_the_forward_pass_reaches_the_caller_as_it_was():
    model = _Failing().eval()
    with pytest.raises(ArithmeticError, match="no batches"), LayerWalk(model, _batches(), ["a", "b"]) as walk:
        walk.inputs("a")
        walk.inputs("b")


def test_without_room_for_the_walk_inputs_come_from_a_pass_per_layer(monkeypatch):
    model, batches = _Skipped().eval(), _batches()
    assert walk_fits(model, batches, ["a", "b"])
    monkeypatch.setattr(layer_walk, "WALK_MEMORY_BYTES", 2 * 4 * 6 * 6 * 4 * 10 - 1)  # b's input of 10 images
    assert not walk_fits(model, batches, ["a", "b"]) and walk_fits(model, batches, ["a"])
    before = threading.active_count()
    with walked_inputs(model, batches, ["a", "b"]) as inputs_of:
        got = inputs_of("b")
        assert threading.active_count() == before
    assert all(torch.equal(g, layer_input(model, "b", batch)) for g, batch in zip(got, batches))


def test_ridge_by_the_walk_is_the_ridge_of_a_pass_per_layer(resnet20, pruned20, calib, monkeypatch):
    walked, report = recover(resnet20, pruned20, "ridge", calib)
    monkeypatch.setattr(layer_walk, "WALK_MEMORY_BYTES", 0)
    per_layer, again = recover(resnet20, pruned20, "ridge", calib)
    assert report.steps[0]["layers"] == again.steps[0]["layers"] > 15
    for (name, a), b in zip(walked.model.state_dict().items(), per_layer.model.state_dict().values()):
        assert torch.equal(a, b), name
