"""Hostile input and faults, through the console script: every mistake is one line and a non-zero exit,
and no input file changes (checksums of every file in the workspace before and after)."""

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from latprune.cli import main
from latprune.models import load_model
from latprune.profiler.store import ProfileStore
from latprune.pruned_file import load_pruned

LATPRUNE = [sys.executable, "-m", "latprune.cli"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, profiled_resnet20):
    """Files a user might point latprune at, good and bad."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    torch.save(load_model("cifar:resnet20").model.state_dict(), root / "w20.th")
    torch.save(load_model("cifar:resnet20").model.state_dict(), root / "other_w20.th")
    torch.save({"net": torch.nn.Linear(2, 2)}, root / "pickled.pt")
    (root / "notes.txt").write_text("not a checkpoint\n")
    for name in ("calib", "eval/cat", "eval/dog"):
        (root / name).mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 30)).save(root / "calib" / f"{i}.png")
        Image.new("RGB", (32, 32), (30, 60 * i, 90)).save(root / "eval" / ("cat" if i % 2 else "dog") / f"{i}.png")
    (root / "empty").mkdir()
    (root / "a_folder").mkdir()
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "garbage.json").write_text("{not json")
    (root / "newer.json").write_text('{"format": "latprune-plan", "version": 99}')
    (root / "broken_mod.py").write_text("def make(:\n")
    (root / "raising_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (root / "good_mod.py").write_text("import torch\n\ndef make():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    shutil.copy(profiled_resnet20, root / "profile.sqlite")
    for name, statement in (("other.sqlite", "CREATE TABLE t (x)"),
                            ("newer.sqlite", "UPDATE meta SET value = '99' WHERE key = 'schema_version'")):
        if name == "newer.sqlite":
            ProfileStore(root / name).close()
        conn = sqlite3.connect(root / name)
        with conn:
            conn.execute(statement)
        conn.close()  # closed now, so the files do not change later when a checkpoint would run
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for args in (["--weights", "w20.th", "--out", "p.pt"], ["--out", "random_p.pt"]):
        subprocess.run([*LATPRUNE, "prune", "--model", "cifar:resnet20", "--uniform", "0.5", *args], cwd=root,
                       env=env, check=True, capture_output=True)
    # the stored fit, so that later commands read the profile without writing anything beside it
    subprocess.run([*LATPRUNE, "fit", "--backend", "torch-cpu", "--db", "profile.sqlite"], cwd=root, env=env,
                   check=True, capture_output=True)
    return root, env


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(("-wal", "-shm"))}


def run(workspace, *argv, timeout=120):
    root, env = workspace
    return subprocess.run([*LATPRUNE, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


PROFILE = ["--backend", "torch-cpu", "--db", "profile.sqlite"]
R20 = ["--model", "cifar:resnet20"]
RECOVER = ["recover", "--model", "cifar:resnet20", "--recovery", "bn", "--calib", "calib", "--out", "r.pt"]

CASES = {
    # model specs
    "unknown module": (["groups", "--model", "nosuch_module:make"], 1, "cannot import module 'nosuch_module'"),
    "unknown torchvision model": (["groups", "--model", "torchvision:resnet999"], 1, "unknown torchvision"),
    "unknown cifar model": (["groups", "--model", "cifar:resnet7"], 1, "unknown CIFAR model"),
    "spec without a colon": (["groups", "--model", "resnet20"], 1, "unknown model spec"),
    "module with a syntax error": (["groups", "--model", "broken_mod:make"], 1, "SyntaxError"),
    "module raising at import": (["groups", "--model", "raising_mod:make"], 1, "RuntimeError: boom at import"),
    "factory not in module": (["groups", "--model", "good_mod:missing"], 1, "has no callable 'missing'"),
    # weights
    "missing weights": (["groups", *R20, "--weights", "missing.th"], 1, "weights file not found"),
    "text file as weights": (["groups", *R20, "--weights", "notes.txt"], 1, "cannot read weights"),
    "pickled module as weights": (["groups", *R20, "--weights", "pickled.pt"], 1, "cannot read weights"),
    "weights of another architecture": (["groups", "--model", "cifar:resnet56", "--weights", "w20.th"], 1,
                                        "do not fit cifar:resnet56"),
    "pruned file as weights": (["groups", *R20, "--weights", "p.pt"], 1, "pass it with --pruned"),
    # shapes
    "three sizes": (["groups", *R20, "--input-shape", "1x3x32"], 1, "four positive sizes"),
    "zero size": (["groups", *R20, "--input-shape", "1x3x0x32"], 1, "four positive sizes"),
    "letters": (["groups", *R20, "--input-shape", "axbxcxd"], 1, "NxCxHxW"),
    "wrong channels": (["groups", *R20, "--input-shape", "1x1x32x32"], 1, "model failed on an input of shape"),
    # budgets
    "nan budget": (["plan", *R20, *PROFILE, "--budget-ms", "nan"], 2, "must be a finite number"),
    "infinite speedup": (["plan", *R20, *PROFILE, "--speedup", "inf"], 2, "must be a finite number"),
    "speedup of 1": (["plan", *R20, *PROFILE, "--speedup", "1"], 1, "greater than 1"),
    "negative budget": (["plan", *R20, *PROFILE, "--budget-ms", "-3"], 1, "positive finite number"),
    "budget the dense model meets": (["plan", *R20, *PROFILE, "--budget-ms", "1e300"], 1, "nothing to prune"),
    "budget below the fastest plan": (["plan", *R20, *PROFILE, "--budget-ms", "0.000001"], 1,
                                      "below the fastest achievable plan"),
    "run slower than dense": (["run", *R20, "--speedup", "0.5", "--out", "run_out"], 1, "greater than 1"),
    "run without a budget": (["run", *R20, "--out", "run_out"], 1, "exactly one of --budget-ms and --speedup"),
    "run budget without model": (["run", "--budget-ms", "3", "--out", "run_out"], 1, "need --model SPEC"),
    # numbers
    "zero widths": (["profile", *R20, *PROFILE, "--widths", "0"], 2, "--widths: must be at least 1"),
    "zero rounds": (["profile", *R20, *PROFILE, "--rounds", "0"], 2, "--rounds: must be at least 1"),
    "negative runs": (["profile", *R20, *PROFILE, "--runs", "-1"], 2, "--runs: must be at least 1"),
    "zero step": (["profile", *R20, *PROFILE, "--step", "0"], 2, "--step: must be at least 1"),
    "zero bins": (["plan", *R20, *PROFILE, "--speedup", "2", "--bins", "0"], 2, "--bins: must be at least 1"),
    "zero batch size": (["eval", *R20, "--data", "eval", "--batch-size", "0"], 2, "--batch-size: must be at least"),
    "zero limit": (["eval", *R20, "--data", "eval", "--limit", "0"], 2, "--limit: must be at least 1"),
    "zero calibration size": (["prune", *R20, "--uniform", "0.5", "--recovery", "bn", "--calib", "calib",
                               "--calib-size", "0", "--out", "x.pt"], 2, "--calib-size: must be at least 1"),
    "sparsity above 1": (["sparsify", *R20, "--sparsity", "1.5", "--out", "s.pt"], 1, "sparsity must be in"),
    "nan keep ratio": (["prune", *R20, "--uniform", "nan", "--out", "x.pt"], 2, "must be a finite number"),
    "not a number": (["prune", *R20, "--uniform", "half", "--out", "x.pt"], 2, "not a number: 'half'"),
    # data folders
    "missing eval folder": (["eval", *R20, "--data", "missing"], 1, "data folder not found"),
    "eval folder without classes": (["eval", *R20, "--data", "empty"], 1, "no images"),
    "calibration folder without images": (["prune", *R20, "--uniform", "0.5", "--recovery", "bn", "--calib", "empty",
                                           "--out", "x.pt"], 1, "no calibration images"),
    "recovery without images": (["prune", *R20, "--uniform", "0.5", "--recovery", "bn", "--out", "x.pt"], 1,
                                "needs unlabeled calibration images"),
    "run with a missing eval folder": (["run", *R20, "--speedup", "2", "--eval", "missing", "--out", "run_out"], 1,
                                       "evaluation folder not found"),
    # plan files
    "plan file holding a list": (["prune", *R20, "--plan", "list.json", "--out", "x.pt"], 1, "not a latprune plan"),
    "plan file not JSON": (["prune", *R20, "--plan", "garbage.json", "--out", "x.pt"], 1, "cannot read plan"),
    "missing plan file": (["prune", *R20, "--plan", "missing.json", "--out", "x.pt"], 1, "plan file not found"),
    "plan from a newer latprune": (["prune", *R20, "--plan", "newer.json", "--out", "x.pt"], 1, "newer"),
    # pruned files
    "weights as a pruned file": ([*RECOVER, "--pruned", "w20.th"], 1, "not a latprune pruned model"),
    "recover a random-weights pruned model": ([*RECOVER, "--pruned", "random_p.pt"], 1, "pass --weights"),
    "recover toward other weights": ([*RECOVER, "--pruned", "p.pt", "--weights", "other_w20.th"], 1,
                                     "not the weights the pruned model was made from"),
    "recover with another model": (["recover", "--model", "cifar:resnet56", "--pruned", "p.pt", "--weights",
                                    "w20.th", "--recovery", "bn", "--calib", "calib", "--out", "r.pt"], 1,
                                   "made from cifar:resnet20"),
    "missing pruned file": (["measure", "--pruned", "missing.pt", "--backend", "torch-cpu"], 1,
                            "pruned model file not found"),
    # output paths
    "output over the weights": (["prune", *R20, "--weights", "w20.th", "--uniform", "0.5", "--out", "w20.th"], 1,
                                "is one of this command's inputs"),
    "output over the pruned input": ([*RECOVER[:-2], "--pruned", "p.pt", "--weights", "w20.th", "--out", "p.pt",
                                      "--force"], 1, "is one of this command's inputs"),
    "existing output": (["prune", *R20, "--uniform", "0.5", "--out", "p.pt"], 1, "exists; pass --force"),
    "output in a missing folder": (["prune", *R20, "--uniform", "0.5", "--out", "nowhere/x.pt"], 1,
                                   "does not exist"),
    "output is a folder": (["sparsify", *R20, "--sparsity", "0.5", "--out", "a_folder"], 1, "is a folder"),
    "run output is a file": (["run", *R20, "--speedup", "2", "--out", "notes.txt"], 1, "is a file"),
    "export over the weights": (["export", *R20, "--weights", "w20.th", "--out", "w20.th", "--force"], 1,
                                "is one of this command's inputs"),
    # databases
    "text file as database": (["devices", "--db", "notes.txt"], 1, "unreadable or corrupt"),
    "another program's database": (["devices", "--db", "other.sqlite"], 1, "not a latprune profile database"),
    "profile into another program's database": (["profile", *R20, "--backend", "torch-cpu", "--db", "other.sqlite"],
                                                1, "not a latprune profile database"),
    "newer database schema": (["devices", "--db", "newer.sqlite"], 1, "newer than this latprune"),
    "missing database": (["devices", "--db", "missing.sqlite"], 1, "no profile database at missing.sqlite"),
    "folder as database": (["plan", *R20, "--backend", "torch-cpu", "--db", "a_folder", "--speedup", "2"], 1,
                           "is a folder"),
    "unknown backend": (["fit", "--backend", "tpu", "--db", "profile.sqlite"], 1, "unknown backend 'tpu'"),
}


def run_main(workspace, monkeypatch, capsys, argv) -> tuple[int, str, str]:
    """The console script's entry point in this process (the exit status argparse or main gives)."""
    root = workspace[0]
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code, out, err, expected_code, message):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected_code, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(workspace, monkeypatch, capsys, case):
    argv, code, message = CASES[case]
    before = checksums(workspace[0])
    assert_refused(*run_main(workspace, monkeypatch, capsys, argv), code, message)
    assert checksums(workspace[0]) == before


