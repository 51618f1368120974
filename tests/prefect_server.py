"""A real Prefect server (and worker) on 127.0.0.1 for tests, each in its own process group and stopped as a group.

`prefect server start` and `prefect worker start` start children (the server's services, the worker's flow-run
processes); stopping only the leader's PID would leave them running after the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# A two-stage project for the pipeline-on-a-server tests: the real `download` stage (a flow run of its own) and a
# shell stage (a task only).
DOWNLOAD_THEN_COUNT = """\
stages:
  download:
    cmd: evisrag download
    params: [seed, data]
    outs: [data]
  count:
    cmd: 'echo "files: $(ls -R data | wc -l)" | tee count.txt'
    deps: [data]
    outs: [count.txt]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_group(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever of it is left."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)  # the leader is gone; members of its group may linger
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def prefect_server(base: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`prefect server start --host 127.0.0.1` with its own PREFECT_HOME under `base`; yields `env` plus
    PREFECT_HOME and PREFECT_API_URL pointing at it."""
    port = free_port()
    served = env | {"PREFECT_HOME": str(base / "prefect_home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = base / "prefect_server.log"
    server = start_group(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], base, served, log)
    try:
        wait_until_up(f"{served['PREFECT_API_URL']}/health", server, log)
        yield served
    finally:
        stop_group(server)
