"""Writing outputs safely: never over an input, never over an existing file without ``--force``,
always atomically (a temporary file in the same folder, renamed into place, removed on failure).
"""

from __future__ import annotations

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
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LatpruneError(f"{what} {out}: folder {folder} is not writable")
    if out.exists() and not force:
        raise LatpruneError(f"{what} {out} exists; pass --force to replace it")
    return out


def check_output_folder(path: str | os.PathLike, marker: str, force: bool = False) -> Path:
    """A folder to write into: created if missing; refused if it holds ``marker`` from an earlier run
    (unless ``force``), if it is a file, or if it cannot be written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LatpruneError(f"--out {out} is a file; give a folder")
    if (out / marker).exists() and not force:
        raise LatpruneError(f"--out {out} already holds {marker} from an earlier run; pass --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LatpruneError(f"cannot create --out folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LatpruneError(f"--out folder {out} is not writable")
    return out


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` on success, removed otherwise
    (also on Ctrl-C or SIGTERM). A write error (full disk, permissions) becomes one clear line."""
    target = Path(path)
    handle, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.",
                                   suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise LatpruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
