"""Chandy-Lamport snapshots over the gossip channels: every cut is consistent
and its join equals the specification of the operations it covers, under
loss, duplication, reordering, partitions and restarts."""

from __future__ import annotations

import random

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from crdts import GCounter, codec
from replication import Replicator
from replication.history import History, converged, random_operation
from replication.messages import Ack, encode
from replication.simnet import Faults, SimulatedNetwork
from replication.store import MemoryStore, restore
from replication.transport import Outgoing
from snapshot import GlobalSnapshot, LocalState, SnapshotId, SnapshotIncomplete
from snapshot.cut import MAX_COLOUR
from snapshot.errors import SnapshotError
from snapshot.marker import SnapshotNode, gather, take_snapshot
from snapshot.sec import check


def _cluster(seed: int, size: int, faults: Faults, *, channels: bool = False) -> SimulatedNetwork:
    net = SimulatedNetwork(seed=seed, faults=faults)
    ids = [f"r{i}" for i in range(size)]
    for i in ids:
        replica = Replicator(i, ids, rng=random.Random(f"{seed}/{i}"))
        net.add(SnapshotNode(replica, channels=channels))
    return net


def _node(net: SimulatedNetwork, node_id: str) -> SnapshotNode:
    node = net.node(node_id)
    assert isinstance(node, SnapshotNode)
    return node


def _nodes(net: SimulatedNetwork) -> list[SnapshotNode]:
    return [_node(net, n) for n in net.nodes]


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(2, 6),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplication=st.sampled_from([0.0, 0.05]),
    reorder=st.booleans(),
    long_delay=st.sampled_from([0.0, 0.05]),
    channels=st.booleans(),
)
def test_every_cut_is_consistent_and_joins_to_the_specification(  # noqa: PLR0917
    seed: int,
    size: int,
    loss: float,
    duplication: float,
    reorder: bool,
    long_delay: float,
    channels: bool,
) -> None:
    faults = Faults(loss=loss, duplication=duplication, reorder=reorder, long_delay=long_delay)
    rng = random.Random(seed)
    net = _cluster(rng.getrandbits(32), size, faults, channels=channels)
    ids = sorted(net.nodes)
    history = History()
    saved: dict[str, LocalState] = {}
    taken: list[SnapshotId] = []
    cuts: dict[SnapshotId, GlobalSnapshot] = {}  # gathered as soon as complete
    disturbed: set[SnapshotId] = set()  # a node crashed while it was under way
    # Colours are numbered across the cluster: a node restarted from an older
    # checkpoint goes back to its colour, losing its parts of the snapshots
    # since. A snapshot initiated later at a colour some node had passed
    # before such a restart may wait for a part that is gone, as a snapshot
    # under way at a crash may.
    reached, lost_below = 0, 0

    def collect() -> bool:
        for s in taken:
            if s not in cuts and (cut := gather(_nodes(net), s)) is not None:
                cuts[s] = cut
        return all(s in cuts or s in disturbed for s in taken)

    for _ in range(25):
        for _ in range(rng.randint(0, 4)):
            key, type_name, kind, args = random_operation(rng)
            history.apply(_node(net, rng.choice(ids)).replica, key, type_name, kind, *args)
        roll = rng.random()
        if roll < 0.15 and len(taken) < 4:
            taken.append(_node(net, rng.choice(ids)).initiate())
            if taken[-1].number <= lost_below:
                disturbed.add(taken[-1])
        elif roll < 0.25:
            split = rng.randint(1, size - 1)
            shuffled = rng.sample(ids, size)
            net.partition([shuffled[:split], shuffled[split:]])
        elif roll < 0.35:
            net.heal()
        elif roll < 0.45:
            node = rng.choice(ids)
            saved[node] = _node(net, node).checkpoint()
        elif roll < 0.5 and saved:
            node = rng.choice(sorted(saved))
            disturbed.update(s for s in taken if s not in cuts)
            lost_below = reached
            net.crash(node)
            restart_rng = random.Random(rng.getrandbits(32))
            back = SnapshotNode.restore(saved.pop(node), ids, rng=restart_rng, channels=channels)
            net.restart(back)
        net.run_round()
        collect()
        reached = max(reached, *(n.colour for n in _nodes(net)))
    net.heal()
    rounds = net.run_until(collect, 60)
    assert rounds is not None, "a snapshot did not complete within 60 rounds of the heal"
    event(f"cuts checked: {len(cuts)}, lost to a crash: {len(taken) - len(cuts)}")
    if any(cut.channels for cut in cuts.values()):
        event("a cut with frames in flight")
    for snapshot, cut in cuts.items():
        report = check(cut, history)
        assert report.passed, f"{snapshot}:\n{report}"


