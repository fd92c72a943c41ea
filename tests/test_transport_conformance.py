"""Every transport passes the public conformance suite
(:func:`replication.conformance.check_transport`): simulated, TCP and NATS,
one test per check so a failure names it; and the suite itself catches a
transport that breaks a promise.

The TCP and NATS endpoints run on a fresh event loop per check, on loopback;
NATS needs a real ``nats-server`` (the ``nats_server`` fixture: skipped when
the binary is missing, a failure under ``CI=true``)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from replication.conformance import CHECKS, Connected, TransportNonConformance
from replication.simnet import Faults, SimulatedNetwork
from replication.tcp import TcpEndpoint
from replication.testing import check_transport
from replication.transport import FrameHandler, Transport
from tests.conftest import NatsServer

KEY = bytes(range(32))
_clusters = itertools.count()


def simulated() -> Connected:
    net = SimulatedNetwork(seed=0)
    return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))


def on_loop(a: Transport, b: Transport, loop: asyncio.AbstractEventLoop) -> Connected:
    """Endpoints living on ``loop``, which runs only while the suite pumps."""

    def run(work: Coroutine[Any, Any, None]) -> None:
        loop.run_until_complete(work)

    def finish() -> None:
        asyncio.set_event_loop(None)
        loop.close()

    return Connected(a, b, lambda: run(asyncio.sleep(0.02)), run, finish)


def tcp() -> Connected:
    loop = asyncio.new_event_loop()
    # Sends are made inside the loop's thread: the suite calls them between
    # pumps, in the same thread, with the loop idle.
    asyncio.set_event_loop(loop)
    a = TcpEndpoint("a", KEY, rng=random.Random(1))
    b = TcpEndpoint("b", KEY, rng=random.Random(2))
    loop.run_until_complete(a.start())
    loop.run_until_complete(b.start())
    a.add_peer("b", b.address)
    b.add_peer("a", a.address)
    return on_loop(a, b, loop)


def nats(server: NatsServer) -> Connected:
    from replication.nats import NatsEndpoint

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    cluster = f"conformance{next(_clusters)}"  # apart from every other test's frames
    a, b = (
        NatsEndpoint(i, KEY, servers=[server.url], cluster=cluster, rng=random.Random(i))
        for i in ("a", "b")
    )
    loop.run_until_complete(a.start())
    loop.run_until_complete(b.start())
    # A round trip on each connection once both have subscribed: else the
    # server may route a's first publish with the interest it had before b
    # subscribed (core NATS is at most once; nats-io/nats-server#5677).
    loop.run_until_complete(a.connection.flush())
    loop.run_until_complete(b.connection.flush())
    return on_loop(a, b, loop)


@pytest.mark.parametrize("check", CHECKS)
def test_simulated_network(check: str) -> None:
    check_transport(simulated, only=[check])


@pytest.mark.parametrize("check", CHECKS)
def test_tcp(check: str) -> None:
    check_transport(tcp, only=[check])


@pytest.mark.parametrize("check", CHECKS)
def test_nats(check: str, nats_server: NatsServer) -> None:
    # A frame and its envelope fit the server's max_payload (1 MiB by default).
    max_frame = (1 << 20) - 569
    check_transport(lambda: nats(nats_server), only=[check], max_frame=max_frame)


# -- the suite catches what breaks a promise ----------------------------------------------


def test_a_duplicating_network_fails_the_suite() -> None:
    def duplicating() -> Connected:
        net = SimulatedNetwork(seed=0, faults=Faults(duplication=0.5))
        return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))

    with pytest.raises(TransportNonConformance, match=r"^frame_lengths: .* arrived as \[1, 1\]"):
        check_transport(duplicating)


def test_a_lossy_network_fails_the_suite() -> None:
    def lossy() -> Connected:
        net = SimulatedNetwork(seed=3, faults=Faults(loss=0.3))
        return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))

    with pytest.raises(TransportNonConformance, match="did not arrive"):
        check_transport(lossy, only=["many_frames_all_arrive_once"])


def test_a_transport_that_raises_fails_the_suite() -> None:
    class Raising:
        def __init__(self, endpoint: Transport) -> None:
            self.inner = endpoint
            self.node_id = endpoint.node_id
            self.on_frame: FrameHandler | None = None

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        def send(self, destination: str, frame: bytes) -> None:
            if destination not in ("a", "b"):
                raise KeyError(destination)
            self.inner.send(destination, frame)

        def receive(self) -> list[tuple[str, bytes]]:
            return self.inner.receive()

    def raising() -> Connected:
        net = SimulatedNetwork(seed=0)
        a, b = Raising(net.endpoint("a")), Raising(net.endpoint("b"))
        return Connected(a, b, lambda: net.advance(1.0))

    with pytest.raises(TransportNonConformance, match=r"^unknown_destination: raised KeyError"):
        check_transport(raising, only=["unknown_destination"])


# -- the driver knows only the protocols -------------------------------------------------


def test_node_runtime_drives_a_node_over_any_transport_and_reports_refusals() -> None:
    """NodeRuntime over the simulated network's endpoints: frames reach the
    replica through on_frame, and a frame the replica refuses comes back to
    the transport as PeerMisbehaved, which counts it."""
    from crdts import GCounter
    from replication import Replicator
    from replication.runtime import NodeRuntime

    async def test() -> None:
        net = SimulatedNetwork(seed=0)
        ids = ["a", "b"]
        runs = [
            NodeRuntime(Replicator(i, ids, rng=random.Random(i)), net.endpoint(i)) for i in ids
        ]
        a, b = (run.node for run in runs)
        assert isinstance(a, Replicator) and isinstance(b, Replicator)
        a.update("hits", GCounter, lambda c, me: c.increment(me, 3))
        for _ in range(10):  # gossip rounds by hand: tick, then let the frames move
            for run in runs:
                for destination, frame in run.node.tick(net.now):
                    run.endpoint.send(destination, frame)
            net.advance(1.0)
        hits = b.get("hits")
        assert isinstance(hits, GCounter) and hits.value == 3
        net.send("a", "b", b"not a frame")  # b's replica refuses it
        net.advance(1.0)
        assert net.stats.refused == 1 and b.refusals == 1

    asyncio.run(test())