@pytest.mark.parametrize("case", ["module with a syntax error", "nan budget", "existing output",
                                  "another program's database", "recover a random-weights pruned model"])
def test_the_console_script_refuses_the_same_way(workspace, case):
    argv, code, message = CASES[case]
    before = checksums(workspace[0])
    result = run(workspace, *argv)
    assert_refused(result.returncode, result.stdout, result.stderr, code, message)
    assert checksums(workspace[0]) == before


def test_plan_json_never_holds_nan(workspace):
    result = run(workspace, "plan", *R20, *PROFILE, "--speedup", "1.2", "--no-verify", "--json")
    assert result.returncode == 0, result.stderr
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout


def test_recover_without_weights_uses_the_recorded_dense_weights(workspace):
    root = workspace[0]
    result = run(workspace, *RECOVER[:-2], "--pruned", "p.pt", "--out", "recovered.pt")
    assert result.returncode == 0, result.stderr
    recovered = load_pruned(root / "recovered.pt")
    assert recovered.metadata["dense"]["weights"] == str(root / "w20.th")
    (root / "recovered.pt").unlink()


def test_eval_warns_when_folder_classes_cannot_be_the_models(workspace):
    result = run(workspace, "eval", *R20, "--data", "eval")
    assert result.returncode == 0
    assert "2 class folders but the model has 10 outputs" in result.stderr


