"""A model's own image preprocessing: stated by its factory or with --mean/--std/--resize, used for calibration
and evaluation, and recorded in plans and pruned files."""

import sys

import pytest
import torch
from PIL import Image

from latprune import pipeline
from latprune.data import calibration_tensor, image_folder
from latprune.errors import LatpruneError
from latprune.planner.plan import Plan
from latprune.preprocessing import Preprocessing
from latprune.pruned_file import load_pruned, save_pruned

LITE = {"mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502], "resize": 40}


@pytest.fixture
def stated_module(tmp_path, monkeypatch):
    """A user's factory whose model states its preprocessing (as a wrapped EfficientNet-Lite would)."""
    (tmp_path / "stated_mod.py").write_text(
        "import torch\n\n"
        "def make():\n"
        "    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),\n"
        "                                torch.nn.Flatten(), torch.nn.Linear(8, 2))\n"
        f"    model.latprune_preprocessing = {LITE!r}\n"
        "    model.input_shape = (1, 3, 32, 32)\n"
        "    return model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "stated_mod:make"
    sys.modules.pop("stated_mod", None)


@pytest.fixture
def photos(tmp_path):
    """Two 64x48 photos of one grey level (128) in an ImageFolder."""
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "photos" / name / "0.png")
    return tmp_path / "photos"


def test_the_model_states_its_preprocessing_and_options_replace_parts(stated_module):
    loaded = pipeline.load(stated_module)
    assert loaded.preprocessing == Preprocessing(mean=(0.498,) * 3, std=(0.502,) * 3, resize=40)
    overridden = pipeline.load(stated_module, preprocessing={"std": [0.25, 0.25, 0.25]})
    assert overridden.preprocessing.std == (0.25,) * 3 and overridden.preprocessing.mean == (0.498,) * 3
    assert pipeline.load("cifar:resnet20").preprocessing == Preprocessing.for_family("cifar")


def test_calibration_and_evaluation_read_images_with_it(stated_module, photos):
    loaded = pipeline.load(stated_module)
    images = calibration_tensor(photos, loaded.preprocessing, loaded.input_shape)
    assert images.shape == (2, 3, 32, 32)  # 64x48 resized to 40 on the short side, then cropped to 32x32
    assert torch.allclose(images, torch.full_like(images, (128 / 255 - 0.498) / 0.502), atol=1e-6)
    dataset = image_folder(photos, loaded.preprocessing, loaded.input_shape)
    assert torch.allclose(dataset[0][0], images[0])
    with pytest.raises(LatpruneError, match="takes 32x32 images as they are"):  # the CIFAR default resizes nothing
        pipeline.evaluate(loaded.model, str(photos), "cifar", loaded.input_shape, progress=False)


def test_pruned_files_and_plans_record_it(stated_module, tmp_path):
    loaded = pipeline.load(stated_module)
    analysis = pipeline.analyse(loaded)
    plan = pipeline.uniform(analysis, 0.5)
    assert plan.preprocessing == loaded.preprocessing
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").preprocessing == plan.preprocessing
    pruned = pipeline.prune(analysis, plan)
    save_pruned(pruned, tmp_path / "p.pt")
    assert load_pruned(tmp_path / "p.pt", stated_module).preprocessing == loaded.preprocessing
    with pytest.raises(LatpruneError, match="records its preprocessing"):
        pipeline.load_pruned_or_dense(stated_module, pruned=str(tmp_path / "p.pt"), preprocessing={"resize": 64})
    other = pipeline.analyse(pipeline.load(stated_module, preprocessing={"resize": 64}))
    with pytest.raises(LatpruneError, match="another image preprocessing"):
        pipeline.prune(other, plan)


@pytest.mark.parametrize("data, message", [
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.0, 0.5]}, "std must be positive"),
    ({"mean": "0.5"}, "mean must be a list of numbers"),
    ({"mean": [0.5, float("nan"), 0.5]}, "mean must be finite numbers"),
    ({"resize": 2.5}, "resize must be a positive integer"),
    ({"crop": 224}, "unknown field 'crop'"),
])
def test_a_bad_preprocessing_record_is_one_error_naming_it(data, message):
    with pytest.raises(LatpruneError, match=message):
        Preprocessing.from_json(data, "model.pt")


