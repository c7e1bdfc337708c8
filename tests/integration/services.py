"""Real servers on loopback for the scale-out tests: PostgreSQL (an MLflow backend store) and an
S3-compatible object store (moto's standalone server, a real HTTP S3 API). Each is a real
process started from its binary, on a free port, in a temporary directory, and stopped by its
process id.

`pg_binaries()` finds PostgreSQL's server programs on PATH or in Debian's
/usr/lib/postgresql/<version>/bin (`scripts/ensure-postgres.sh` installs them in CI when missing).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, Optional

from tests.integration.conftest import free_port


def pg_binaries() -> Optional[Path]:
    """The directory holding initdb, pg_ctl and postgres (PATH first, then Debian's layout), or None."""
    candidates = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in candidates:
        if all((d / b).is_file() and os.access(d / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _server_user() -> Optional[str]:
    """The account PostgreSQL runs as: the current one, or (as root, which postgres refuses) an unprivileged one."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL as")


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, no fsync): initdb, start, stop."""

    def __init__(self, bindir: Path, port: Optional[int] = None):
        self.bindir = bindir
        self.port = port or free_port()
        self.user = _server_user()
        # Not under pytest's tmp_path: its directories are private to root, and the server may run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="scalesweep-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd] if shutil.which("runuser") else \
                  ["su", "-s", "/bin/sh", self.user, "-c", " ".join(_quote(c) for c in cmd)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr[-2000:]}{self._log_tail()}")
        return r

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> "PostgresServer":
        if self.user is not None:
            shutil.chown(self.root, self.user)
            os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def uri(self, database: str = "postgres") -> str:
        """The SQLAlchemy URI MLflow takes (`tracking.uri`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')

    def query(self, sql: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as conn:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


class S3Server:
    """moto's standalone S3 server (`moto_server`, a real HTTP S3 API in its own process) on loopback."""

    ACCESS_KEY = "testing"
    SECRET_KEY = "testing"

    def __init__(self, log: Path, port: Optional[int] = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: Optional[subprocess.Popen] = None

    def env(self) -> dict[str, str]:
        """What an S3 client (boto3, MLflow's S3 artifact store, pyarrow) needs to reach it."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.url, "AWS_ENDPOINT_URL": self.url,
                "AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> "S3Server":
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        cmd = [exe, "-H", "127.0.0.1", "-p", str(self.port)] if os.path.exists(exe) else \
              [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"moto_server did not come up: {self.log.read_text(errors='replace')[-2000:]}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def s3_bucket(log: Path, bucket: str, monkeypatch) -> Iterator[S3Server]:
    """moto's S3 server with `bucket` created, its endpoint and keys in this process's environment
    (what boto3, MLflow and pyarrow.fs read; child processes inherit them); stopped after."""
    import pytest

    pytest.importorskip("boto3", reason="boto3 (pip install -e '.[test]') is the S3 client of the tests")
    pytest.importorskip("moto.server", reason="moto[s3] with flask (pip install -e '.[test]') serves the S3 API")
    server = S3Server(log).start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        server.stop()
