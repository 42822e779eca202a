"""The command line: one JSON object with --json, one-line errors, the documented commands."""

import json
import subprocess
import sys

import pytest

from conftest import shared_checkpoint
from latprune.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_groups_json_is_one_object_on_stdout(capsys):
    code, out, _ = run_cli(capsys, "groups", "--model", "cifar:resnet20", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["model"] == "cifar:resnet20"
    assert len(result["groups"]) == 12  # 9 inner block groups + 3 residual streams (through the pad shortcuts)
    assert {"id", "producers", "consumers", "width", "divisor", "flops_share", "crosses"} <= set(result["groups"][0])
    assert [op["module"] for op in result["channel_ops"]] == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_groups_table_lists_groups_and_exclusions(capsys):
    code, out, _ = run_cli(capsys, "groups", "--model", "cifar:resnet20")
    assert code == 0
    assert "layer3.2.conv1" in out and "12 prunable groups" in out
    assert "layer2.0.conv2: layer2.0.shortcut (pad on channels, output side)" in out
    assert "not prunable" in out and "linear" in out
    # depth: which groups can go to width 0, and why the residual streams cannot
    assert "removes layer3.2.removed_branch" in out and "no: skip channels" in out
    assert "9 residual branches can be removed whole" in out


@pytest.mark.slow  # 45 s: test_models checks resnet20's published accuracy through the same path
def test_eval_reports_resnet56_accuracy(capsys, cifar_test_dir):
    weights = shared_checkpoint("resnet56")
    code, out, err = run_cli(
        capsys, "eval", "--model", "cifar:resnet56", "--weights", str(weights), "--data", str(cifar_test_dir), "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 10_000
    assert result["top1"] == pytest.approx(0.832, abs=0.001)


def test_export_writes_onnx_matching_pytorch(capsys, tmp_path):
    target = tmp_path / "m.onnx"
    code, out, _ = run_cli(capsys, "export", "--model", "cifar:resnet20", "--out", str(target), "--json")
    assert code == 0 and target.stat().st_size > 0
    assert json.loads(out)["max_abs_diff"] < 1e-4


def test_eval_of_a_saved_pruned_model(capsys, tmp_path, cifar_test_dir):
    from latprune.models import load_model
    from latprune.pruned_file import prune_loaded, save_pruned

    loaded = load_model("cifar:resnet20", weights=shared_checkpoint("resnet20"))
    save_pruned(prune_loaded(loaded, {"layer1.0.conv1": list(range(16))}), tmp_path / "p.pt")
    code, out, _ = run_cli(capsys, "eval", "--pruned", str(tmp_path / "p.pt"), "--data", str(cifar_test_dir),
                           "--limit", "500", "--json")
    assert code == 0
    assert json.loads(out)["images"] == 500


@pytest.mark.parametrize(
    "argv,message",
    [
        (["groups", "--model", "torchvision:nope"], "unknown torchvision classification model"),
        (["eval", "--model", "cifar:resnet20", "--data", "/nonexistent/dir"], "data folder not found"),
        (["groups", "--pruned", "/nonexistent.pt"], "pruned model file not found"),
    ],
)
def test_bad_input_is_one_line_without_traceback(capsys, argv, message):
    """In this process; the console script itself refuses the same way in test_hostile_inputs.py."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_every_subcommand_has_help(capsys):
    """In this process (each console-script start costs seconds of imports); the script itself once."""
    from latprune.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0 and "--json" in capsys.readouterr().out, name
    proc = subprocess.run([sys.executable, "-m", "latprune.cli", "measure", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--max-seconds" in proc.stdout