def test_a_locked_database_is_waited_for_then_reported(workspace, tmp_path):
    root, env = workspace
    db = tmp_path / "locked.sqlite"
    shutil.copy(root / "profile.sqlite", db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = subprocess.run([*LATPRUNE, "profile", *R20, "--backend", "torch-cpu", "--db", str(db)], cwd=root,
                                env={**env, "LATPRUNE_DB_TIMEOUT_S": "1"}, capture_output=True, text=True, timeout=120)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1
    assert "is locked by another process (waited 1 s)" in result.stderr.strip().splitlines()[-1]


def test_a_read_only_database_is_named_so(workspace, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through file permissions")
    root, _ = workspace
    db = tmp_path / "ro.sqlite"
    shutil.copy(root / "profile.sqlite", db)
    db.chmod(0o444)
    result = run(workspace, "profile", *R20, "--backend", "torch-cpu", "--db", str(db))
    assert result.returncode == 1 and "read-only" in result.stderr


def _start(workspace, *argv) -> subprocess.Popen:
    root, env = workspace
    return subprocess.Popen([*LATPRUNE, *argv], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(process: subprocess.Popen, needle: str, timeout: float = 60) -> None:
    """Read stderr until ``needle`` appears (the job reached the stage worth interrupting)."""
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        char = process.stderr.read(1)
        if not char:
            break
        seen += char
        if needle in seen:
            return
    raise AssertionError(f"never saw {needle!r}: {seen[-500:]}")


def test_sigterm_during_recovery_leaves_no_output_and_one_line(workspace):
    root = workspace[0]
    process = _start(workspace, "prune", *R20, "--weights", "w20.th", "--uniform", "0.5", "--recovery",
                     "two-stage", "--calib", "calib", "--out", "sigterm.pt")
    _wait_for(process, "phase")
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 143
    assert rest.strip().splitlines()[-1] == "latprune prune: terminated" and "Traceback" not in rest
    assert not any(p.name.startswith(("sigterm.pt", ".sigterm.pt")) for p in root.iterdir())


def test_kill_9_during_a_write_never_leaves_a_partial_file_under_the_final_name(workspace):
    """The pruned file is written to a temporary name and renamed: a process killed at any moment leaves
    either no file or a complete one."""
    root = workspace[0]
    outcomes = set()
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        target = root / "killed.pt"
        process = _start(workspace, "sparsify", *R20, "--weights", "w20.th", "--sparsity", "0.5", "--out",
                         "killed.pt")
        time.sleep(delay)
        process.kill()
        process.communicate(timeout=60)
        if target.exists():
            assert load_pruned(target).spec == "cifar:resnet20"  # complete, not truncated
            outcomes.add("complete")
            target.unlink()
        else:
            outcomes.add("absent")
        for leftover in root.glob(".killed.pt.*.tmp"):  # what a killed writer may leave: never the final name
            leftover.unlink()
    assert outcomes


def test_ctrl_c_during_an_onnx_runtime_profile_prints_one_line(workspace, tmp_path):
    """Ctrl-C reaches the whole process group, the ONNX Runtime worker included: only 'interrupted' is said."""
    root, env = workspace
    process = subprocess.Popen([*LATPRUNE, "profile", *R20, "--backend", "ort-cpu", "--db", str(tmp_path / "p.sqlite"),
                                "--variants", "4", "--widths", "4", "--global-warmup", "0"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(process, "profile ort-cpu")
    os.killpg(process.pid, signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "latprune profile: interrupted"
    with ProfileStore(tmp_path / "p.sqlite", readonly=True) as store:  # what was committed is intact
        assert store.summaries() is not None
