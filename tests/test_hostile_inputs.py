"""Hostile input and faults, through the console script: every mistake is one line and a non-zero exit,
and no input file changes (checksums of every file in the workspace before and after)."""

import contextlib
import hashlib
import io
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

from fixtures.budgets import budget_between
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
    with contextlib.chdir(root), contextlib.redirect_stdout(io.StringIO()):  # in this process: no imports to pay
        for args in (["--weights", "w20.th", "--out", "p.pt"], ["--out", "random_p.pt"]):
            assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", *args]) == 0
        # the stored fit, so that later commands read the profile without writing anything beside it
        assert main(["fit", "--backend", "torch-cpu", "--db", "profile.sqlite"]) == 0
    _crafted_pruned_files(root)
    _plan_files(root)
    _image_folders(root)
    (root / "evil_mod.py").write_text("open('pwned', 'w').write('imported')\n\ndef make():\n    raise SystemExit\n")
    (root / "user_out").mkdir()
    (root / "user_out" / "plan.json").write_text('{"mine": true}')
    (root / "user_out" / "report.html").write_text("<p>my report</p>")
    (root / "earlier_run").mkdir()
    (root / "earlier_run" / ".latprune-run").write_text('{"format": "latprune-run-folder", "version": 1}\n')
    (root / "earlier_run" / "plan.json").write_text("{}")
    return root, env


def _crafted_pruned_files(root: Path) -> None:
    """Pruned files a hostile user could hand over: specs naming code, and every field of the wrong type."""
    payload = torch.load(root / "p.pt", weights_only=True)
    crafted = {
        "abort.pt": {"spec": "os:abort"},
        "evil.pt": {"spec": "evil_mod:make"},
        "str_version.pt": {"version": "1"},
        "int_shape.pt": {"input_shape": 32},
        "float_kept.pt": {"kept": {"conv1": [0.5, 1.0]}},
        "huge_input.pt": {"input_shape": [1, 3, 4096, 4096]},
        "tensor_spec.pt": {"spec": torch.zeros(2)},
    }
    for name, changes in crafted.items():
        torch.save({**payload, **changes}, root / name)
    torch.save({k: v for k, v in payload.items() if k != "kept"}, root / "no_kept.pt")