def _deliver(node: SnapshotNode, sender: str, frames: list[Outgoing]) -> list[Outgoing]:
    out: list[Outgoing] = []
    for dest, frame in frames:
        assert dest == node.node_id
        out += node.receive(0.0, sender, frame)
    return out


def _pair(*, channels: bool = False) -> tuple[SnapshotNode, SnapshotNode]:
    a = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)), channels=channels)
    b = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2)), channels=channels)
    return a, b


def test_a_frame_in_flight_across_the_cut_is_the_channel_state() -> None:
    # Only when channels are recorded; by default a part is its state alone.
    a, b = _pair(channels=True)
    a.replica.update("hits", GCounter, lambda c, me: c.increment(me, 5))
    snapshot = b.initiate()  # b records an empty state ...
    in_flight = a.tick(0.0)  # ... while a's opening push is on its way to b
    markers = b.tick(0.0)
    assert in_flight and all(dest == "b" for dest, _ in in_flight)
    acks = _deliver(a, "b", [m for m in markers if m[0] == "a"])  # a records, acks
    assert a.recording(snapshot) is not None  # b's marker closed a's only channel
    replies = _deliver(b, "a", in_flight)  # sent before a recorded: recorded in flight
    _deliver(b, "a", [f for f in acks if f[0] == "b"])  # a's ack closes the channel
    part = b.recording(snapshot)
    assert part is not None
    assert part.state.entries == ()
    assert len(part.channels["a"]) == len(in_flight)
    cut = gather([a, b], snapshot)
    assert cut is not None
    assert [e.key for _, _, e in cut.in_flight()] == []  # an opening push carries no entries
    assert replies  # b answered: gossip went on during the snapshot


@pytest.mark.parametrize("channels", [False, True])
def test_a_frame_sent_after_the_senders_recording_is_never_in_the_cut(channels: bool) -> None:
    # Over a reordering network a's data frame overtakes its marker: b must
    # record before taking the update in (Lai-Yang), not after.
    a, b = _pair(channels=channels)
    handshake = a.tick(0.0)
    while handshake:  # let a and b meet, so a pushes deltas from now on
        dest, frame = handshake.pop(0)
        node, sender = (b, "a") if dest == "b" else (a, "b")
        handshake += node.receive(0.0, sender, frame)
    snapshot = a.initiate()
    a.replica.update("hits", GCounter, lambda c, me: c.increment(me, 5))
    pushes = a.tick(1.0)  # carries a's colour: recorded, so red
    frames = pushes
    while frames:
        dest, frame = frames.pop(0)
        node, sender = (b, "a") if dest == "b" else (a, "b")
        frames += node.receive(1.0, sender, frame)
    b_hits = b.replica.get("hits")
    assert isinstance(b_hits, GCounter) and b_hits.value == 5  # the update did arrive ...
    cut = gather([a, b], snapshot)
    assert cut is not None
    assert cut.states["b"].state("hits") is None  # ... after b recorded
    assert cut.states["a"].state("hits") is None
    assert check(cut).passed


