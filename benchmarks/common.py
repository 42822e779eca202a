"""Shared helpers of the benchmarks: environment facts and result files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from latprune.allocator import keep_large_buffers

keep_large_buffers()  # as the command line does: large batches reuse heap buffers

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR10 = SHARED / "data" / "cifar10-jpeg"  # ../shared's CIFAR-10 images: train/ and test/ ImageFolders
CACHE = Path(__file__).resolve().parent / ".cache"  # profiles, checkpoints and resumable rows (git ignores it)


def environment() -> dict:
    import onnxruntime
    import torch

    from latprune.profiler.api import cpu_identity, cpu_model, physical_cores

    return {
        "cpu": cpu_model(),
        **cpu_identity(),  # family/model numbers and vector extensions: "AMD EPYC" alone names several machines
        "cores": physical_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def same_machine(recorded: dict) -> bool:
    """Whether an ``environment()`` recorded earlier names this machine: its CPU identity and core count."""
    from latprune.profiler.api import cpu_identity

    here = environment()
    return all(recorded.get(k) == here[k] for k in (*cpu_identity(), "cores"))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, data: dict, summary_markdown: str) -> Path:
    """Write ``results/<name>.json`` (data + environment) and ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{summary_markdown}\n")
    print(summary_markdown)
    return RESULTS / f"{name}.json"


def latprune_run(arguments: Sequence[str], out: Path) -> dict:
    """``latprune run ARGUMENTS --out OUT --force`` through the command line, as a user runs it; its run record from
    ``summary.json``."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "latprune.cli", "run", *arguments, "--out", str(out), "--force"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads((out / "summary.json").read_text())["runs"][0]


DEFAULT_DB = CACHE / "profiles.sqlite"


def profile_into(model, backend: str, db: Path):
    """Profile a model (loaded or analysed) on ``backend`` into ``db`` unless already there; the profile's report."""
    from latprune import pipeline
    from latprune.analysis import as_analysis

    db.parent.mkdir(parents=True, exist_ok=True)
    return pipeline.profile(as_analysis(model), backend, db=db)


def perf_model_for(model, backend: str, db: Path):
    """:func:`profile_into`, then the fitted perf model. Returns (perf model, fit summary)."""
    from latprune import pipeline

    profile_into(model, backend, db)
    return pipeline.fit(db, backend)
