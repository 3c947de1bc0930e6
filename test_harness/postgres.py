"""A throwaway PostgreSQL server for tests and benchmarks: Debian's `postgresql` package
(`initdb` and `pg_ctl` on a temporary directory, a loopback port, trust authentication).

PostgreSQL refuses to run as root; as root (CI, containers) the server runs as the
package's `postgres` user. Fsync is off: these servers hold nothing worth a power cut.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from pool_managerd.launchers import free_port


def bindir() -> Path:
    """Where the newest installed PostgreSQL's programs are; RuntimeError naming what to
    install when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (make test does)")


def _major(path: str) -> int:
    return int(Path(path).parts[-3])


class PostgresServer:
    """One server; `url` is its superuser's connection URL to the `postgres` database."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="orch-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.bin = bindir()
        self.url = f"postgresql://orch@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        argv = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            argv = ["runuser", "-u", "postgres", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {out.stderr.strip()} {tail}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "orch",
                      "-E", "UTF8", "--no-sync")  # fmt: skip
        options = (
            f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.dir / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop it (`immediate`: as if it crashed); `start` brings the same data back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def database(self, name: str) -> str:
        """A fresh empty database: its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