def test_snapshots_from_several_initiators_run_at_once() -> None:
    net = _cluster(7, 5, Faults(loss=0.2, reorder=True))
    history = History()
    rng = random.Random(7)
    taken = []
    for i in range(6):
        for _ in range(5):
            key, type_name, kind, args = random_operation(rng)
            history.apply(_node(net, f"r{rng.randrange(5)}").replica, key, type_name, kind, *args)
        taken.append(_node(net, f"r{i % 3}").initiate())
        net.run_round()
    assert len(set(taken)) == 6
    assert net.run_until(lambda: all(gather(_nodes(net), s) for s in taken), 50) is not None
    cuts = [gather(_nodes(net), s) for s in taken]
    for cut in cuts:
        assert cut is not None and check(cut, history).passed
    # Later cuts of one initiator cover at least what the earlier ones did.
    first, last = cuts[0], cuts[3]
    assert first is not None and last is not None
    assert first.states["r0"].clock.issubset(last.states["r0"].clock)


@pytest.mark.parametrize("size", [16, 64])
def test_a_snapshot_sends_at_most_3n_frames_of_its_own(size: int) -> None:
    # Issue 13: markers and answers were about 2N^2 (133,451 markers at 256
    # nodes); a part needs no channel state, so only the initiator sends
    # markers, once, and gossip carries the colour to the rest.
    net = _cluster(size, size, Faults(loss=0.1, reorder=True))
    rng = random.Random(size)
    for _ in range(size):
        key, type_name, kind, args = random_operation(rng)
        History().apply(_node(net, f"r{rng.randrange(size)}").replica, key, type_name, kind, *args)
    net.run_rounds(3)
    cut = take_snapshot(net, "r1", max_rounds=30)
    assert len(cut.states) == size and check(cut).passed
    frames = sum(n.stats.markers + n.stats.answers for n in _nodes(net))
    assert frames <= 3 * size
    # Channel state, kept as an option, costs a marker or its answer on
    # every channel.
    net = _cluster(size, size, Faults(), channels=True)
    take_snapshot(net, "r1", max_rounds=30)
    frames = sum(n.stats.markers + n.stats.answers for n in _nodes(net))
    assert frames >= size * (size - 1)


def test_take_snapshot_converged_cluster_holds_what_every_replica_holds() -> None:
    net = _cluster(3, 4, Faults(loss=0.3, duplication=0.05, reorder=True))
    history = History()
    rng = random.Random(3)
    for _ in range(40):
        key, type_name, kind, args = random_operation(rng)
        history.apply(_node(net, f"r{rng.randrange(4)}").replica, key, type_name, kind, *args)
    replicas = [n.replica for n in _nodes(net)]
    assert net.run_until(lambda: converged(replicas), 30) is not None
    cut = take_snapshot(net, "r2", max_rounds=30)
    keyspaces = {local.keyspace() for local in cut.states.values()}
    assert keyspaces == {replicas[0].encode_keyspace()}
    assert check(cut, history).passed


def test_a_node_that_is_down_holds_the_snapshot_up() -> None:
    net = _cluster(4, 3, Faults())
    net.crash("r1")
    with pytest.raises(SnapshotIncomplete, match="r0#1"):
        take_snapshot(net, "r0", max_rounds=5)


def test_a_restarted_node_initiates_under_its_new_incarnation() -> None:
    net = _cluster(5, 3, Faults())
    first = take_snapshot(net, "r1", max_rounds=10)
    saved = MemoryStore.of(_node(net, "r1").replica).load()
    net.crash("r1")
    back = restore(saved, "r1", ["r0", "r2"], rng=random.Random(5), incarnation=9)
    # The colour is kept beside the state (the node's store keeps it), so
    # the restarted node never records snapshot 1 again.
    net.restart(SnapshotNode(back, colour=_node(net, "r1").colour))
    second = take_snapshot(net, "r1", max_rounds=10)
    assert first.id == SnapshotId("r1", 1)
    assert second.id == SnapshotId("r1~9", 2)  # snapshots are numbered cluster-wide
    assert second.states["r1"].replica == "r1~9"


