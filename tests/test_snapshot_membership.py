"""Snapshots follow membership, and finished snapshots leave nothing behind
(issue 10, observations 1 and 2).

- A snapshot waits only for the members at its start that are still
  members: a visitor (a node that sent frames but was never a peer) and a
  member removed mid-snapshot (``Replicator.remove_peer``) never hold it up.
- Finished snapshots cost nothing afterwards: a quiet cluster's round after
  16 finished snapshots from 16 initiators sends exactly the bytes it sent
  before any, and thousands of restarts, each a new initiator, never stop
  gossip.

``CRDTKIT_SNAPSHOT_RESTARTS=10000 pytest tests/test_snapshot_membership.py``
runs the restart test with 10,000 restarts (the default run does 4,200, past
the 4,097 initiators at which the old main stopped gossiping).
"""

from __future__ import annotations

import os
import random

import pytest

from crdts import GCounter, codec
from replication import Replicator
from replication.simnet import Faults, SimulatedNetwork
from snapshot import SnapshotIncomplete, check
from snapshot.marker import SnapshotNode, gather, take_snapshot

RESTARTS = int(os.environ.get("CRDTKIT_SNAPSHOT_RESTARTS", "4200"))


def _cluster(
    ids: list[str], seed: int, faults: Faults | None = None, *, channels: bool = False
) -> SimulatedNetwork:
    net = SimulatedNetwork(seed=seed, faults=faults or Faults())
    for i in ids:
        replica = Replicator(i, ids, rng=random.Random(f"{seed}/{i}"))
        net.add(SnapshotNode(replica, channels=channels))
    return net


def _node(net: SimulatedNetwork, node_id: str) -> SnapshotNode:
    node = net.node(node_id)
    assert isinstance(node, SnapshotNode)
    return node


def _increment(c: GCounter, me: str) -> GCounter:
    return c.increment(me, 1)


# -- observation 1: who a snapshot waits for ---------------------------------------


@pytest.mark.parametrize("channels", [False, True])
def test_a_visitor_never_holds_up_a_snapshot(channels: bool) -> None:
    # A node started once under a name that is no member (a mistyped --id)
    # opens rounds with r0, even starts a snapshot, and goes away for good.
    ids = ["r0", "r1", "r2"]
    net = _cluster(ids, 1, channels=channels)
    visitor = SnapshotNode(Replicator("typo", ["r0"], rng=random.Random(9)), channels=channels)
    net.add(visitor)
    visitor.replica.update("hits", GCounter, _increment)
    visitor.initiate()
    net.run_rounds(3)
    assert "typo" not in _node(net, "r0").replica.peers
    net.crash("typo")
    for initiator in ("r0", "r1", "r0"):  # every later snapshot, not just the next
        cut = take_snapshot(net, initiator, max_rounds=20)
        assert sorted(cut.states) == ids
        assert check(cut).passed


def test_a_visitors_frames_never_hold_up_a_nodes_part() -> None:
    # With channels recorded, a part waits for its peers' channels only.
    a = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)), channels=True)
    b = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2)), channels=True)
    visitor = SnapshotNode(Replicator("v", ["a"], rng=random.Random(3)))
    for dest, frame in visitor.tick(0.0):  # the visitor opens a round with a
        assert dest == "a"
        a.receive(0.0, "v", frame)
    taken = a.initiate()
    for dest, frame in a.tick(1.0):
        if dest == "b":
            for back, reply in b.receive(1.0, "a", frame):
                if back == "a":
                    a.receive(1.0, "b", reply)
    assert a.recording(taken) is not None
    assert b.recording(taken) is not None


def test_a_member_removed_mid_snapshot_never_holds_it_up() -> None:
    # With channels recorded: without, a part waits for nobody.
    ids = ["r0", "r1", "r2", "r3"]
    net = _cluster(ids, 2, Faults(loss=0.2, reorder=True), channels=True)
    _node(net, "r3").replica.update("hits", GCounter, _increment)
    net.run_rounds(5)
    net.crash("r3")  # it goes before it hears of the snapshot ...
    taken = _node(net, "r0").initiate()
    net.run_rounds(5)
    members = [_node(net, i) for i in ids[:3]]
    assert gather(members, taken) is None  # ... so it holds the snapshot up ...
    for node in members:
        node.replica.remove_peer("r3")  # ... until it is removed
    assert net.run_until(lambda: gather(members, taken) is not None, 20) is not None
    cut = gather(members, taken)
    assert cut is not None and sorted(cut.states) == ids[:3]
    assert check(cut).passed


@pytest.mark.parametrize("channels", [False, True])
def test_take_snapshot_waits_for_the_members_that_remain(channels: bool) -> None:
    ids = ["r0", "r1", "r2"]
    net = _cluster(ids, 3, channels=channels)
    net.crash("r2")
    for node in ("r0", "r1"):
        _node(net, node).replica.remove_peer("r2")
    cut = take_snapshot(net, "r1", max_rounds=10)
    assert sorted(cut.states) == ["r0", "r1"]


