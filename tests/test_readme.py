"""The README stays short, and every latprune command it shows parses, and runs, as written (placeholders filled in)."""

import re
import shlex
from pathlib import Path

import pytest

from latprune.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDERS = {"SPEC": "cifar:resnet20", "W": "w.th", "S": "2", "B": "ort-cpu", "P": "p.pt", "R": "r.pt",
                "M": "two-stage", "DIR": "d", "UNLABELED_DIR": "d", "LABELLED_DIR": "d", "M.onnx": "m.onnx",
                "COMMAND": "plan"}


def _commands() -> list[str]:
    text = README.read_text()
    found = re.findall(r"`(latprune [^`]*)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += [part.strip() for line in block.splitlines() for part in line.split("&&")
                  if part.strip().startswith("latprune")]
    return found


def test_the_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_shows_every_command():
    from latprune.cli import COMMANDS

    shown = {shlex.split(c)[1] for c in _commands() if len(shlex.split(c)) > 1}
    assert set(COMMANDS) <= shown


@pytest.mark.parametrize("command", _commands())
def test_every_readme_command_parses(command):
    argv = [PLACEHOLDERS.get(token, token) for token in shlex.split(command)[1:]]
    if "--help" in argv:
        return
    args = build_parser().parse_args(argv)
    assert args.command == argv[0] if argv else args.command is None


def _run_cli(command: list[str], folder: Path):
    """``latprune COMMAND...`` in a process of its own, in ``folder``, with a profile database and cache there."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LATPRUNE_DB": str(folder / "profiles.sqlite"), "LATPRUNE_CACHE": str(folder / "cache")}
    return subprocess.run([sys.executable, "-m", "latprune.cli", *command], cwd=folder, env=env, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path):
    """The README's first command after the install (`latprune run`, about 5 minutes on 2 cores) on a fresh
    profile database and cache: it exits 0 and writes its report and summary."""
    import json

    quickstart = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    command = next(part.strip() for part in quickstart.split("&&") if part.strip().startswith("latprune"))
    done = _run_cli(shlex.split(command)[1:], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "latprune-run" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["resnet18", "digits"]
    assert (tmp_path / "latprune-run" / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    """Every command the README shows, in its order, on a fresh profile database: the placeholders filled with
    files this test makes (random resnet20 weights; the demo's digits images as 32x32 RGB folders), nothing
    from ../shared. The bare `latprune run` is the quickstart test's; the test command is this suite."""
    import torch

    from latprune.cli import COMMANDS
    from latprune.demo import write_digits
    from latprune.models import load_model

    train, test = write_digits(tmp_path / "digits")
    torch.save(load_model("cifar:resnet20").model.state_dict(), tmp_path / "w.th")
    images = {"DIR": str(train), "UNLABELED_DIR": str(train), "LABELLED_DIR": str(test)}
    commands = [shlex.split(c)[1:] for c in _commands()]
    commands = [argv for argv in commands if argv and argv != ["run"]]
    assert {argv[0] for argv in commands} >= set(COMMANDS)
    for argv in commands:
        filled = [images.get(token) or PLACEHOLDERS.get(token, token) for token in argv]
        done = _run_cli(filled, tmp_path)
        assert done.returncode == 0, f"latprune {' '.join(argv)}: {done.stderr[-2000:]}"
    for made in ("plan.json", "p.pt", "r.pt", "m.onnx", "sparse.pt", "verified.json", "latprune-run/summary.json"):
        assert (tmp_path / made).stat().st_size > 0, made
