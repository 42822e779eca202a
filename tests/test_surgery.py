"""Physical pruning produces real, smaller dense networks that are exactly the masked originals."""

import copy

import pytest
import torch
import torch.nn as nn

from conftest import random_kept
from latprune.channel_ops import ChannelMap
from latprune.graph import build_graph, layer_slices
from latprune.groups import find_channel_groups
from latprune.models import load_model
from latprune.onnx_export import export_onnx, run_onnx
from latprune.pruned_file import PrunedModel, load_pruned, prune_loaded, save_pruned

# Small inputs keep the suite fast; vgg keeps 224 because its 7x7 adaptive pool must divide. vgg11_bn and
# densenet121 take 45 s each on 2 cores (densenet's concatenations are also covered in test_groups): run with -m slow.
SLOW = pytest.mark.slow
ARCHITECTURES = [
    ("torchvision:resnet18", (1, 3, 64, 64)),
    ("torchvision:resnet50", (1, 3, 64, 64)),
    ("torchvision:mobilenet_v2", (1, 3, 64, 64)),
    ("torchvision:mobilenet_v3_small", (1, 3, 64, 64)),
    ("torchvision:efficientnet_b0", (1, 3, 64, 64)),
    pytest.param("torchvision:vgg11_bn", (1, 3, 224, 224), marks=SLOW),
    pytest.param("torchvision:densenet121", (1, 3, 64, 64), marks=SLOW),
    ("torchvision:regnet_x_400mf", (1, 3, 64, 64)),
    ("cifar:resnet20", None),
    ("cifar:resnet56", None),
]


def realistic(loaded):
    """Calibrate BatchNorm on random data, as training would, so activations stay O(1).

    Random-init networks without BN statistics reach outputs in the thousands, where an
    absolute ONNX tolerance means nothing; after calibration they look like trained ones.
    """
    model = loaded.model
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((4, *loaded.input_shape[1:]), generator=generator))
    model.eval()
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    return loaded


def masked_copy(model: nn.Module, x: torch.Tensor, groups, kept) -> nn.Module:
    """The dense model with every removed channel zeroed at each of its producers (weights, or the output
    of a parameter-free channel map)."""
    removals = {g.id: [i for i in range(g.width) if i not in set(kept[g.id])] for g in groups}
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for slices in layer_slices(masked, build_graph(masked, x), removals).values():
            for s in slices:
                module = modules[s.layer]
                if s.side == "out" and s.idxs:
                    if isinstance(module, ChannelMap):  # a parameter-free op: zero its removed outputs
                        module.register_forward_hook(_zero_outputs(list(s.idxs)))
                    for name in ("weight", "bias"):
                        param = getattr(module, name, None)
                        if param is not None:
                            param[list(s.idxs)] = 0
    return masked


def _zero_outputs(idxs):
    def hook(module, inputs, output):
        output = output.clone()
        output[:, idxs] = 0
        return output

    return hook


@pytest.mark.parametrize("spec,shape", ARCHITECTURES,
                         ids=[getattr(a, "values", a)[0].split(":")[1] for a in ARCHITECTURES])
def test_random_widths_prune_export_and_reload(spec, shape, tmp_path):
    loaded = realistic(load_model(spec, input_shape=shape))
    x = loaded.example_input(seed=3)
    analysis = find_channel_groups(loaded.model, x)
    kept = random_kept(analysis.groups, seed=hash(spec) % 1000)
    pruned = prune_loaded(loaded, kept)

    # Real smaller layers: every producer's output width equals the kept count.
    modules = dict(pruned.model.named_modules())
    for group in analysis.groups:
        root = modules[group.id]
        width = root.out_features if isinstance(root, nn.Linear) else root.out_channels
        assert width == len(kept[group.id])
    dense_params = sum(p.numel() for p in loaded.model.parameters())
    assert sum(p.numel() for p in pruned.model.parameters()) < dense_params

    # The same function as the dense network with the removed channels zeroed.
    with torch.no_grad():
        out = pruned.model(x)
        expected = masked_copy(loaded.model, x, analysis.groups, kept)(x)
    assert out.shape == expected.shape
    scale = expected.abs().max().item()
    assert (out - expected).abs().max().item() <= 1e-4 * max(scale, 1.0)

    # ONNX Runtime agrees with PyTorch.
    onnx_path = export_onnx(pruned.model, loaded.input_shape, tmp_path / "pruned.onnx")
    assert abs(run_onnx(onnx_path, x) - out.numpy()).max() < 1e-4

    # Save -> load is exact: same architecture, same tensors, same outputs.
    save_pruned(pruned, tmp_path / "pruned.pt")
    reloaded = load_pruned(tmp_path / "pruned.pt")
    original_state, reloaded_state = pruned.model.state_dict(), reloaded.model.state_dict()
    assert list(original_state) == list(reloaded_state)
    for key, tensor in original_state.items():
        assert torch.equal(tensor, reloaded_state[key]), key
    assert str(reloaded.model) == str(pruned.model)
    with torch.no_grad():
        assert torch.equal(reloaded.model(x), out)


def test_keeping_every_channel_changes_nothing():
    loaded = realistic(load_model("torchvision:resnet18", input_shape=(1, 3, 64, 64)))
    x = loaded.example_input()
    analysis = find_channel_groups(loaded.model, x)
    pruned = prune_loaded(loaded, {g.id: list(range(g.width)) for g in analysis.groups})
    with torch.no_grad():
        assert torch.equal(pruned.model(x), loaded.model(x))


def test_pruning_does_not_touch_the_original_model():
    loaded = load_model("cifar:resnet20")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    analysis = find_channel_groups(loaded.model, loaded.example_input())
    prune_loaded(loaded, {analysis.groups[0].id: [0, 1, 2]})
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.model.layer1[0].conv1.out_channels == 16


def test_pruned_file_from_a_newer_version_is_refused(tmp_path):
    loaded = load_model("cifar:resnet20")
    pruned = PrunedModel(loaded.model, loaded.spec, loaded.input_shape, kept={})
    save_pruned(pruned, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(Exception, match="newer latprune"):
        load_pruned(tmp_path / "m.pt")
