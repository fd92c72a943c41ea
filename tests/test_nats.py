"""The NATS transport against a real nats-server on loopback: replicas
converging through NodeRuntime, every kind of hostile frame refused and
counted while honest traffic flows, a restarted sender accepted, the
server's max_payload obeyed. (The conformance suite runs on NATS in
tests/test_transport_conformance.py.)

Every wait is bounded in count and time; every endpoint and server started
is stopped."""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.msg import Msg

from crdts import GCounter
from replication import Replicator
from replication.envelope import Envelope
from replication.messages import Entry, Push, Reply, encode
from replication.nats import NatsEndpoint, subject
from replication.runtime import NodeRuntime
from tests.conftest import NatsServer, start_nats_server, stop_nats_server
from tests.test_tcp import Runtimes, run, until

KEY = bytes(range(32))
T = TypeVar("T")
_clusters = itertools.count()


def increment(by: int) -> Callable[[GCounter, str], GCounter]:
    return lambda c, me: c.increment(me, by)


class Cluster(Runtimes[NatsEndpoint]):
    """Replicas gossiping through one nats-server, under a cluster name of their own."""

    def __init__(
        self, server: NatsServer, ids: list[str], max_payload: int | None = None
    ) -> None:
        self.name = f"t{next(_clusters)}"
        self.server = server
        self.max_payload = max_payload
        self.runs: dict[str, NodeRuntime[NatsEndpoint]] = {}
        for i in ids:
            endpoint = self.endpoint_for(i)
            replica = Replicator(i, ids, rng=random.Random(i), max_frame=endpoint.max_frame)
            self.runs[i] = NodeRuntime(replica, endpoint, interval=0.05)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def endpoint_for(self, node: str) -> NatsEndpoint:
        return NatsEndpoint(
            node, KEY, servers=[self.server.url], cluster=self.name,
            rng=random.Random(node), max_payload=self.max_payload,
        )

    async def __aenter__(self) -> Cluster:
        for runtime in self.runs.values():
            await runtime.endpoint.start()
        for runtime in self.runs.values():  # a round trip once all subscribed (nats-server#5677)
            await runtime.endpoint.connection.flush()
        self.tasks = [asyncio.create_task(r.run(self.stop)) for r in self.runs.values()]
        return self



def test_replicas_converge_over_nats(nats_server: NatsServer) -> None:
    async def test() -> None:
        async with Cluster(nats_server, ["a", "b", "c"]) as cluster:
            for n, node in enumerate("abc"):
                cluster.replica(node).update("hits", GCounter, increment(n + 1))
            assert await cluster.converges("hits", 6)
            stats = cluster.endpoint("b").stats
            assert stats.received > 0 and stats.refusals == 0 and stats.dropped == 0

    run(test)


def _push_from(claimed: str) -> bytes:
    mallory = Replicator(claimed, [], rng=random.Random(9))
    mallory.update("hits", GCounter, increment(100))
    state = mallory.get("hits")
    assert state is not None
    entry = Entry("hits", state, mallory.ops("hits"))
    return encode(Push(claimed, "b", -1, 1, 0, 1, Reply.NOTHING, mallory.context, (entry,)))


def test_hostile_frames_are_refused_and_counted_while_honest_ones_flow(
    nats_server: NatsServer,
) -> None:
    async def test() -> None:
        # b takes envelopes of at most 256 KiB (the server carries 1 MiB).
        async with Cluster(nats_server, ["a", "b"], max_payload=256 * 1024) as cluster:
            b = cluster.endpoint("b")
            to_b = subject(cluster.name, "node", "b")
            mallory = await nats.connect(nats_server.url)
            # An eavesdropper records a genuine frame from a to b.
            recorded: list[bytes] = []

            async def record(msg: Msg) -> None:
                recorded.append(msg.data)

            tap = await mallory.subscribe(to_b, cb=record)
            await mallory.flush()
            assert await until(lambda: len(recorded) > 0)
            await tap.unsubscribe()
            genuine = recorded[0]
            # Nothing is written before the attack: b's keyspace must hold still.
            before = cluster.replica("b").encode_keyspace()

            key_holder = Envelope("m", KEY, cluster=cluster.name)
            forged = bytearray(genuine)
            forged[-1] ^= 1
            renamed = genuine[:2] + b"m" + genuine[3:]  # a's frame under another name
            attacks = {
                "forged": [bytes(forged), renamed,
                           Envelope("m", bytes(32), cluster=cluster.name).seal("b", b"x")],
                "replayed": [genuine, genuine],
                "misaddressed": [key_holder.seal("c", _push_from("m"))],
                "impersonating": [Envelope("b", KEY, cluster=cluster.name).seal("b", b"x")],
                "malformed": [b"", b"garbage", bytes(200)],
                "oversize": [bytes(b.max_payload + 1)],
                # Sealed honestly by key holder m, but the push inside names a.
                "refused": [key_holder.seal("b", _push_from("a"))],
            }
            for frames in attacks.values():
                for frame in frames:
                    await mallory.publish(to_b, frame)
            await mallory.flush()
            await mallory.close()

            def counted() -> bool:
                return all(getattr(b.stats, why) >= len(f) for why, f in attacks.items())

            assert await until(counted), b.stats
            assert {why: getattr(b.stats, why) for why in attacks} == {
                why: len(frames) for why, frames in attacks.items()
            }
            assert cluster.replica("b").stats.refused == 1
            assert cluster.replica("b").encode_keyspace() == before  # nothing merged
            # Honest traffic still flows.
            cluster.replica("a").update("hits", GCounter, increment(1))
            assert await cluster.converges("hits", 1)

    run(test)


