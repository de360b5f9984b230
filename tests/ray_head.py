"""A Ray head started as a user would (``ray start --head``), and stopped without touching anybody else's cluster.

``ray stop`` kills every Ray process of the user on the machine: a test module's teardown would kill the cluster
another test worker is using at that moment. ``ray start --block`` keeps the command running and stops its own
processes on SIGTERM, so terminating that one command stops this head and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

STARTED = "block forever"  # what `ray start --block` prints once the head is up
NO_DRAIN = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # a SIGTERM stops the head at once (Ray waits 30 s)
RAY_PORTS = {6379, 8265, 10001, 52365}  # a node's defaults: GCS, dashboard, client server, dashboard agent
WORKER_PORTS = (10002, 19999)  # the range its workers take by default


def _any_port() -> int:
    """A port nothing listens on now, as the system picks it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port() -> int:
    """A port nothing listens on, away from the fixed ports a Ray node takes (a head given one of those fails to
    start: "trying to use a port number 52365 that is used by other components")."""
    while True:
        port = _any_port()
        if port not in RAY_PORTS and not WORKER_PORTS[0] <= port <= WORKER_PORTS[1]:
            return port


@contextlib.contextmanager
def local_head(temp: Path, *options: str, timeout: float = 120):
    """Yield the address of a new head node; stop its processes, and only its, on exit."""
    port = _free_port()
    ray = str(Path(sys.executable).parent / "ray")
    log = temp / "ray_start.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--include-dashboard=false",
                                 "--disable-usage-stats", f"--temp-dir={temp}", *options],
                                stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **NO_DRAIN})
    try:
        deadline = time.monotonic() + timeout
        while STARTED not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