def _frame(kind: int, colour: object, body: object) -> bytes:
    # Version 3: a data frame's body is the replicator frame, nested as CBOR.
    return codec.encode_plain(["cl", 3, kind, colour, body])


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"junk",
        codec.encode_plain(["cl", 4, 0, 0, b""]),  # unknown version
        codec.encode_plain(["cl", 1, 0, [], b""]),  # version 1: epochs, not a colour
        # Version 2: the replicator frame as a byte string, decoded twice.
        codec.encode_plain(["cl", 2, 0, 0, encode(Ack("b", 0))]),
        _frame(0, 0, "not a replicator frame"),  # refused by the replica
        _frame(0, 0, ["ack", 3, "b", 0]),  # an old replicator frame: refused by it
        b"\x85\x62cl\x03\x00\x00",  # a data frame with no body
        b"\x85\x62cl\x03\x00\x18\x05" + encode(Ack("b", 0)),  # colour 5 in two bytes
        _frame(1, 0, b"x"),  # a marker has no body
        _frame(3, 0, b""),  # unknown kind
        _frame(0, -1, b""),  # colours start at 0
        _frame(0, ["b", 1], b""),  # a colour is one number
        _frame(0, True, b""),
        _frame(0, MAX_COLOUR + 1, b""),  # adding one would leave untagged CBOR
        _frame(2, 0, ["a"]),  # a bad acknowledgement
    ],
)
def test_a_malformed_frame_is_dropped_whole(frame: bytes) -> None:
    a, _ = _pair()
    a.replica.update("hits", GCounter, lambda c, me: c.increment(me))
    before = a.replica.encode_keyspace()
    assert a.receive(0.0, "b", frame) == []
    assert a.refusals == 1  # by the snapshot layer, or (a data frame's body) the replica
    assert a.stats.recorded == 0
    assert a.replica.encode_keyspace() == before


def test_no_peer_can_use_up_the_colours_or_stop_gossip() -> None:
    # The header is one number whatever the initiators, so there is nothing
    # to grow; a colour at the limit is honoured (a jump records at once),
    # and after it gossip goes on, though no snapshot can be initiated.
    a, b = _pair()
    assert a.receive(0.0, "b", _frame(1, MAX_COLOUR, b""))  # acknowledged
    assert a.colour == MAX_COLOUR and a.stats.malformed == 0
    with pytest.raises(SnapshotError, match="no colour left"):
        a.initiate()
    a.replica.update("hits", GCounter, lambda c, me: c.increment(me))
    frames = a.tick(1.0)
    while frames:
        dest, frame = frames.pop(0)
        node, sender = (b, "a") if dest == "b" else (a, "b")
        frames += node.receive(1.0, sender, frame)
    b_hits = b.replica.get("hits")
    assert isinstance(b_hits, GCounter) and b_hits.value == 1
    assert a.refusals == b.refusals == 0


def test_recordings_beyond_max_open_are_dropped_oldest_first() -> None:
    node = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)), max_open=2)
    ids = [node.initiate() for _ in range(3)]
    assert node.stats.evicted == 1
    node.receive(0.0, "b", _frame(1, 3, b""))  # b's marker closes the channel
    assert node.recording(ids[0]) is None
    assert node.recording(ids[2]) is not None
    node.forget(ids[2])
    assert node.recording(ids[2]) is None


def test_a_jump_in_colour_records_the_missed_snapshots_at_the_same_moment() -> None:
    node = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)))
    node.receive(0.0, "b", _frame(1, 3, b""))
    parts = [node.recording(SnapshotId("b", n)) for n in (1, 2, 3)]
    assert all(p is not None for p in parts)
    assert node.stats.recorded == 3
