"""A two-node loopback Ray cluster whose nodes share no path the sweep uses (issue 16).

On one machine every process sees the same disk, so "a node without the shared path" is made
real with a Linux mount namespace: the worker node's `ray start` runs under
`unshare --mount`, with an empty tmpfs mounted over each hidden folder (the test's sweep root,
the head's Ray temp dir). Files the head writes there are invisible to the worker node and its
trials, and what a trial on the worker writes there stays in the worker's tmpfs (the test
reads it through `/proc/<pid>/root`, as an operator would log into that node). The network is
shared: both nodes reach the head's GCS and the S3 server on loopback.

Needs root (or CAP_SYS_ADMIN) for the mount namespace; `can_hide_paths()` says whether it works.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from tests.integration.conftest import BIN, LoopbackCluster, _env


def can_hide_paths() -> bool:
    """Whether this process may create a mount namespace and mount a tmpfs in it."""
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                            "mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


# mount a tmpfs over each of the first $1 arguments after it, then exec the rest (`ray start ...`)
_HIDE = 'n=$1; shift; while [ "$n" -gt 0 ]; do mount -t tmpfs scalesweep-node "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"'


class NoSharedPathCluster(LoopbackCluster):
    """`LoopbackCluster` whose worker node cannot see `hidden` (nor the head's Ray temp dir).

    `node_env`: environment of both nodes (the bucket's endpoint and keys, as an instance role
    would give them).
    """

    def __init__(self, root: Path, hidden: list[Path], node_env: Optional[dict[str, str]] = None, **kw):
        self.hidden, self.node_env = [Path(p) for p in hidden], dict(node_env or {})
        super().__init__(root, **kw)

    def _start(self, name: str, args: list[str], **env: str) -> None:
        cmd = [str(BIN / "ray"), "start", *args]
        if name == "worker":
            hide = [*self.hidden, self.temp_dir / "h"]
            cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HIDE, "sh",
                   str(len(hide)), *map(str, hide), *cmd]
        log = self.root / f"ray-{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:  # as LoopbackCluster._start, plus node_env
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                               env=_env(RAY_AUTH_MODE="token", RAY_raylet_start_wait_time_s="300",
                                                        **self.node_env, **env)))

    def worker_view(self, path: Path) -> Path:
        """`path` as the worker node sees it (its mount namespace, through its raylet's /proc root)."""
        raylet = self.worker_raylet()
        assert raylet is not None, "the worker node's raylet is not running"
        return Path(f"/proc/{raylet.pid}/root") / Path(path).relative_to("/")
