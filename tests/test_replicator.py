"""The replicator over the simulated network: convergence with and without
faults, determinism, hostile frames, restarts under a new incarnation."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from crdts import CausalContext, DecodeError, GCounter, ORSet, PNCounter
from replication import Replicator
from replication.messages import Ack, Entry, Push, Reply, encode, parse
from replication.simnet import Faults, SimulatedNetwork
from replication.store import MemoryStore, decode_row, restore

CHAOS = Faults(loss=0.3, duplication=0.05, reorder=True, long_delay=0.02)


def cluster(n: int, seed: int, faults: Faults | None = None, **options: Any) -> tuple[
    SimulatedNetwork, list[Replicator]
]:
    rng = random.Random(seed)
    net = SimulatedNetwork(seed=rng.getrandbits(32), faults=faults)
    ids = [f"n{i:02d}" for i in range(n)]
    replicas = [Replicator(i, ids, rng=random.Random(rng.getrandbits(32)), **options) for i in ids]
    for replica in replicas:
        net.add(replica)
    return net, replicas


def converged(replicas: list[Replicator]) -> bool:
    return len({r.encode_keyspace() for r in replicas}) == 1


def increment_by(amount: int) -> Callable[[GCounter, str], GCounter]:
    return lambda counter, me: counter.increment(me, amount)


def random_counter_updates(replicas: list[Replicator], rng: random.Random, count: int) -> int:
    total = 0
    for _ in range(count):
        replica = rng.choice(replicas)
        amount = rng.randint(1, 9)
        total += amount
        replica.update(f"k{rng.randrange(20)}", GCounter, increment_by(amount))
    return total


def total_of(replica: Replicator) -> int:
    keys = replica.keys()
    return sum(replica.get(k).value for k in keys)  # type: ignore[union-attr]


@pytest.mark.parametrize("faults", [None, CHAOS], ids=["perfect", "chaos"])
@pytest.mark.parametrize("seed", range(3))
def test_converges_and_counts_every_increment(faults: Faults | None, seed: int) -> None:
    net, replicas = cluster(8, seed, faults)
    rng = random.Random(seed)
    total = 0
    for _ in range(10):
        total += random_counter_updates(replicas, rng, 20)
        net.run_round()
    assert net.run_until(lambda: converged(replicas), max_rounds=60) is not None
    assert {total_of(r) for r in replicas} == {total}


def test_partition_then_heal_converges() -> None:
    net, replicas = cluster(6, 7, Faults(loss=0.1, reorder=True))
    rng = random.Random(7)
    net.partition([[r.node_id for r in replicas[:3]], [r.node_id for r in replicas[3:]]])
    total = 0
    for _ in range(5):
        total += random_counter_updates(replicas, rng, 10)
        net.run_round()
    assert not converged(replicas)
    net.heal()
    assert net.run_until(lambda: converged(replicas), max_rounds=30) is not None
    assert {total_of(r) for r in replicas} == {total}


def test_same_seed_same_trace_and_bytes() -> None:
    def run() -> tuple[list[object], bytes]:
        rng = random.Random(3)
        net, replicas = cluster(5, 3, CHAOS)
        net.trace = []
        for _ in range(6):
            random_counter_updates(replicas, rng, 5)
            net.run_round()
        net.run_until(lambda: converged(replicas), max_rounds=60)
        return list(net.trace), replicas[0].encode_keyspace()

    assert run() == run()


def test_large_keyspace_travels_in_bounded_chunks() -> None:
    net, replicas = cluster(2, 1, chunk_size=50)
    for i in range(400):
        replicas[0].update(f"key{i:04d}", PNCounter, lambda c, me: c.increment(me))
    sizes: list[int] = []
    original = replicas[1].receive

    def spy(now: float, sender: str, frame: bytes) -> list[tuple[str, bytes]]:
        sizes.append(len(frame))
        return original(now, sender, frame)

    replicas[1].receive = spy  # type: ignore[method-assign]
    assert net.run_until(lambda: converged(replicas), max_rounds=10) is not None
    assert max(sizes) < 50 * 64  # no frame carries more than a chunk of keys


def test_a_catch_up_carries_only_the_keys_the_peer_lacks() -> None:
    a = Replicator("a", ["b"], rng=random.Random(1))
    for i in range(100):
        a.update(f"key{i:03d}", PNCounter, lambda c, me: c.increment(me))
    copies = [Entry(k, state, a.ops(k)) for k in a.keys() if (state := a.get(k)) is not None]  # noqa: SIM118
    b = Replicator.from_entries("b", copies, ["a"], rng=random.Random(2), incarnation=1)
    for i in range(90, 100):  # b knows 90 keys as a has them; 10 moved on since
        a.update(f"key{i:03d}", PNCounter, lambda c, me: c.increment(me))
    opening = b.tick(0.0)  # b has never heard of a: it opens with its clock
    answer = [parse(f) for _, f in a.receive(0.0, "b", opening[0][1])]
    pushes = [m for m in answer if isinstance(m, Push)]
    assert a.stats.catch_ups == 1
    sent = sorted(e.key for p in pushes for e in p.entries)
    assert sent == [f"key{i:03d}" for i in range(90, 100)]
    assert all(p.start == -1 and p.end == 110 for p in pushes)


def test_malformed_and_impersonating_frames_change_nothing() -> None:
    _, (a, b) = cluster(2, 1)
    a.update("s", ORSet, lambda s, me: s.add("x", me))
    before = b.encode_keyspace()
    assert b.receive(0.0, "n00", b"\xff\x00garbage") == []
    forged = encode(Push("n99", "n01", -1, 1, 0, 1, Reply.NOTHING, CausalContext(),
                         ()))  # another node
    assert b.receive(0.0, "n00", forged) == []
    assert (b.stats.malformed, b.stats.refused) == (1, 1)
    assert b.encode_keyspace() == before


def exchange(a: Replicator, b: Replicator) -> None:
    """One round from ``a`` to ``b`` over a perfect channel, to quiescence."""
    nodes = {a.node_id: a, b.node_id: b}
    frames = [(a.node_id, out) for out in a.tick(0.0)]
    for _ in range(1000):
        if not frames:
            return
        source, (dest, frame) = frames.pop(0)
        frames += [(dest, out) for out in nodes[dest].receive(0.0, source, frame)]
    raise AssertionError("the exchange did not settle")


def test_a_frame_that_would_change_a_key_type_is_refused_whole() -> None:
    _, (a, b) = cluster(2, 1)
    b.update("k", GCounter, lambda c, me: c.increment(me))
    a.update("k", ORSet, lambda s, me: s.add("x", me))
    a.update("other", GCounter, lambda c, me: c.increment(me))
    exchange(a, b)
    exchange(b, a)
    assert a.stats.refused > 0 and b.stats.refused > 0
    assert isinstance(b.get("k"), GCounter) and isinstance(a.get("k"), ORSet)
    assert b.get("other") is None  # refused with the rest of its frame


def test_acks_beyond_the_head_are_ignored() -> None:
    _, (a, _b) = cluster(2, 1)
    a.receive(0.0, "n01", encode(Ack("n01", 10**6)))
    assert a._peers["n01"].acked is None


def test_restore_takes_a_new_incarnation_and_loses_nothing_acknowledged() -> None:
    net, replicas = cluster(4, 11, Faults(loss=0.2, reorder=True))
    rng = random.Random(11)
    total = random_counter_updates(replicas, rng, 30)
    net.run_until(lambda: converged(replicas), max_rounds=40)
    saved = MemoryStore.of(replicas[1]).load()  # an old copy ...
    total += random_counter_updates(replicas, rng, 30)  # ... then more updates, some by n01
    net.run_until(lambda: converged(replicas), max_rounds=40)  # acknowledged everywhere
    net.crash("n01")
    restored = restore(saved, "n01", [r.node_id for r in replicas], rng=random.Random(5))
    assert restored.node_id == "n01" and restored.replica_id.startswith("n01~")
    net.restart(restored)
    replicas[1] = restored
    restored.update("k0", GCounter, lambda c, me: c.increment(me, 1000))
    total += 1000
    assert net.run_until(lambda: converged(replicas), max_rounds=40) is not None
    assert {total_of(r) for r in replicas} == {total}


def test_a_stored_copy_round_trips_and_bad_rows_are_refused() -> None:
    _, (a, _b) = cluster(2, 1)
    a.update("s", ORSet, lambda s, me: s.add("x", me))
    copy = restore(MemoryStore.of(a).load(), "n00", ["n01"], rng=random.Random(1), incarnation=2)
    assert copy.encode_keyspace() == a.encode_keyspace()
    assert copy.replica_id == "n00~2"
    with pytest.raises(DecodeError):
        decode_row("s", b"\x80")


def test_mutated_frames_never_raise_and_truncated_ones_change_nothing() -> None:
    net, replicas = cluster(3, 5)
    rng = random.Random(5)
    for replica in replicas:
        replica.update("s", ORSet, lambda s, me: s.add(me, me))
        replica.update("c", PNCounter, lambda c, me: c.decrement(me, 3))
    captured: list[bytes] = []
    victim = replicas[2]
    original = victim.receive

    def tap(now: float, sender: str, frame: bytes) -> list[tuple[str, bytes]]:
        captured.append(frame)
        return original(now, sender, frame)

    victim.receive = tap  # type: ignore[method-assign]
    net.run_rounds(3)
    victim.receive = original  # type: ignore[method-assign]
    assert captured
    # Bit flips can make another well-formed frame, which only a MAC (the TCP
    # runtime's job) can tell from the real one: a bystander takes those.
    bystander = Replicator("n09", ["n00", "n01"], rng=random.Random(1))
    for _ in range(3000):
        frame = bytearray(rng.choice(captured))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        bystander.receive(1.0, rng.choice(["n00", "n01"]), bytes(frame))
    # Torn frames never parse: the victim drops them all and stays correct.
    for _ in range(1000):
        whole = rng.choice(captured)
        victim.receive(1.0, rng.choice(["n00", "n01"]), whole[: rng.randrange(len(whole))])
    assert victim.stats.malformed == 1000
    replicas[0].update("c", PNCounter, lambda c, me: c.increment(me, 10))
    assert net.run_until(lambda: converged(replicas), max_rounds=30) is not None
    counter = victim.get("c")
    assert counter is not None and counter.value == 10 - 9  # type: ignore[attr-defined]



def test_a_round_is_four_frames_as_acks_ride_on_the_pushes() -> None:
    a = Replicator("a", ["b"], rng=random.Random(1))
    b = Replicator("b", ["a"], rng=random.Random(2))
    nodes = {"a": a, "b": b}

    def round_trip(now: float) -> list[str]:
        kinds = []
        frames = [("a", out) for out in a.tick(now)]
        while frames:
            sender, (dest, frame) = frames.pop(0)
            message = parse(frame)
            kinds.append(f"{type(message).__name__}{getattr(message, 'reply', '')}")
            frames += [(dest, out) for out in nodes[dest].receive(now, sender, frame)]
        return kinds

    a.update("k", GCounter, lambda c, me: c.increment(me))
    b.update("j", GCounter, lambda c, me: c.increment(me))
    assert round_trip(0.0) == ["Push2", "Push1", "Push0", "Ack"]  # catch-ups both ways
    assert a.stats.catch_ups == b.stats.catch_ups == 1
    a.update("k", GCounter, lambda c, me: c.increment(me))
    assert round_trip(1.0) == ["Push2", "Push1", "Push0", "Ack"]  # deltas from the log now
    assert a.stats.catch_ups == b.stats.catch_ups == 1
    assert a.encode_keyspace() == b.encode_keyspace()
    assert b.stats.merged == 2 and a.stats.merged == 1