def _plan_files(root: Path) -> None:
    """A good resnet20 plan and copies broken one field at a time."""
    import copy
    import json

    from latprune import pipeline

    plan = pipeline.uniform(pipeline.analyse(load_model("cifar:resnet20")), 0.5)
    plan.save(root / "good_plan.json")
    good = json.loads((root / "good_plan.json").read_text())

    def broken(name: str, edit) -> None:
        data = copy.deepcopy(good)
        edit(data)
        (root / name).write_text(json.dumps(data))

    first = good["groups"][0]
    broken("width_zero.json", lambda d: d["groups"][0].update(width=0))
    broken("width_zero_stem.json", lambda d: d["groups"][0].update(width=0, kept=[]))
    broken("width_negative.json", lambda d: d["groups"][0].update(width=-3))
    broken("width_huge.json", lambda d: d["groups"][0].update(width=1000))
    broken("width_text.json", lambda d: d["groups"][0].update(width="8"))
    broken("float_index.json", lambda d: d["groups"][0].update(kept=[0.5] + first["kept"][1:]))
    broken("group_twice.json", lambda d: d["groups"].append({**first, "kept": [0], "width": 1}))
    broken("group_missing.json", lambda d: d["groups"].pop())
    broken("relabelled.json", lambda d: d.update(model="cifar:resnet56"))
    broken("version_text.json", lambda d: d.update(version="1.0"))
    broken("kept_null.json", lambda d: d["groups"][0].update(kept=None))
    broken("kept_nested.json", lambda d: d["groups"][0].update(kept=[[0, 1]]))
    broken("kept_twice.json", lambda d: d["groups"][0].update(kept=[0, 0], width=2))
    broken("kept_beyond.json", lambda d: d["groups"][0].update(kept=[0, 999], width=2))
    broken("full_width_other.json", lambda d: d["groups"][0].update(full_width=first["full_width"] * 2))
    broken("groups_not_list.json", lambda d: d.update(groups={"conv1": [0]}))
    broken("group_not_object.json", lambda d: d["groups"].__setitem__(0, "conv1"))
    broken("no_model.json", lambda d: d.pop("model"))
    broken("plan_shape.json", lambda d: d.update(input_shape=[1, 3, 32]))
    broken("unknown_group.json", lambda d: d["groups"][0].update(id="no.such.layer"))
    broken("nan_budget.json", lambda d: d.update(budget_ms=float("nan")))  # json writes the NaN literal
    loop_round = {"round": 1, "aim_ms": 1.0, "correction": 1.0, "predicted_ms": 1.0, "measured_ms": 1.0,
                  "raw_median_ms": 1.0, "relative_to_dense": 0.5, "p10_ms": 1.0, "p90_ms": 1.0, "spread": 0.1,
                  "dense_measured_ms": 2.0, "budget_ms": 1.0, "band_ms": [0.97, 1.0], "meets": True, "in_band": True,
                  "new_layer_rows": 3, "timing_s": 1.0}
    verified = {"verified": True, "status": "in band", "band_ms": [0.97, 1.0], "chosen_round": 1, "rounds_used": 1,
                "rounds": [loop_round]}
    broken("band_text.json", lambda d: d.update(verification={**verified, "band_ms": "0.97-1.0"}))
    broken("chosen_round_beyond.json", lambda d: d.update(verification={**verified, "chosen_round": 7}))
    broken("round_meets_text.json", lambda d: d.update(verification={**verified, "rounds": [{**loop_round,
                                                                                              "meets": "yes"}]}))
    broken("search_without_damage.json", lambda d: d.update(search={"objective": "x", "chosen_from": "plain DP"}))
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "latin1.json").write_bytes(b'{"format": "latprune-plan", "model": "caf\xe9"}')