def test_a_restarted_sender_is_accepted(nats_server: NatsServer) -> None:
    async def test() -> None:
        cluster = Cluster(nats_server, [])
        b = cluster.endpoint_for("b")
        await b.start()
        try:
            for attempt in range(3):  # a starts, sends and stops three times
                a = cluster.endpoint_for("a")
                await a.start()
                await a.connection.flush()
                a.send("b", f"boot {attempt}".encode())
                got: list[tuple[str, bytes]] = []

                def arrived(got: list[tuple[str, bytes]] = got) -> bool:
                    got += b.receive()
                    return bool(got)

                assert await until(arrived)
                assert got == [("a", f"boot {attempt}".encode())]
                await a.close()
            assert b.stats.refusals == 0
        finally:
            await b.close()

    run(test)


def test_the_servers_max_payload_bounds_frames(tmp_path: Path) -> None:
    config = tmp_path / "nats.conf"
    config.write_text("max_payload: 65536\n")
    server = start_nats_server("-c", str(config))
    try:

        async def test() -> None:
            a, b = (
                NatsEndpoint(i, KEY, servers=[server.url], cluster="small", rng=random.Random(i))
                for i in "ab"
            )
            await a.start()
            await b.start()
            await a.connection.flush()  # a round trip once both subscribed (nats-server#5677)
            try:
                assert a.max_payload == 65536 and a.max_frame == 65536 - 569
                a.send("b", bytes(a.max_frame + 1))
                assert a.stats.oversize_sent == 1
                a.send("b", bytes(a.max_frame))
                got: list[tuple[str, bytes]] = []

                def arrived() -> bool:
                    got.extend(b.receive())
                    return bool(got)

                assert await until(arrived)
                assert got == [("a", bytes(a.max_frame))]
            finally:
                await a.close()
                await b.close()

        run(test)
    finally:
        stop_nats_server(server.process)


def test_bad_arguments_are_refused_at_the_boundary() -> None:
    rng = random.Random(1)
    with pytest.raises(ValueError, match="plain token"):
        NatsEndpoint("a", KEY, servers=["nats://x"], cluster="a.b", rng=rng)
    with pytest.raises(ValueError, match="list of NATS URLs"):
        NatsEndpoint("a", KEY, servers="nats://x", cluster="c", rng=rng)
    with pytest.raises(ValueError, match="max_payload"):
        NatsEndpoint("a", KEY, servers=["nats://x"], cluster="c", rng=rng, max_payload=100)
    with pytest.raises(ValueError, match="non-empty str"):
        NatsEndpoint("", KEY, servers=["nats://x"], cluster="c", rng=rng)
    endpoint = NatsEndpoint("a", KEY, servers=["nats://x"], cluster="c", rng=rng)
    endpoint.send("b", b"before start")  # dropped, counted, not raised
    assert endpoint.stats.dropped == 1
    with pytest.raises(RuntimeError, match="not started"):
        _ = endpoint.connection


def test_start_without_a_server_gives_up_in_time() -> None:
    async def test() -> None:
        endpoint = NatsEndpoint(
            "a", KEY, servers=["nats://127.0.0.1:1"], cluster="c", rng=random.Random(1),
            start_timeout=0.5,
        )
        with pytest.raises(TimeoutError, match="no NATS server"):
            await endpoint.start()
        await endpoint.close()
        endpoint.send("b", b"x")
        assert endpoint.stats.dropped == 1

    run(test)


def test_importing_replication_does_not_import_nats() -> None:
    code = (
        "import sys, replication, replication.tcp, replication.runtime, "
        "replication.conformance, replication.envelope\n"
        "assert 'nats' not in sys.modules, 'nats was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_server_skips_except_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import conftest

    monkeypatch.setattr(conftest, "nats_server_binary", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        start_nats_server()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        start_nats_server()
