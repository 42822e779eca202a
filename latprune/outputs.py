"""Writing outputs safely: never over an input, never over an existing file without ``--force``,
never into a folder of the user's own files, always atomically (a temporary file in the same
folder, renamed into place, removed on failure), with the permissions the umask gives.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from latprune.errors import LatpruneError


def user_cache_dir() -> Path:
    """``<user cache dir>/latprune`` (``$XDG_CACHE_HOME``, else ``~/.cache``): profiles and damage tables."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latprune"


def check_output(path: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), force: bool = False,
                 what: str = "--out") -> Path:
    """Refuse an output path that is one of the inputs, a folder, in a missing or unwritable folder,
    or an existing file (unless ``force``). Checked before any work is done."""
    out = Path(path)
    for given in inputs:
        if given is not None and _same_file(out, Path(given)):
            raise LatpruneError(f"{what} {out} is one of this command's inputs; write the output elsewhere")
    if out.is_dir():
        raise LatpruneError(f"{what} {out} is a folder; give a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise LatpruneError(f"{what} {out}: folder {folder} does not exist")
    _check_writable(folder, f"{what} {out}: folder {folder}")
    if out.exists() and not force:
        raise LatpruneError(f"{what} {out} exists; pass --force to replace it")
    return out


RUN_MARKER = ".latprune-run"  # written into every folder `latprune run` claims


def check_output_folder(path: str | os.PathLike, force: bool = False) -> Path:
    """Claim a folder for a run's outputs: a new or empty folder (created and marked as latprune's), or one an
    earlier run wrote (only with ``force``). A folder holding anything else is refused, ``force`` or not:
    a run writes plan.json, report.html and more, and must never replace the user's own files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LatpruneError(f"--out {out} is a file; give a folder")
    try:
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as exc:
        raise LatpruneError(f"cannot read --out folder {out}: {exc.strerror or exc}") from None
    if present:
        if not _holds_a_run(out):
            shown = present[:3]
            raise LatpruneError(f"--out {out} holds files latprune did not write ({', '.join(shown)}); give an empty "
                                f"or new folder")
        if not force:
            raise LatpruneError(f"--out {out} holds an earlier run's output; pass --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LatpruneError(f"cannot create --out folder {out}: {exc.strerror or exc}") from None
    _check_writable(out, f"--out folder {out}")
    with atomic_path(out / RUN_MARKER) as tmp:
        tmp.write_text(json.dumps({"format": "latprune-run-folder", "version": 1}) + "\n")
    return out


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` was claimed by an earlier run (its marker, or the summary.json of a run from before
    the marker existed)."""
    if (folder / RUN_MARKER).is_file():
        return True
    try:
        return json.loads((folder / "summary.json").read_text()).get("format") == "latprune-run"
    except (OSError, ValueError, AttributeError):
        return False


def _check_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the permission bits say too little (root passes them; /proc
    and read-only mounts refuse anyway)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".latprune-", suffix=".probe")
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise LatpruneError(f"{what} is not writable ({exc.strerror or exc})") from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` on success, removed otherwise
    (also on Ctrl-C or SIGTERM). The file gets the permissions the umask gives a new file. A write error
    (full disk, permissions, a folder that takes no files) becomes one clear line."""
    target = Path(path)
    try:
        handle, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.",
                                       suffix=".tmp")
        os.close(handle)
    except OSError as exc:
        raise LatpruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask says
        os.replace(tmp, target)
    except OSError as exc:
        raise LatpruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