def _image_folders(root: Path) -> None:
    """Evaluation folders with a truncated JPEG, a file that is no image, and images of two sizes."""
    import io

    for folder in ("truncated_eval", "garbage_eval", "mixed_eval"):
        for cls in ("cat", "dog"):
            (root / folder / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 200, 30)).save(root / folder / cls / "ok.png")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 30)).save(buffer, format="JPEG")
    (root / "truncated_eval" / "cat" / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    (root / "garbage_eval" / "dog" / "noise.jpg").write_bytes(b"\x00not an image at all" * 10)
    Image.new("RGB", (40, 40), (0, 0, 0)).save(root / "mixed_eval" / "dog" / "big.png")


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
PRUNE_PLAN = ["prune", "--model", "cifar:resnet20", "--out", "x.pt", "--plan"]

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
    "zero std": (["eval", *R20, "--data", "eval", "--std", "0.2,0,0.2"], 1, "preprocessing std must be positive"),
    "two means for RGB": (["eval", *R20, "--data", "eval", "--mean", "0.5,0.5"], 1,
                          "preprocessing has 2 means but 3 standard deviations"),
    "nan mean": (["eval", *R20, "--data", "eval", "--mean", "nan,0,0"], 2, "--mean: must be a finite number"),
    "preprocessing other than the pruned file's": (["eval", "--pruned", "p.pt", "--data", "eval", "--resize", "40"],
                                                    1, "records its preprocessing"),
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
    # pruned files that name code: a module:callable is imported only when the user names the same spec
    "measure a pruned file naming os:abort": (["measure", "--pruned", "abort.pt", "--backend", "torch-cpu"], 1,
                                              "names the model factory 'os:abort'"),
    "groups of a pruned file naming a module": (["groups", "--pruned", "evil.pt"], 1,
                                                "imports code that a file names only when you name the same spec"),
    "eval of a pruned file naming a module": (["eval", "--pruned", "evil.pt", "--data", "eval"], 1,
                                              "--model evil_mod:make"),
    "export of a pruned file naming a module": (["export", "--pruned", "evil.pt", "--out", "e.onnx"], 1,
                                                "names the model factory 'evil_mod:make'"),
    "predict of a pruned file naming a module": (["predict", "--pruned", "evil.pt", *PROFILE], 1,
                                                 "names the model factory 'evil_mod:make'"),
    "pruned file naming another module than --model": (["groups", "--pruned", "evil.pt", "--model", "good_mod:make"],
                                                       1, "made from evil_mod:make, not from good_mod:make"),
    # pruned files with fields of the wrong type
    "pruned file with a text version": (["groups", "--pruned", "str_version.pt"], 1, "version must be an integer"),
    "pruned file with an integer input shape": (["groups", "--pruned", "int_shape.pt"], 1,
                                                "input_shape must be a list of integers"),
    "pruned file without kept channels": (["groups", "--pruned", "no_kept.pt"], 1, "is incomplete: no kept"),
    "pruned file with fractional channels": (["groups", "--pruned", "float_kept.pt"], 1,
                                             "kept['conv1'][0] must be an integer, got 0.5"),
    "pruned file with a tensor as spec": (["groups", "--pruned", "tensor_spec.pt"], 1,
                                          "spec must be a non-empty string"),
    "pruned file with a huge input": (["measure", "--pruned", "huge_input.pt", "--backend", "torch-cpu"], 1,
                                      "input shape 1x3x4096x4096 needs about"),
    # run writes only into a new or empty folder, or its own earlier output with --force
    "run into a folder of the user's files": (["run", *R20, "--speedup", "2", "--out", "user_out"], 1,
                                              "holds files latprune did not write"),
    "run into the user's files with --force": (["run", *R20, "--speedup", "2", "--out", "user_out", "--force"], 1,
                                               "holds files latprune did not write"),
    "demo run into the user's files": (["run", "--out", "user_out", "--force"], 1,
                                       "holds files latprune did not write"),
    "run over an earlier run": (["run", *R20, "--speedup", "2", "--out", "earlier_run"], 1,
                                "holds an earlier run's output; pass --force"),
    # plan files: schema, types and the model's groups, all before any work
    "plan width zero": ([*PRUNE_PLAN, "width_zero.json"], 1, "has width 0 but keeps 8 channels"),
    "plan removing a group in no branch": ([*PRUNE_PLAN, "width_zero_stem.json"], 1,
                                           "width 0 removes a residual branch, and this group is in none"),
    "plan width negative": ([*PRUNE_PLAN, "width_negative.json"], 1, "width must be at least 0, got -3"),
    "plan width above kept": ([*PRUNE_PLAN, "width_huge.json"], 1, "has width 1000 but keeps 8 channels"),
    "plan width as text": ([*PRUNE_PLAN, "width_text.json"], 1, "width must be an integer, got '8'"),
    "plan with a fractional channel": ([*PRUNE_PLAN, "float_index.json"], 1, "kept[0] must be an integer, got 0.5"),
    "plan listing a group twice": ([*PRUNE_PLAN, "group_twice.json"], 1, "is listed twice"),
    "plan missing a group": ([*PRUNE_PLAN, "group_missing.json"], 1, "lacks group"),
    "resnet20 plan relabelled as resnet56": (["prune", "--model", "cifar:resnet56", "--plan", "relabelled.json",
                                              "--out", "x.pt"], 1, "lacks group"),
    "plan for another model": (["prune", "--model", "cifar:resnet56", "--plan", "good_plan.json", "--out", "x.pt"],
                               1, "the plan is for cifar:resnet20"),
    "plan version as text": ([*PRUNE_PLAN, "version_text.json"], 1, "version must be an integer, got '1.0'"),
    "plan kept null": ([*PRUNE_PLAN, "kept_null.json"], 1, "kept must be a list of integers, got None"),
    "plan kept nested": ([*PRUNE_PLAN, "kept_nested.json"], 1, "kept[0] must be an integer, got [0, 1]"),
    "plan keeping a channel twice": ([*PRUNE_PLAN, "kept_twice.json"], 1, "keeps a channel twice"),
    "plan keeping channels beyond the group": ([*PRUNE_PLAN, "kept_beyond.json"], 1, "beyond its full width"),
    "plan with another full width": ([*PRUNE_PLAN, "full_width_other.json"], 1, "the plan is for another model"),
    "plan groups not a list": ([*PRUNE_PLAN, "groups_not_list.json"], 1, "groups must be a non-empty list"),
    "plan group not an object": ([*PRUNE_PLAN, "group_not_object.json"], 1,
                                 "groups[0] must be an object with string keys"),
    "plan without a model": ([*PRUNE_PLAN, "no_model.json"], 1, "is incomplete: no model"),
    "plan with three sizes": ([*PRUNE_PLAN, "plan_shape.json"], 1, "four positive sizes"),
    "plan naming an unknown group": ([*PRUNE_PLAN, "unknown_group.json"], 1, "names group 'no.such.layer'"),
    "plan with a NaN budget": ([*PRUNE_PLAN, "nan_budget.json"], 1, "budget_ms must be a finite number"),
    "plan with a band in words": ([*PRUNE_PLAN, "band_text.json"], 1, "verification.band_ms must be a pair"),
    "plan choosing a round it lacks": ([*PRUNE_PLAN, "chosen_round_beyond.json"], 1,
                                       "verification.chosen_round 7 names no recorded round"),
    "plan with a round's verdict in words": ([*PRUNE_PLAN, "round_meets_text.json"], 1,
                                             "verification.rounds[0].meets must be true or false"),
    "plan with a search record cut short": ([*PRUNE_PLAN, "search_without_damage.json"], 1,
                                            "search.damage must be an object"),
    "plan nested too deeply": ([*PRUNE_PLAN, "deep.json"], 1, "cannot read plan"),
    "plan not UTF-8": ([*PRUNE_PLAN, "latin1.json"], 1, "cannot read plan"),
    # predictions outside the profiled input shape
    "predict at an unprofiled batch": (["predict", *R20, "--input-shape", "64x3x32x32", *PROFILE], 1,
                                       "taken at input shape 1x3x32x32, not 64x3x32x32"),
    "plan at an unprofiled image size": (["plan", *R20, "--input-shape", "1x3x64x64", *PROFILE, "--speedup", "1.5",
                                          "--no-verify"], 1, "taken at input shape 1x3x32x32, not 1x3x64x64"),
    # memory: refused before the input is built
    "huge input shape": (["groups", *R20, "--input-shape", "1x3x4096x4096"], 1, "GiB is available"),
    "huge batch": (["groups", *R20, "--input-shape", "20000x3x32x32"], 1, "use a smaller --input-shape"),
    # evaluation images, read and checked before any work
    "truncated JPEG": (["eval", *R20, "--data", "truncated_eval"], 1, "cannot use image"),
    "file that is no image": (["eval", *R20, "--data", "garbage_eval"], 1, "noise.jpg"),
    "images of mixed sizes": (["eval", *R20, "--data", "mixed_eval"], 1, "big.png: it is 40x40"),
    "run with a truncated JPEG to evaluate": (["run", *R20, "--speedup", "2", "--eval", "truncated_eval", "--out",
                                              "run_out"], 1, "cut.jpg"),
    "run with an empty evaluation folder": (["run", *R20, "--speedup", "2", "--eval", "empty", "--out", "run_out"],
                                            1, "no images in empty"),
    "calibration image of another size": (["prune", *R20, "--uniform", "0.5", "--recovery", "bn", "--calib",
                                           "mixed_eval", "--out", "x.pt"], 1, "big.png: it is 40x40"),
    # outputs where no file can be written, whatever the permission bits say to root
    "output under /proc": (["prune", *R20, "--uniform", "0.5", "--out", "/proc/latprune.pt"], 1, "is not writable"),
    "output under /sys": (["export", *R20, "--out", "/sys/latprune.onnx"], 1, "is not writable"),
    "run output under /proc": (["run", *R20, "--speedup", "2", "--out", "/proc/latprune-run"], 1,
                               "cannot create --out folder"),
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


@pytest.mark.parametrize("case", ["module with a syntax error", "another program's database",
                                  "recover a random-weights pruned model"])
def test_the_console_script_refuses_the_same_way(workspace, case):
    """A refusal from each stage a command reaches (the user's module, the profile store, the recovery), through the
    console script; each start costs seconds of imports, so the other cases run in this process (above)."""
    argv, code, message = CASES[case]
    before = checksums(workspace[0])
    result = run(workspace, *argv)
    assert_refused(result.returncode, result.stdout, result.stderr, code, message)
    assert checksums(workspace[0]) == before


def test_plan_json_never_holds_nan(workspace, profiled_resnet20, monkeypatch, capsys):
    budget, _ = budget_between(profiled_resnet20, "torch-cpu", "cifar:resnet20")
    code, out, err = run_main(workspace, monkeypatch, capsys,
                              ["plan", *R20, *PROFILE, "--budget-ms", str(budget), "--no-verify", "--json"])
    assert code == 0, err
    assert "NaN" not in out and "Infinity" not in out


def test_recover_without_weights_uses_the_recorded_dense_weights(workspace, monkeypatch, capsys):
    root = workspace[0]
    argv = [*RECOVER[:-2], "--pruned", "p.pt", "--out", "recovered.pt"]
    code, _, err = run_main(workspace, monkeypatch, capsys, argv)
    assert code == 0, err
    recovered = load_pruned(root / "recovered.pt")
    assert recovered.metadata["dense"]["weights"] == str(root / "w20.th")
    (root / "recovered.pt").unlink()


def test_eval_warns_when_folder_classes_cannot_be_the_models(workspace, monkeypatch, capsys):
    code, _, err = run_main(workspace, monkeypatch, capsys, ["eval", *R20, "--data", "eval"])
    assert code == 0
    assert "2 class folders but the model has 10 outputs" in err


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


def _wait_for(process: subprocess.Popen, needle: str, timeout: float = 900) -> None:
    """Read stderr until ``needle`` appears (the job reached the stage worth interrupting). The timeout only
    guards against a hang: a host busy with other work may take minutes to get there."""
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
    _, rest = process.communicate(timeout=300)
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
                                # work that cannot finish before the signal, however fast the machine
                                "--variants", "64", "--widths", "8", "--rounds", "50", "--global-warmup", "0"],
                               cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               # as from a terminal, whatever launched pytest (a shell's background job ignores SIGINT)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(process, "profile ort-cpu")
    os.killpg(process.pid, signal.SIGINT)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "latprune profile: interrupted"
    with ProfileStore(tmp_path / "p.sqlite", readonly=True) as store:  # what was committed is intact
        assert store.summaries() is not None