def test_a_member_that_is_down_still_holds_a_snapshot_up() -> None:
    # Still a member: its part is owed (as before), even though a peer that
    # joined since is not waited for.
    net = _cluster(["r0", "r1", "r2"], 4)
    net.crash("r1")
    net.add(SnapshotNode(Replicator("r3", ["r0"], rng=random.Random(4))))
    with pytest.raises(SnapshotIncomplete, match="r0#1"):
        take_snapshot(net, "r0", max_rounds=5)


def test_a_member_added_mid_snapshot_is_not_waited_for() -> None:
    net = _cluster(["r0", "r1"], 5, channels=True)
    taken = _node(net, "r0").initiate()
    _node(net, "r0").replica.add_peer("r9")  # never comes up
    nodes = [_node(net, "r0"), _node(net, "r1")]
    assert net.run_until(lambda: gather(nodes, taken) is not None, 10) is not None


# -- observation 2: finished snapshots leave nothing behind ------------------------


def _quiet_round_bytes(net: SimulatedNetwork, rngs: list[random.Random]) -> int:
    """The bytes of one round of a quiet cluster, with every replica's
    generator set to the same state each time, so two calls choose the same
    peers and differ only by what the snapshot layer adds."""
    for n, rng in enumerate(rngs):
        rng.seed(f"quiet/{n}")
    net.run_round()
    return net.stats.bytes_sent_per_round[-1]


@pytest.mark.parametrize("channels", [False, True])
def test_a_quiet_round_after_16_finished_snapshots_sends_what_it_sent_before(
    channels: bool,
) -> None:
    ids = [f"r{i:02d}" for i in range(16)]
    net = SimulatedNetwork(seed=6)
    rngs = [random.Random(i) for i in range(len(ids))]
    for i, rng in zip(ids, rngs, strict=True):
        net.add(SnapshotNode(Replicator(i, ids, rng=rng), channels=channels))
    for i in ids:
        _node(net, i).replica.update("hits", GCounter, _increment)
    replicas = [_node(net, i).replica for i in ids]
    assert net.run_until(lambda: len({r.encode_keyspace() for r in replicas}) == 1, 30)
    net.run_rounds(3)
    # Once to settle: the first quiet exchange of a pair ends with a push
    # and an ack, the next ones without (Replicator._quiet).
    _quiet_round_bytes(net, rngs)
    before = _quiet_round_bytes(net, rngs)
    frames_before = net.stats.sent
    _quiet_round_bytes(net, rngs)
    per_round = net.stats.sent - frames_before
    for initiator in ids:  # 16 snapshots, each from its own initiator
        take_snapshot(net, initiator, max_rounds=30)
    net.run_rounds(3)
    assert _quiet_round_bytes(net, rngs) == before
    sent = net.stats.sent
    _quiet_round_bytes(net, rngs)
    assert net.stats.sent - sent == per_round  # no markers left going round


def test_restarts_with_snapshots_never_stop_gossip() -> None:
    # Each restart is a new incarnation, so a new initiator; on the old main
    # every one was kept in every frame for good, and at 4,097 every frame
    # was refused both ways.
    ids = ["r0", "r1"]
    net = _cluster(ids, 7)
    header = _header_bytes(net)
    hits = 0
    for n in range(1, RESTARTS + 1):
        checkpoint = _node(net, "r1").checkpoint()
        net.crash("r1")
        net.restart(SnapshotNode.restore(checkpoint, ["r0"], rng=random.Random(n), incarnation=n))
        cut = take_snapshot(net, "r1", max_rounds=10)
        assert cut.states["r1"].replica == f"r1~{n}"
        if n % 1000 == 0 or n == RESTARTS:  # and gossip still carries updates
            _node(net, "r1").replica.update("hits", GCounter, _increment)
            hits += 1

            def arrived(want: int = hits) -> bool:
                state = _node(net, "r0").replica.get("hits")
                return isinstance(state, GCounter) and state.value == want

            assert net.run_until(arrived, 10) is not None
    assert all(_node(net, i).refusals == 0 for i in ids)
    # The header grows with the number of snapshots as a CBOR integer does
    # (1 byte to 23, 3 bytes to 65,535), never with the initiators.
    assert _header_bytes(net) <= header + 2


def _header_bytes(net: SimulatedNetwork) -> int:
    """What the snapshot layer adds to r0's next round-opening frame,
    besides the length of the replicator frame it wraps."""
    node = _node(net, "r0")
    (dest, frame), *_ = node.tick(net.now)
    inner = node.replica.tick(net.now)  # the same opening, bare (r1 is its only peer)
    assert dest == "r1" and inner
    return len(frame) - len(codec.encode_plain(inner[0][1]))
