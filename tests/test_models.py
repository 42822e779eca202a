"""Model specs load the right architectures, weights load safely, bad input fails clearly."""

import json

import pytest
import torch

from conftest import shared_checkpoint
from latprune.cli import main
from latprune.data import evaluate_top1, image_folder
from latprune.errors import LatpruneError
from latprune.models import load_model, load_state_dict_file, parse_input_shape


def test_torchvision_spec_defaults_to_imagenet_shape():
    loaded = load_model("torchvision:resnet18")
    assert loaded.family == "torchvision"
    assert loaded.input_shape == (1, 3, 224, 224)
    assert not loaded.model.training
    assert loaded.model(loaded.example_input()).shape == (1, 1000)


def test_cifar_spec_builds_option_a_resnet_with_the_checkpoint_parameter_count():
    loaded = load_model("cifar:resnet56")
    assert loaded.input_shape == (1, 3, 32, 32)
    assert sum(p.numel() for p in loaded.model.parameters()) == 853_018
    assert len(loaded.model.layer1) == 9


def test_user_factory_spec_and_its_declared_input_shape():
    loaded = load_model("fixtures.user_models:tiny_net")
    assert loaded.family == "custom"
    assert loaded.input_shape == (1, 3, 16, 16)


def test_a_factory_that_takes_an_input_shape_is_built_for_the_shape_asked(tmp_path):
    from latprune.pipeline import analyse
    from latprune.pruned_file import load_pruned, prune_loaded, save_pruned

    spec = "fixtures.user_models:same_padded_net"
    assert load_model(spec).model.built_for == (1, 3, 16, 16)  # no shape asked: the factory's own
    loaded = load_model(spec, input_shape=(1, 3, 15, 15))
    assert loaded.model.built_for == loaded.input_shape == (1, 3, 15, 15)
    assert loaded.model[:2](loaded.example_input()).shape[-2:] == (8, 8)  # "same": ceil(15 / 2)
    assert load_model("fixtures.user_models:tiny_net", input_shape=(1, 3, 20, 20)).input_shape == (1, 3, 20, 20)
    # a pruned file rebuilds its network at the shape it was pruned at
    analysis = analyse(loaded)
    pruned = prune_loaded(analysis, {g.id: list(range(g.width // 2)) for g in analysis.groups})
    save_pruned(pruned, tmp_path / "p.pt")
    again = load_pruned(tmp_path / "p.pt", spec)
    assert again.model[0].padding == (1, 1, 1, 1)  # built for 15 (16 would pad (0, 1, 0, 1))
    with torch.no_grad():
        assert torch.equal(again.model(loaded.example_input()), pruned.model(loaded.example_input()))


def test_a_factory_that_prints_leaves_json_output_clean(capsys):
    assert main(["groups", "--model", "fixtures.user_models:chatty_net", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["groups"] and "Loaded pretrained weights for chatty_net" in err


def test_input_shape_override_and_parsing():
    assert parse_input_shape("2x3x64x48") == (2, 3, 64, 48)
    assert load_model("cifar:resnet20", input_shape=(4, 3, 32, 32)).example_input().shape == (4, 3, 32, 32)
    with pytest.raises(LatpruneError, match="NxCxHxW"):
        parse_input_shape("3x224")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("torchvision:resnet1", "did you mean resnet18"),
        ("cifar:resnet19", "resnet20, resnet32"),
        ("resnet18", "unknown model spec"),
        ("no_such_module_xyz:make", "cannot import module"),
        ("fixtures.user_models:missing", "no callable"),
        ("fixtures.user_models:not_a_model", "not a torch.nn.Module"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(LatpruneError, match=message):
        load_model(spec)


def test_shared_checkpoint_loads_safely_with_prefix_stripped():
    state = load_state_dict_file(shared_checkpoint("resnet20"))
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    loaded = load_model("cifar:resnet20", weights=shared_checkpoint("resnet20"))
    assert torch.equal(loaded.model.conv1.weight, state["conv1.weight"])


def test_weights_of_another_architecture_are_refused():
    with pytest.raises(LatpruneError, match="do not fit cifar:resnet20: .*unexpected keys"):
        load_model("cifar:resnet20", weights=shared_checkpoint("resnet56"))


def test_unsafe_or_foreign_weight_files_are_refused(tmp_path):
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")
    with pytest.raises(LatpruneError, match="cannot read weights"):
        load_state_dict_file(tmp_path / "pickled_module.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LatpruneError, match="cannot read weights"):
        load_state_dict_file(tmp_path / "garbage.pt")
    with pytest.raises(LatpruneError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pt")


def test_pretrained_cifar_resnet20_reaches_its_published_accuracy(cifar_test_dir):
    """On every 5th test image (all ten classes, 3 s instead of 16): 80.45% there, 81.0% on all 10,000."""
    from torch.utils.data import Subset

    loaded = load_model("cifar:resnet20", weights=shared_checkpoint("resnet20"))
    dataset = image_folder(cifar_test_dir, loaded.family, loaded.input_shape)
    assert len(dataset) == 10_000
    every_fifth = Subset(dataset, range(0, len(dataset), 5))
    assert evaluate_top1(loaded.model, every_fifth, progress=False) == pytest.approx(0.8045, abs=0.001)


def test_empty_or_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LatpruneError, match="no images"):
        image_folder(tmp_path, "cifar", (1, 3, 32, 32))
    with pytest.raises(LatpruneError, match="not found"):
        image_folder(tmp_path / "absent", "cifar", (1, 3, 32, 32))
