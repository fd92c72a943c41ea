"""The TCP runtime: the transport conformance suite, replicas converging over
loopback, and every kind of hostile peer refused while the honest ones go on.

Everything runs on 127.0.0.1 in one event loop per test; every wait is
bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from crdts import GCounter
from replication import Replicator
from replication.auth import Handshake, Session
from replication.messages import Entry, Push, Reply, encode
from replication.tcp import Limits, NodeRuntime, TcpEndpoint
from replication.transport import Transport

KEY = bytes(range(32))
CERTS = Path(__file__).parent / "certs"
T = TypeVar("T")
E = TypeVar("E", bound=Transport)


# -- helpers --------------------------------------------------------------------------


async def until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``check`` every 10 ms for at most ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 30))


class Runtimes(Generic[E]):
    """Replicas each driven by a ``NodeRuntime`` over an endpoint of type
    ``E`` (the TCP and the NATS tests' clusters): stopping them, reading them."""

    runs: dict[str, NodeRuntime[E]]
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def replica(self, node: str) -> Replicator:
        replica = self.runs[node].node
        assert isinstance(replica, Replicator)
        return replica

    def endpoint(self, node: str) -> E:
        return self.runs[node].endpoint

    async def converges(self, key: str, value: int) -> bool:
        def done() -> bool:
            states = [self.replica(n).get(key) for n in self.runs]
            return all(isinstance(s, GCounter) and s.value == value for s in states)

        return await until(done)


class Cluster(Runtimes[TcpEndpoint]):
    """Replicas ``a``, ``b`` (and more) gossiping over loopback."""

    def __init__(self, ids: list[str], limits: Limits | None = None) -> None:
        self.runs = {
            i: NodeRuntime(
                Replicator(i, ids, rng=random.Random(i)),
                TcpEndpoint(i, KEY, rng=random.Random(i), limits=limits),
                interval=0.02,
            )
            for i in ids
        }
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Cluster:
        for r in self.runs.values():
            await r.endpoint.start()
        for r in self.runs.values():
            for other in self.runs.values():
                if other is not r:
                    r.endpoint.add_peer(other.node.node_id, other.endpoint.address)
        self.tasks = [asyncio.create_task(r.run(self.stop)) for r in self.runs.values()]
        return self



async def handshake(
    address: tuple[str, int], node: str, key: bytes = KEY
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Session]:
    """Dial ``address`` and authenticate as ``node`` (with ``key``)."""
    reader, writer = await asyncio.open_connection(*address)
    shake = Handshake(key, node, "peer", os.urandom(32), initiator=True)
    send(writer, shake.hello())
    send(writer, shake.receive_hello(await frame(reader)))
    session = shake.receive_proof(await frame(reader))
    return reader, writer, session


def send(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(len(body).to_bytes(4, "big") + body)


async def frame(reader: asyncio.StreamReader) -> bytes:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "big")
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the other side closed the connection (within 5 s)."""
    try:
        return await asyncio.wait_for(reader.read(1 << 16), 5) == b""
    except ConnectionError:
        return True


def increment(by: int) -> Callable[[GCounter, str], GCounter]:
    return lambda c, me: c.increment(me, by)


# -- replicas over loopback -----------------------------------------------------------


def test_replicas_converge_over_tcp() -> None:
    async def test() -> None:
        async with Cluster(["a", "b", "c"]) as cluster:
            for n, node in enumerate("abc"):
                cluster.replica(node).update("hits", GCounter, increment(n + 1))
            assert await cluster.converges("hits", 6)

    run(test)


# -- hostile peers --------------------------------------------------------------------


async def attack_then_honest_update(
    attack: Callable[[Cluster], Awaitable[None]], limits: Limits | None = None
) -> Cluster:
    """Run ``attack`` against node b, then check b still converges with a."""
    async with Cluster(["a", "b"], limits) as cluster:
        before = cluster.replica("b").encode_keyspace()
        await attack(cluster)
        assert cluster.replica("b").encode_keyspace() == before  # nothing merged
        cluster.replica("a").update("hits", GCounter, increment(1))
        assert await cluster.converges("hits", 1)
        return cluster


def test_a_length_over_the_cap_is_refused_before_the_body() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, _ = await handshake(cluster.endpoint("b").address, "m")
        writer.write(b"\xff\xff\xff\xff")  # 4 GiB announced, nothing sent
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["frame over the limit"] == 1


@pytest.mark.parametrize("body", [b"", b"x" * 39, b"\x00" * 100])
def test_zero_length_short_and_unsealed_frames_are_refused(body: bytes) -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, _ = await handshake(cluster.endpoint("b").address, "m")
        send(writer, body)
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["failed authentication"] == 1


def test_a_truncated_frame_is_refused() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, _ = await handshake(cluster.endpoint("b").address, "m")
        writer.write((100).to_bytes(4, "big") + b"only ten b")
        writer.write_eof()
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["truncated frame"] == 1


def test_a_header_then_silence_times_out() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, _ = await handshake(cluster.endpoint("b").address, "m")
        writer.write((100).to_bytes(4, "big"))
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack, Limits(read_timeout=0.2)))
    assert cluster.endpoint("b").stats.refused["timed out"] == 1


def test_silence_before_the_handshake_times_out() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, _ = await asyncio.open_connection(*cluster.endpoint("b").address)
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack, Limits(handshake_timeout=0.2)))
    assert cluster.endpoint("b").stats.refused["timed out"] == 1


def _push_from(claimed: str) -> bytes:
    mallory = Replicator(claimed, [], rng=random.Random(9))
    mallory.update("hits", GCounter, increment(100))
    state = mallory.get("hits")
    assert state is not None
    entry = Entry("hits", state, mallory.ops("hits"))
    return encode(Push(claimed, "b", -1, 1, 0, 1, Reply.NOTHING, mallory.context, (entry,)))


def test_a_bad_mac_is_refused() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, session = await handshake(cluster.endpoint("b").address, "m")
        sealed = bytearray(session.seal(_push_from("m")))
        sealed[20] ^= 1
        send(writer, bytes(sealed))
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["failed authentication"] == 1


def test_a_wrong_key_fails_the_handshake() -> None:
    async def attack(cluster: Cluster) -> None:
        with pytest.raises((OSError, asyncio.IncompleteReadError, ValueError)):
            await handshake(cluster.endpoint("b").address, "m", key=bytes(32))

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["failed authentication"] == 1


def test_a_replayed_frame_is_refused() -> None:
    async def attack(cluster: Cluster) -> None:
        reader, writer, session = await handshake(cluster.endpoint("b").address, "m")
        sealed = session.seal(encode(Push("m", "b", 0, 0, 0, 1, Reply.NOTHING, Replicator(
            "m", [], rng=random.Random(1)).context, ())))
        send(writer, sealed)
        send(writer, sealed)  # the same frame again
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["failed authentication"] == 1


def test_a_frame_claiming_another_replicas_id_is_refused() -> None:
    async def attack(cluster: Cluster) -> None:
        # Mallory holds the key and authenticates as herself, then sends
        # state written under a's name.
        reader, writer, session = await handshake(cluster.endpoint("b").address, "m")
        send(writer, session.seal(_push_from("a")))
        assert await closed(reader)

    cluster = run(lambda: attack_then_honest_update(attack))
    assert cluster.endpoint("b").stats.refused["refused by the node"] == 1
    assert cluster.replica("b").stats.refused == 1


def test_an_address_over_its_half_open_budget_loses_its_oldest() -> None:
    async def attack(cluster: Cluster) -> None:
        address = cluster.endpoint("b").address
        # a's own connection to b, once authenticated, is not half-open.
        assert await until(lambda: cluster.endpoint("b").stats.received >= 1)
        held = [await asyncio.open_connection(*address) for _ in range(3)]
        assert await until(lambda: cluster.endpoint("b").half_open == 3)
        _, newest = await asyncio.open_connection(*address)
        assert await closed(held[0][0])  # the oldest made room for it
        assert cluster.endpoint("b").half_open == 3
        for writer in [*(w for _, w in held), newest]:
            writer.close()

    limits = Limits(startups_per_address=3)
    cluster = run(lambda: attack_then_honest_update(attack, limits))
    assert cluster.endpoint("b").stats.refused["evicted"] == 1


# -- TLS ------------------------------------------------------------------------------


def _server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=CERTS / "ca.pem")
    context.load_cert_chain(CERTS / "node.pem", CERTS / "node.key")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_tls(with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=CERTS / "ca.pem")
    if with_certificate:
        context.load_cert_chain(CERTS / "client.pem", CERTS / "client.key")
    return context


def test_mutual_tls_carries_gossip_and_refuses_a_client_without_a_certificate() -> None:
    async def test() -> None:
        ids = ["a", "b"]
        runs = [
            NodeRuntime(
                Replicator(i, ids, rng=random.Random(i)),
                TcpEndpoint(
                    i,
                    KEY,
                    rng=random.Random(i),
                    server_ssl=_server_tls(),
                    client_ssl=_client_tls(with_certificate=True),
                ),
                interval=0.02,
            )
            for i in ids
        ]
        for r in runs:
            await r.endpoint.start()
        runs[0].endpoint.add_peer("b", runs[1].endpoint.address)
        runs[1].endpoint.add_peer("a", runs[0].endpoint.address)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(r.run(stop)) for r in runs]
        # A client with no certificate: the TLS handshake fails, nothing else runs.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                *runs[1].endpoint.address, ssl=_client_tls(with_certificate=False)
            )
            shake = Handshake(KEY, "m", "peer", os.urandom(32), initiator=True)
            send(writer, shake.hello())
            await frame(reader)
        a = runs[0].node
        assert isinstance(a, Replicator)
        a.update("hits", GCounter, increment(3))
        b = runs[1].node
        assert isinstance(b, Replicator)
        assert await until(lambda: (s := b.get("hits")) is not None and s.value == 3)  # type: ignore[attr-defined]
        stop.set()
        await asyncio.gather(*tasks)
        # The TLS handshake ran inside the endpoint's budget, and failed there.
        assert runs[1].endpoint.stats.accepted == 2
        assert runs[1].endpoint.stats.refused["TLS"] == 1

    run(test)
