"""A throwaway PostgreSQL server for the store's tests: initdb + pg_ctl on a temporary folder and a free
loopback port, stopped at the end of the session.

``$LATPRUNE_TEST_POSTGRES`` (a ``postgresql://`` URL of a server the tests may create databases on) is used
instead when set. Without server binaries or psycopg the tests skip, except under CI (``$CI``), where they fail:
``.ci/run`` installs both.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _server_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL store tests cannot run under CI: {reason}")
    pytest.skip(reason)


class Server:
    """A server of our own (root runs it as the ``postgres`` user: PostgreSQL refuses to run as root)."""

    def __init__(self):
        bin_dir = _server_binaries()
        if bin_dir is None:
            _unavailable("no PostgreSQL server binaries (initdb) on this machine")
        self.folder = Path(tempfile.mkdtemp(prefix="latprune-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no postgres user to run the server as")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.initdb, self.pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "latprune", "--no-sync", "-E", "UTF8"])
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"])
        self.url = f"postgresql://latprune@127.0.0.1:{self.port}/postgres"

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(self.as_user + command, capture_output=True, text=True, cwd=self.folder)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def stop(self) -> None:
        subprocess.run(self.as_user + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, cwd=self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def server_url():
    """Yields the URL of a server to create databases on (ours, or ``$LATPRUNE_TEST_POSTGRES``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable('psycopg is not installed (pip install -e ".[postgres]")')
    if os.environ.get("LATPRUNE_TEST_POSTGRES"):
        yield os.environ["LATPRUNE_TEST_POSTGRES"]
        return
    server = Server()
    try:
        yield server.url
    finally:
        server.stop()