# ---------------------------------------------------------------- files that name code


def test_a_pruned_file_imports_its_module_only_when_the_user_names_it(tmp_path):
    from latprune.errors import LatpruneError
    from latprune.pruned_file import prune_loaded, save_pruned

    spec = "fixtures.user_models:tiny_net"
    loaded = load_model(spec)
    pruned = prune_loaded(loaded, {})
    save_pruned(pruned, tmp_path / "tiny.pt")
    with pytest.raises(LatpruneError, match="names the model factory 'fixtures.user_models:tiny_net'"):
        load_pruned(tmp_path / "tiny.pt")
    rebuilt = load_pruned(tmp_path / "tiny.pt", spec=spec)
    with torch.no_grad():
        assert torch.equal(rebuilt.model(loaded.example_input()), pruned.model(loaded.example_input()))


# ---------------------------------------------------------------- channel ops the probes cannot see


def test_an_inline_channel_rotation_makes_its_group_unprunable():
    from latprune.analysis import analyse

    analysis = analyse(load_model("fixtures.user_models:inline_permutation_net"))
    excluded = {e.id: e.reason for e in analysis.excluded}
    assert "conv1" in excluded and "makes another network" in excluded["conv1"]
    assert [g.id for g in analysis.groups] == ["conv2"]


def test_a_self_concatenation_prunes_to_the_masked_network_or_is_refused(tmp_path):
    """cat([x, x], 1) is listed only if pruning it gives exactly the masked dense network (checked by prune)."""
    from latprune.analysis import analyse
    from latprune.channels import masked_channels
    from latprune.pruned_file import prune_loaded

    loaded = load_model("fixtures.user_models:self_concat_net")
    analysis = analyse(loaded)
    x = loaded.example_input()
    for group in analysis.groups:
        for kept in (list(range(group.width // 2)), list(range(1, group.width, 2))):
            pruned = prune_loaded(analysis, {group.id: kept})  # checked against the masked network inside
            removed = [i for i in range(group.width) if i not in kept]
            with torch.no_grad(), masked_channels(loaded.model, analysis.layout, {group.id: removed}):
                expected = loaded.model(x)
            with torch.no_grad():
                assert torch.allclose(pruned.model(x), expected, atol=1e-5)


def test_prune_refuses_a_network_that_differs_from_the_masked_one():
    """The last line of defence: an op that moves channels after the groups were verified."""
    import torch.nn as nn

    from latprune.analysis import analyse
    from latprune.errors import LatpruneError
    from latprune.pruned_file import prune_loaded

    class Switchable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Linear(8, 2)
            self.rotate = False

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.roll(x, 1, 1) if self.rotate else x
            return self.head(self.conv2(x).mean((2, 3)))

    from latprune.models import LoadedModel

    loaded = LoadedModel(Switchable().eval(), "custom:switchable", "custom", (1, 3, 12, 12))
    analysis = analyse(loaded)
    assert "conv1" in {g.id for g in analysis.groups}
    loaded.model.rotate = True
    with pytest.raises(LatpruneError, match="the pruned network is not the dense one with those channels removed"):
        prune_loaded(analysis, {"conv1": [0, 1, 2, 3]})


# ---------------------------------------------------------------- cached damage tables are untrusted


def _corrupt_damage(kind: str, data: dict) -> None:
    group = next(iter(data["damage"]))
    if kind == "wrong types":
        data["damage"][group] = [str(v) for v in data["damage"][group]]
    elif kind == "other widths":
        data["widths"][group] = [w + 1 for w in data["widths"][group]]
    elif kind == "a group missing":
        data["damage"].pop(group)
    elif kind == "NaN":
        data["damage"][group][0] = float("nan")
    elif kind == "negative":
        data["damage"][group] = [-1.0 for _ in data["damage"][group]]
    elif kind == "growing with width":
        data["damage"][group] = [0.0] * (len(data["damage"][group]) - 1) + [5.0]
    elif kind == "images as a bool":
        data["images"] = True


@pytest.mark.parametrize("kind", ["wrong types", "other widths", "a group missing", "NaN", "negative",
                                  "growing with width", "images as a bool"])
def test_an_invalid_cached_damage_table_is_measured_again(resnet20, calib, tmp_path, capsys, kind):
    import json

    from fixtures.fake_perf import MacsLatency
    from latprune.analysis import analyse
    from latprune.planner.api import prepare
    from latprune.planner.damage import measure_damage
    from latprune.planner.widths import WidthPolicy

    inputs = prepare(analyse(resnet20), "l2", policy=WidthPolicy(step=16), perf=MacsLatency(), backend="fake")
    analysis = inputs.analysis

    def damage():
        return measure_damage(analysis.model, analysis.spec, inputs.groups, analysis.layout, inputs.scores,
                              inputs.macs.candidates, calib[:8], cache_dir=tmp_path, progress=False)

    first = damage()
    path = tmp_path / "damage" / f"{first.key}.json"
    data = json.loads(path.read_text())
    _corrupt_damage(kind, data)
    path.write_text(json.dumps(data))
    capsys.readouterr()
    again = damage()
    assert not again.cached and again.damage == first.damage and again.widths == first.widths
    assert "cached damage table" in capsys.readouterr().err
    assert damage().cached  # the bad entry was replaced, not repeated by every later run


# ---------------------------------------------------------------- the closed loop on a contended host


def test_contended_rounds_are_left_out_and_never_stored(profiled, synthetic_backend):
    from latprune.profiler.api import RoundsRule
    from latprune.profiler.variant_timer import VariantTimer

    p = profiled
    widths = {g.id: max(g.width // 2, 1) for g in p.analysis.groups}
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=RoundsRule(4, 4), settings=p.timing) as timer:
        quiet = timer.time(widths)
        start = synthetic_backend.calls
        synthetic_backend.slowdown = lambda call: 300.0 if call - start in (3, 4, 7, 8) else 1.0  # rounds 2 and 4
        contended = timer.time(widths)
    assert quiet.rejected_rounds == 0 and contended.rejected_rounds == 2
    assert contended.variant.median_ms == pytest.approx(quiet.variant.median_ms)
    assert contended.dense.median_ms == pytest.approx(quiet.dense.median_ms)
    with ProfileStore(p.db, readonly=True) as store:
        rows = [r for r in store.network_timings(store.find_device(p.fitted.device), "synthetic")
                if r.variant_key == contended.variant_key]
        layers = store.layer_timings(store.find_device(p.fitted.device), "synthetic")
    assert rows and all(r.measurement.p90_ms == pytest.approx(quiet.variant.median_ms) for r in rows)
    assert max(t.measurement.p90_ms for t in layers) < 0.1  # no 300x slower layer reached the profile


def test_a_host_contended_throughout_is_refused_and_nothing_is_stored(profiled, synthetic_backend):
    from latprune.errors import LatpruneError
    from latprune.profiler.api import RoundsRule
    from latprune.profiler.variant_timer import VariantTimer

    p = profiled
    widths = {g.id: max(g.width // 2, 1) for g in p.analysis.groups}
    with ProfileStore(p.db, readonly=True) as store:
        before = len(store.network_timings(store.find_device(p.fitted.device), "synthetic"))
    with VariantTimer(p.analysis, "synthetic", db=p.db, rule=RoundsRule(3, 3), settings=p.timing) as timer:
        start = synthetic_backend.calls
        synthetic_backend.slowdown = lambda call: 300.0 if call > start else 1.0
        with pytest.raises(LatpruneError, match="the host is contended"):
            timer.time(widths)
    with ProfileStore(p.db, readonly=True) as store:
        assert len(store.network_timings(store.find_device(p.fitted.device), "synthetic")) == before


# ---------------------------------------------------------------- outputs honour the umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_permissions_the_umask_gives(workspace, monkeypatch, capsys, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        code, _, err = run_main(workspace, monkeypatch, capsys, ["prune", *R20, "--uniform", "0.5", "--out",
                                                                 str(tmp_path / "m.pt")])
    finally:
        os.umask(previous)
    assert code == 0, err
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == mode


def test_run_claims_a_new_folder_and_may_replace_its_own_output_with_force(tmp_path):
    from latprune.errors import LatpruneError
    from latprune.outputs import RUN_MARKER, check_output_folder

    fresh = tmp_path / "new" / "run"
    check_output_folder(fresh)
    assert (fresh / RUN_MARKER).is_file()
    (fresh / "plan.json").write_text("{}")  # what the run wrote
    with pytest.raises(LatpruneError, match="pass --force"):
        check_output_folder(fresh)
    check_output_folder(fresh, force=True)
    legacy = tmp_path / "legacy"  # a run from before the marker: its summary.json says what it is
    legacy.mkdir()
    (legacy / "summary.json").write_text('{"format": "latprune-run", "version": 1, "runs": []}')
    check_output_folder(legacy, force=True)
