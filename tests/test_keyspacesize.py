"""KeyspaceSize: the length of ``encode_keyspace()`` kept per key as keys
change (issue 13, item 1: the demo's full-state byte estimate re-encoded
every keyspace every round, 28% of its CPU at 1,000 operations and about
half at 20,000)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from crdtkit.demo import DemoConfig, run_demo
from crdts import GCounter, ORSet
from replication import Replicator
from replication.history import History, random_operation
from replication.keyspacesize import EntrySizes, KeyspaceSize
from replication.messages import Entry
from replication.simnet import Faults, SimulatedNetwork


def test_the_demo_does_not_encode_every_keyspace_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression (issue 13): each round encoded all nodes' keyspaces. What is
    # left are the convergence checks: after the last operation each round
    # compares the first two keyspaces until they agree, then all of them.
    calls = 0
    encode = Replicator.encode_keyspace

    def counting(self: Replicator) -> bytes:
        nonlocal calls
        calls += 1
        return encode(self)

    monkeypatch.setattr(Replicator, "encode_keyspace", counting)
    config = DemoConfig(nodes=8, operations=300, seed=3)
    report = run_demo(config)
    assert report.passed
    assert report.rounds > 10
    assert calls <= 2 * report.rounds + config.nodes


@pytest.mark.parametrize(("seed", "shared"), [(0, False), (1, False), (0, True), (1, True)])
def test_equals_the_encoded_length_every_round_under_faults(seed: int, shared: bool) -> None:
    # shared: one EntrySizes for all (as the demo has), which sizes a state
    # by the operations its key holds: exact only if equal operations mean
    # equal bytes on every replica, under loss, duplication and reordering.
    rng = random.Random(seed)
    faults = Faults(loss=0.3, duplication=0.05, reorder=True, long_delay=0.02)
    net = SimulatedNetwork(seed=rng.getrandbits(32), faults=faults)
    ids = [f"n{i}" for i in range(5)]
    replicas = [Replicator(i, ids, rng=random.Random(rng.getrandbits(32))) for i in ids]
    for replica in replicas:
        net.add(replica)
    history = History()
    memo = EntrySizes(per_key=4) if shared else None  # 4: forgetting is exercised too
    sizes = [KeyspaceSize(r, memo) for r in replicas[:3]]
    for round_ in range(40):
        if round_ < 25:
            for _ in range(rng.randint(0, 12)):
                key, type_name, kind, args = random_operation(rng, 5)  # 30 keys: a 2-byte head
                history.apply(rng.choice(replicas), key, type_name, kind, *args)
        if round_ == 10:  # one that starts on a replica already holding keys
            sizes.append(KeyspaceSize(replicas[3], memo))
        net.run_round()
        for size, replica in zip(sizes, replicas, strict=False):
            assert size.nbytes == len(replica.encode_keyspace())
    assert len(replicas[0].keys()) >= 24
    if memo is not None:
        assert memo.found > memo.encoded  # states did repeat across replicas


def adding(count: int) -> Callable[[ORSet[str], str], ORSet[str]]:
    def mutate(s: ORSet[str], me: str) -> ORSet[str]:
        for i in range(count - 1):
            s.add(f"e{i}", me)
        return s.add(f"e{count - 1}", me)

    return mutate


@pytest.mark.parametrize("key", ["k" * 23, "k" * 24, "k" * 255, "k" * 256, "é" * 12, "鍵"])
def test_every_head_length_counts(key: str) -> None:
    # Keys and states around the CBOR head boundaries (24, 256, 65,536 bytes).
    replica = Replicator("a", [], rng=random.Random(1))
    size = KeyspaceSize(replica)
    for count in (1, 10, 40, 3_000):
        replica.update(key, ORSet, adding(count))
        assert size.nbytes == len(replica.encode_keyspace())
    for n in range(30):
        replica.update(f"{key}{n}", GCounter, lambda c, me: c.increment(me))
    assert size.nbytes == len(replica.encode_keyspace())


def _restarted() -> tuple[Replicator, Replicator]:
    """A replica with one key, and its restart under a new incarnation that
    prunes the old one's id at its second tick."""
    a = Replicator("a", [], rng=random.Random(1))
    a.update("k", GCounter, lambda c, me: c.increment(me, 2))
    state = a.get("k")
    assert state is not None
    b = Replicator.from_entries(
        "a", [Entry("k", state, a.ops("k"))], [], rng=random.Random(2), incarnation=5, prune_after=0
    )
    return a, b


def test_follows_pruning() -> None:
    # Pruning rewrites a key's state (an old incarnation's slot folded into a
    # live one) without a new update: it must be noted too.
    a, b = _restarted()
    size = KeyspaceSize(b)
    before = size.nbytes
    b.tick(0.0)
    b.tick(1.0)
    assert b.encode_keyspace() != a.encode_keyspace()  # it did prune
    assert size.nbytes == len(b.encode_keyspace()) != before


def test_shared_sizes_follow_pruning() -> None:
    # The same operations under markers of pruned ids are another state (the
    # pruned slots cleaned out), so the markers are part of what is looked up.
    a, b = _restarted()
    memo = EntrySizes()
    of_a, of_b = KeyspaceSize(a, memo), KeyspaceSize(b, memo)
    assert of_a.nbytes == of_b.nbytes == len(a.encode_keyspace())
    assert (memo.encoded, memo.found) == (1, 1)
    b.tick(0.0)
    b.tick(1.0)
    assert b.ops("k").pruned  # it did prune, and keeps a marker
    assert of_b.nbytes == len(b.encode_keyspace()) != of_a.nbytes
    assert memo.encoded == 2


def test_shared_sizes_are_bounded_per_key() -> None:
    replica = Replicator("a", [], rng=random.Random(1))
    memo = EntrySizes(per_key=2)
    size = KeyspaceSize(replica, memo)
    for _ in range(5):
        replica.update("k", GCounter, lambda c, me: c.increment(me))
        assert size.nbytes == len(replica.encode_keyspace())
    assert memo.encoded == 5
    assert len(memo._by_key["k"]) == 2
    with pytest.raises(ValueError, match="per_key"):
        EntrySizes(per_key=0)


def test_close_stops_following() -> None:
    replica = Replicator("a", [], rng=random.Random(1))
    size = KeyspaceSize(replica)
    size.close()
    replica.update("k", GCounter, lambda c, me: c.increment(me))
    assert size.nbytes == 1