IMAGENET_SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def test_efficientnet_lite0_loads_with_its_own_preprocessing_and_classifies_imagenet_photos(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the optional [imagenet] packages are not installed")
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip("../shared/data/imagenet-sample is not here")
    loaded = pipeline.load("latprune.models.efficientnet_lite:lite0")
    assert loaded.input_shape == (1, 3, 224, 224)
    assert loaded.preprocessing == Preprocessing(mean=(0.498,) * 3, std=(0.502,) * 3, resize=256)
    classes = sorted(p.name for p in IMAGENET_SAMPLE.iterdir())[:20]  # 20 photos, one per class, labels 0-19
    for index, wnid in enumerate(classes):
        photo = next((IMAGENET_SAMPLE / wnid).iterdir())
        (tmp_path / f"{index:02d}").mkdir()
        (tmp_path / f"{index:02d}" / photo.name).symlink_to(photo)
    dataset = image_folder(tmp_path, loaded.preprocessing, loaded.input_shape)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        predicted = loaded.model(images).argmax(1)
    correct = (predicted == torch.arange(20)).sum().item()
    assert correct >= 14  # 87% top-1 on the whole sample set; torchvision's mean/std or Swish would score far less


def test_efficientnet_lite0_is_built_for_the_input_size_asked():
    """Its "same" padding is computed once for an input size: at 208 the last stride-2 layer must pad a 13x13 map
    to give 7x7 (TensorFlow's ceil(13 / 2)), where the network built for 224 gives 6x6."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the optional [imagenet] packages are not installed")
    native = pipeline.load("latprune.models.efficientnet_lite:lite0")
    sized = pipeline.load("latprune.models.efficientnet_lite:lite0", input_shape=(1, 3, 208, 208))
    assert sized.input_shape == (1, 3, 208, 208)
    x = torch.randn(1, 3, 208, 208)
    with torch.no_grad():
        assert sized.model.extract_features(x).shape[-2:] == (7, 7)
        assert native.model.extract_features(x).shape[-2:] == (6, 6)
    want = native.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in sized.model.state_dict().items())  # the same pre-trained weights


CALIB = IMAGENET_SAMPLE.parent / "imagen-calib"


def test_efficientnet_lite0_prunes_with_depth_exports_and_recovers(tmp_path):
    """Lite0 through the stages on real photos: its 9 skip blocks found removable (its convolutions carry "same"
    padding, its blocks take a drop-connect rate), a plan removing two of them and thinning every group prunes
    exactly against the masked dense network, exports to ONNX with parity, saves and reloads, and bn, two-stage,
    ridge and asr recovery run."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the optional [imagenet] packages are not installed")
    if not CALIB.is_dir():
        pytest.skip("../shared/data/imagen-calib is not here")
    from latprune.channels import masked_mismatch
    from latprune.data import calibration_tensor
    from latprune.pruned_file import load_pruned, prune_loaded, save_pruned
    from latprune.recovery import ReconstructionSettings, recover

    loaded = pipeline.load("latprune.models.efficientnet_lite:lite0")
    analysis = pipeline.analyse(loaded)
    assert len(analysis.groups) == 24 and len(analysis.branches) == 9
    assert {b.id for b in analysis.branches} >= {"_blocks.2.removed_branch", "_blocks.14.removed_branch"}
    gone = {gid for b in analysis.branches[::4] for gid in b.groups}
    kept = {g.id: [] if g.id in gone else list(range(0, g.width, 3)) + list(range(1, g.width, 3))
            for g in analysis.groups}
    pruned = prune_loaded(analysis, kept)
    removed = {g.id: sorted(set(range(g.width)) - set(kept[g.id])) for g in analysis.groups}
    calib = calibration_tensor(CALIB, loaded.preprocessing, loaded.input_shape, size=8, seed=0)
    assert masked_mismatch(pruned.model, analysis.model, analysis.layout, removed, calib[:2]) is None
    assert pipeline.export(pruned.model, loaded.input_shape, tmp_path / "p.onnx") < 1e-3
    save_pruned(pruned, tmp_path / "p.pt")
    again = load_pruned(tmp_path / "p.pt", spec="latprune.models.efficientnet_lite:lite0")
    with torch.no_grad():
        assert torch.equal(again.model.eval()(calib[:2]), pruned.model.eval()(calib[:2]))
    with torch.no_grad():
        dense_out = analysis.model.eval()(calib)
        error = {"none": float((pruned.model.eval()(calib) - dense_out).pow(2).mean())}
    quick = ReconstructionSettings(phase1_epochs=1, phase2_epochs=1)  # one step of each phase, not five
    for recipe in ("bn", "two-stage", "ridge", "asr"):
        recovered, _ = recover(analysis, pruned, recipe, calib, quick)
        with torch.no_grad():
            out = recovered.model.eval()(calib)
        assert out.shape == dense_out.shape and torch.isfinite(out).all(), recipe
        error[recipe] = float((out - dense_out).pow(2).mean())
    assert error["two-stage"] < 0.5 * error["none"], error  # reconstruction moves the logits toward the dense ones
