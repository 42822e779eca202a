"""`latprune sizes`: the dense network at smaller input sizes, timed against itself at its own size (paired) and
compared on unlabeled images."""

import json

import pytest
import torch
from PIL import Image

from latprune.cli.app import main
from latprune.errors import LatpruneError
from latprune.size_survey import candidate_sizes, check_sizes, output_agreement, survey_sizes

SPEC = "fixtures.user_models:same_padded_net"  # builds its padding for the size asked, 16x16 by default


def test_candidates_are_multiples_of_eight_below_the_shorter_side_down_to_seven_tenths():
    assert candidate_sizes((1, 3, 224, 224)) == [216, 208, 200, 192, 184, 176, 168, 160]
    assert candidate_sizes((1, 3, 240, 320)) == [232, 224, 216, 208, 200, 192, 184, 176, 168]
    assert candidate_sizes((1, 3, 32, 32)) == [24]
    assert candidate_sizes((1, 3, 16, 16)) == []  # 8 is under 0.7 x 16


def test_asked_sizes_are_checked_like_input_size_and_kept_once_largest_first():
    assert check_sizes([176, 208, 176, 192], (1, 3, 224, 224)) == [208, 192, 176]
    with pytest.raises(LatpruneError, match="--input-size must be a whole number of pixels from 8 to 223"):
        check_sizes([192, 224], (1, 3, 224, 224))


def test_agreement_counts_top_classes_and_kl_is_zero_only_for_the_same_outputs():
    reference = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert output_agreement(reference, reference) == (1.0, pytest.approx(0.0, abs=1e-7))
    other = reference.clone()
    other[0] = torch.tensor([0.0, 3.0, 0.0])  # one top class of four changed
    agree, kl = output_agreement(reference, other)
    assert agree == 0.75
    p, q = reference[0].softmax(0), other[0].softmax(0)
    assert kl == pytest.approx(float((p * (p / q).log()).sum()) / 4, rel=1e-5)


def test_the_images_are_read_before_the_timing():
    from latprune.models import load_model

    native = load_model(SPEC)
    measured = []

    def unreadable(loaded):
        raise LatpruneError("no images")

    with pytest.raises(LatpruneError, match="no images"):
        survey_sizes(native, [(12, load_model(SPEC, input_shape=(1, 3, 12, 12)))], measured.append, unreadable)
    assert measured == []


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (24, 20), (40 * i, 255 - 40 * i, 90)).save(folder / f"{i}.png")
    return folder


def test_sizes_command_times_each_size_against_the_model_at_its_own_and_compares_outputs(
        synthetic_backend, photos, capsys):
    """On a backend whose times follow MACs: a smaller size is faster in proportion, each network is built for and
    fed its own size, and every photo is compared."""
    assert main(["sizes", "--model", SPEC, "--backend", "synthetic", "--sizes", "8,12", "--calib", str(photos),
                 "--global-warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    readings = result["sizes"]
    assert [r["size"] for r in readings] == [12, 8] and result["input_shape"] == [1, 3, 16, 16]
    assert [r["input_shape"] for r in readings] == [[1, 3, 12, 12], [1, 3, 8, 8]]
    assert 1 > readings[0]["ratio"]["ratio"] > readings[1]["ratio"]["ratio"] > 0
    assert readings[0]["speedup"] == pytest.approx(1 / readings[0]["ratio"]["ratio"])
    assert 1 > readings[0]["macs_fraction"] > readings[1]["macs_fraction"] > 0
    assert result["images"] == 6 and all(0 <= r["agreement"] <= 1 and r["kl"] >= 0 for r in readings)

    assert main(["sizes", "--model", SPEC, "--backend", "synthetic", "--sizes", "12", "--global-warmup", "0"]) == 0
    text = capsys.readouterr().out
    assert "against itself at 16x16 (paired, same rounds" in text and "12x12" in text
    assert "latprune run --input-size N" in text and "--input-size auto: the largest size" in text


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "16"], "--input-size must be a whole number of pixels from 8 to 15"),
    ([], "no input size to try below 16x16: give --sizes"),
    (["--sizes", "12", "--calib", "no/such/folder"], "calibration folder not found: no/such/folder"),
])
def test_sizes_command_refuses_in_one_line(synthetic_backend, capsys, argv, message):
    assert main(["sizes", "--model", SPEC, "--backend", "synthetic", *argv]) == 1
    assert message in capsys.readouterr().err


def test_sizes_command_refuses_a_model_that_takes_images_as_they_are(capsys):
    assert main(["sizes", "--model", "cifar:resnet20", "--sizes", "24"]) == 1
    assert "a smaller input size needs images that are resized and cropped" in capsys.readouterr().err
