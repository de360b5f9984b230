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


@contextlib.contextmanager
def local_head(temp: Path, *options: str, timeout: float = 120):
    """Yield the address of a new head node; stop its processes, and only its, on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
