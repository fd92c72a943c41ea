"""A write acknowledged at a consistency level is durable at the members
that count toward it (Akka acknowledges durable keys only after its store
wrote them; Couchbase's PersistToMajority): a member acknowledges a pushed
update only once its store has committed the keys it merged. Reproduced
first between real ``crdtkit node`` processes: a write at ``all``, then
SIGKILL of the other members at once; their stores must hold it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from random import Random

from crdtkit.client import Client, Written
from crdtkit.cluster import LocalCluster
from crdts import GCounter
from replication.messages import Ack, parse
from replication.replicator import Replicator
from replication.sqlite import SQLiteStore
from tests.test_gossip_scale import deliver


def _increment(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me, 1)


def test_a_durable_replica_acknowledges_only_what_it_marked_written() -> None:
    a = Replicator("a", ["b"], rng=Random(1))
    b = Replicator("b", ["a"], rng=Random(2), durable_acks=True)
    replicas = {"a": a, "b": b}
    deliver(replicas, "b", b.tick(0.0))  # b meets a
    a.update("k", GCounter, _increment)
    head = a.head
    out = a.replicate(["b"])
    assert [d for d, _ in out] == ["b"]
    answer = b.receive(0.0, "a", out[0][1])
    # b merged it (reads see it) but has not acknowledged it: not written yet.
    assert b.get("k") is not None and b.get("k").value == 1  # type: ignore[union-attr]
    for _, frame in answer:
        a.receive(0.0, "b", frame)
    assert a.holders(head) == []
    # Once its store committed what it merged, b acknowledges: one Ack to a.
    acks = b.written(b.durable_mark())
    assert [d for d, _ in acks] == ["a"]
    message = parse(acks[0][1])
    assert isinstance(message, Ack) and message.position == head
    a.receive(0.0, "b", acks[0][1])
    assert a.holders(head) == ["b"]
    # Marking the same again sends nothing.
    assert b.written(b.durable_mark()) == []


def test_without_durable_acks_a_replica_acknowledges_what_it_merged() -> None:
    a = Replicator("a", ["b"], rng=Random(1))
    b = Replicator("b", ["a"], rng=Random(2))
    replicas = {"a": a, "b": b}
    deliver(replicas, "b", b.tick(0.0))
    a.update("k", GCounter, _increment)
    deliver(replicas, "a", a.replicate(["b"]))
    assert a.holders(a.head) == ["b"]
    assert b.written(b.durable_mark()) == []  # nothing held back


async def _write_then_kill(cluster: LocalCluster) -> Written:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    client: Client = await cluster.client("n0")
    try:
        while True:  # until every member is up (bounded)
            members = await client.members()
            if sum(m.status == "up" for m in members) == 3 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        written = await client.update("hits", "GCounter", "increment", 7, level="all",
                                      timeout=10)
        assert isinstance(written, Written)
        # At once: within a node's write-behind interval (1 s) for gossip.
        cluster.kill("n1")
        cluster.kill("n2")
        return written
    finally:
        client.close()


def test_a_write_at_all_survives_sigkill_of_every_other_member(tmp_path: Path) -> None:
    cluster = LocalCluster(3, tmp_path, interval=0.05)
    cluster.start()
    try:
        written = asyncio.run(_write_then_kill(cluster))
    finally:
        cluster.stop()
    assert written.reached.ok, written.reached
    for node in ("n1", "n2"):
        store = SQLiteStore(tmp_path / node, node=node)
        try:
            entries = {entry.key: entry.state for entry in store.load().entries}
        finally:
            store.close()
        state = entries.get("hits")
        assert isinstance(state, GCounter) and state.value == 7, (node, state)
