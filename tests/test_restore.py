"""Restoring replicas and whole clusters from cuts and checkpoints: a new
incarnation every time, the channels replayed, nothing in the cut lost."""

from __future__ import annotations

import random

from crdts import GCounter
from replication import Replicator
from replication.history import History, converged, random_operation
from replication.messages import Entry, Push, Reply, encode
from replication.simnet import Faults, SimulatedNetwork
from replication.transport import Outgoing
from snapshot import (
    GlobalSnapshot,
    LocalState,
    SnapshotId,
    SnapshotNode,
    check,
    gather,
    restore_cluster,
    restore_replica,
)

Nodes = dict[str, SnapshotNode]


def pump(nodes: Nodes, frames: list[tuple[str, Outgoing]]) -> None:
    """Deliver ``(sender, (destination, frame))`` and every reply, in order."""
    while frames:
        sender, (destination, frame) = frames.pop(0)
        frames += [(destination, out) for out in nodes[destination].receive(0.0, sender, frame)]


def test_a_cut_with_an_entry_in_flight_restores_it_to_its_destination() -> None:
    # Only a cut with channel state holds frames in flight (by default a
    # part is the recorded state, which already holds what its frames carry).
    history = History()
    nodes = {
        "a": SnapshotNode(Replicator("a", ["b", "c"], rng=random.Random(1)), channels=True),
        "b": SnapshotNode(Replicator("b", ["a", "c"], rng=random.Random(2)), channels=True),
        "c": SnapshotNode(Replicator("c", ["a"], rng=random.Random(3)), channels=True),
    }
    history.apply(nodes["a"].replica, "hits", "GCounter", "increment", 4)
    opening = nodes["c"].tick(0.0)  # c opens a round with a, its only peer
    replies = nodes["a"].receive(0.0, "c", opening[0][1])  # a answers with "hits", unmarked
    taken = nodes["b"].initiate()
    markers = nodes["b"].tick(0.0)
    (to_c,) = [frame for dest, frame in markers if dest == "c"]
    held = nodes["c"].receive(0.0, "b", to_c)  # c records an empty state ...
    pump(nodes, [("a", r) for r in replies])  # ... then a's earlier answer arrives: in flight
    pump(nodes, [("c", out) for out in held])  # c's marker and ack, behind it on each channel
    pump(nodes, [("b", m) for m in markers if m[0] == "a"])
    for _ in range(3):  # markers and acknowledgements settle
        pump(nodes, [(name, out) for name, node in nodes.items() for out in node.tick(1.0)])
    cut = gather(nodes.values(), taken)
    assert cut is not None
    assert cut.states["c"].state("hits") is None
    assert [(s, d, e.key) for s, d, e in cut.in_flight()] == [("a", "c", "hits")]
    assert check(cut, history).passed
    cluster = restore_cluster(cut, rng=random.Random(4))
    c_hits = cluster["c"].get("hits")
    assert isinstance(c_hits, GCounter) and c_hits.value == 4
    assert all(r.replica_id.startswith(f"{n}~") for n, r in cluster.items())


def test_a_restored_cluster_converges_holding_everything_its_cut_held() -> None:
    rng = random.Random(5)
    ids = [f"r{i}" for i in range(5)]
    net = SimulatedNetwork(seed=5, faults=Faults(loss=0.3, duplication=0.05, reorder=True))
    for i in ids:
        net.add(SnapshotNode(Replicator(i, ids, rng=random.Random(i))))
    nodes = [n for n in net.nodes.values() if isinstance(n, SnapshotNode)]
    history = History()
    taken = None
    for step in range(20):
        for _ in range(5):
            key, type_name, kind, args = random_operation(rng)
            history.apply(rng.choice(nodes).replica, key, type_name, kind, *args)
        if step == 8:
            taken = rng.choice(nodes).initiate()
        net.run_round()
    assert taken is not None
    assert net.run_until(lambda: gather(nodes, taken) is not None, 30) is not None
    cut = gather(nodes, taken)
    assert cut is not None and check(cut, history).passed
    held = {
        op.dot
        for op in history.operations
        if any(local.clock.contains(op.key, *op.dot) for local in cut.states.values())
    }
    cluster = restore_cluster(cut, rng=random.Random(6))
    again = SimulatedNetwork(seed=6, faults=Faults(loss=0.3, reorder=True))
    for replica in cluster.values():
        again.add(replica)
    replicas = list(cluster.values())
    assert again.run_until(lambda: converged(replicas), 30) is not None
    survivors = History([op for op in history.operations if op.dot in held])
    assert survivors.problems(replicas, held) == []


def test_a_replica_restored_from_an_older_checkpoint_never_reuses_a_dot() -> None:
    a = Replicator("a", [], rng=random.Random(1))
    a.update("hits", GCounter, lambda c, me: c.increment(me, 1))
    old = SnapshotNode(a).checkpoint()
    a.update("hits", GCounter, lambda c, me: c.increment(me, 10))  # sent, then lost in a crash
    back = restore_replica(old, [], rng=random.Random(2))
    back.update("hits", GCounter, lambda c, me: c.increment(me, 100))
    assert back.replica_id != "a" and back.replica_id.startswith("a~")
    assert back.ops("hits").count("a") == 1  # the old incarnation's dot, kept
    assert back.ops("hits").count(back.replica_id) == 1  # the new one's, under its own id
    merged = a.get("hits")
    state = back.get("hits")
    assert isinstance(merged, GCounter) and isinstance(state, GCounter)
    merged.merge(state)
    assert merged.value == 111  # both histories count, none overwrites the other


def test_a_frame_in_flight_under_another_nodes_name_is_not_replayed() -> None:
    a = Replicator("a", [], rng=random.Random(1))
    a.update("hits", GCounter, lambda c, me: c.increment(me, 3))
    entry = Entry("hits", a.get("hits"), a.ops("hits"))  # type: ignore[arg-type]
    forged = encode(Push("a", "c", 0, 1, 0, 1, Reply.NOTHING, a.context, (entry,)))
    c = LocalState.capture(Replicator("c", [], rng=random.Random(2)))
    cut = GlobalSnapshot(SnapshotId("c", 1), {"c": c}, {("b", "c"): (forged,)})
    assert list(cut.in_flight()) == []
    assert restore_cluster(cut, rng=random.Random(3))["c"].keys() == []
    honest = GlobalSnapshot(SnapshotId("c", 1), {"c": c}, {("a", "c"): (forged,)})
    assert [e.key for _, _, e in honest.in_flight()] == ["hits"]
