"""Snapshots: what a gossip round costs before any snapshot, while one is
under way, and after 16 have finished.

Three clusters of :class:`~snapshot.marker.SnapshotNode` are built from one
seed, identically: each node increments its own GCounter key once, and the
cluster gossips until every replica holds the same bytes, then a few more
rounds (so every first-contact catch-up is over: the cluster is quiet).

- *before*: the quiet cluster, never a snapshot: the floor.
- *after 16 finished*: 16 snapshots, one after another, each from its own
  initiator (16 different nodes), each run until every node's part is
  complete; then the quiet cluster again. Issue 10 observed 1.28x (one
  initiator, 256 nodes) to 3.6x (16 initiators) of the floor, permanently;
  the target is at most 1.1x.
- *during one*: a copy of the quiet cluster, a snapshot initiated at one node
  (the state copy it takes is not timed), then the rounds until every part
  is complete, each timed alone (checking for completion is not timed).

Each repetition times ``gossip_rounds`` rounds of the before and after
clusters, one of each in turn, then one snapshot's rounds, so a shared
machine's slow moments hit them all; the figure is the median time per
round. Bytes per round come from the
network's counters and do not vary from run to run.

Every random choice comes from the benchmark's seeded ``random.Random``.
"""

from __future__ import annotations

import copy
import gc
import statistics
from random import Random
from time import perf_counter

from bench.harness import Config, Row, Timing, size
from crdts import GCounter
from replication import Replicator
from replication.simnet import SimulatedNetwork
from snapshot.marker import SnapshotNode, gather, take_snapshot

#: Snapshots finished before the "after" cluster is timed.
FINISHED = 16
#: Safety bound on any run to convergence or completion.
MAX_ROUNDS = 200


def _frames_of_one(quiet: SimulatedNetwork, initiator: str) -> tuple[int, int, int]:
    """One snapshot on ``quiet`` (changed): the frames of the snapshot
    layer's own (markers and answers), every frame sent meanwhile, and the
    rounds until every part was complete."""
    nodes = [_node(quiet, i) for i in sorted(quiet.nodes)]
    own = sum(n.stats.markers + n.stats.answers for n in nodes)
    sent, rounds = quiet.stats.sent, quiet.stats.rounds
    take_snapshot(quiet, initiator, max_rounds=MAX_ROUNDS)
    own = sum(n.stats.markers + n.stats.answers for n in nodes) - own
    return own, quiet.stats.sent - sent, quiet.stats.rounds - rounds


def snapshot_frames(config: Config, rng: Random) -> list[Row]:
    """Frames a snapshot sends of its own (markers and their answers) on a
    quiet, fault-free cluster of N nodes, against N: target at most 3N
    (PERFORMANCE.md; Chandy-Lamport sends a marker and an answer on each of
    the N(N - 1) channels, which ``SnapshotNode(channels=True)`` still does:
    its count is in the note up to 64 nodes)."""
    rows = []
    for n in config.snapshot_frame_nodes:
        seed = rng.getrandbits(64)
        net = _quiet_cluster(n, seed)
        initiator = rng.choice(sorted(net.nodes))
        quiet = net.stats.sent
        net.run_round()
        quiet = net.stats.sent - quiet
        own, sent, rounds = _frames_of_one(net, initiator)
        note = (
            f"{rounds} rounds until every part was complete, {sent:,} frames sent in them "
            f"(data included; a quiet round sends {quiet:,})"
        )
        if n <= 64:
            net = _quiet_cluster(n, seed, channels=True)
            with_channels, _, _ = _frames_of_one(net, initiator)
            note += f"; with channel state (channels=True): {with_channels:,} frames of its own"
        rows.append(
            Row(
                f"snapshot frames per snapshot, {n:,} nodes",
                "snapshot",
                f"N = {n:,} nodes",
                Timing.constant(n),
                Timing.constant(own),
                3.0,
                note,
                unit="frames",
            )
        )
    return rows


def _increment(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me, 1)


def _quiet_cluster(n: int, seed: int, *, channels: bool = False) -> SimulatedNetwork:
    rng = Random(seed)
    width = len(str(n - 1))
    ids = [f"r{i:0{width}d}" for i in range(n)]
    net = SimulatedNetwork(seed=rng.getrandbits(64))
    for node_id in ids:
        replica = Replicator(node_id, ids, rng=Random(rng.getrandbits(64)))
        node = SnapshotNode(replica, channels=channels)
        node.replica.update("hits", GCounter, _increment)
        net.add(node)
    replicas = [_node(net, i).replica for i in ids]

    def converged() -> bool:
        return len({r.encode_keyspace() for r in replicas}) == 1

    if net.run_until(converged, MAX_ROUNDS) is None:
        raise RuntimeError(f"{n} snapshot nodes did not converge in {MAX_ROUNDS} rounds")
    net.run_rounds(5)
    state = replicas[-1].get("hits")
    if not isinstance(state, GCounter) or state.value != n:
        raise RuntimeError("the cluster converged to the wrong count")
    return net


def _node(net: SimulatedNetwork, node_id: str) -> SnapshotNode:
    node = net.node(node_id)
    assert isinstance(node, SnapshotNode)
    return node


def _timed_round(net: SimulatedNetwork) -> float:
    start = perf_counter()
    net.run_round()
    return perf_counter() - start


def _snapshot_rounds(quiet: SimulatedNetwork, initiator: str) -> tuple[list[float], list[int], int]:
    """The rounds of one snapshot on a copy of ``quiet``: their times, their
    bytes, and the frames sent while it was under way."""
    net = copy.deepcopy(quiet)
    nodes = [_node(net, i) for i in sorted(net.nodes)]
    taken = _node(net, initiator).initiate()
    sent = net.stats.sent
    times: list[float] = []
    gc.collect()
    while gather(nodes, taken) is None:
        if len(times) >= MAX_ROUNDS:
            raise RuntimeError(f"snapshot {taken} incomplete after {MAX_ROUNDS} rounds")
        start = perf_counter()
        net.run_round()
        times.append(perf_counter() - start)
    return times, net.stats.bytes_sent_per_round[-len(times):], net.stats.sent - sent


def snapshot_rounds(config: Config, rng: Random) -> list[Row]:
    """Round cost before any snapshot, during one and after 16 finished;
    see the module docstring."""
    n = config.snapshot_nodes
    seed = rng.getrandbits(64)
    before = _quiet_cluster(n, seed)
    after = _quiet_cluster(n, seed)
    ids = sorted(after.nodes)
    initiators = Random(rng.getrandbits(64)).sample(ids, FINISHED)
    markers_per_snapshot = []
    for initiator in initiators:
        sent = after.stats.sent
        take_snapshot(after, initiator, max_rounds=MAX_ROUNDS)
        markers_per_snapshot.append(after.stats.sent - sent)
    after.run_rounds(5)  # the last markers answered
    during_at = rng.choice(ids)

    samples: dict[str, list[float]] = {"before": [], "after": [], "during": []}
    bytes_seen: dict[str, list[int]] = {"before": [], "after": [], "during": []}
    frames_during: list[int] = []
    frames_quiet: list[int] = []
    rounds_during: list[int] = []
    for i in range(config.warmup + config.repeat):
        gc.collect()
        sent = before.stats.sent
        b_times, a_times = [], []
        for _ in range(config.gossip_rounds):  # round by round, in turn
            b_times.append(_timed_round(before))
            a_times.append(_timed_round(after))
        b_frames = (before.stats.sent - sent) // config.gossip_rounds
        b_bytes = before.stats.bytes_sent_per_round[-config.gossip_rounds :]
        a_bytes = after.stats.bytes_sent_per_round[-config.gossip_rounds :]
        d_times, d_bytes, d_frames = _snapshot_rounds(before, during_at)
        if i < config.warmup:
            continue
        samples["before"].append(statistics.median(b_times))
        samples["after"].append(statistics.median(a_times))
        samples["during"].append(statistics.median(d_times))
        bytes_seen["before"] += b_bytes
        bytes_seen["after"] += a_bytes
        bytes_seen["during"] += d_bytes
        frames_during.append(d_frames)
        frames_quiet.append(b_frames)
        rounds_during.append(len(d_times))

    floor = Timing.of(samples["before"])
    floor_is = f"a quiet round of the same {n:,} nodes before any snapshot, same run"
    mean_bytes = {k: statistics.mean(v) for k, v in bytes_seen.items()}
    during_note = (
        f"{statistics.median(rounds_during):.0f} rounds to complete, "
        f"{statistics.median(frames_during):,.0f} frames while under way (data, markers and "
        f"acknowledgements; a quiet round sends {statistics.median(frames_quiet):,.0f}); "
        f"each of the {FINISHED} finished snapshots sent {min(markers_per_snapshot):,}-"
        f"{max(markers_per_snapshot):,} frames from initiation to completion"
    )
    bytes_note = (
        f"bytes per round, median over the timed rounds: before "
        f"{size(statistics.median(bytes_seen['before']))}, after "
        f"{size(statistics.median(bytes_seen['after']))}, during "
        f"{size(statistics.median(bytes_seen['during']))}"
    )
    return [
        Row(
            f"snapshot round cost after {FINISHED} finished, {n:,} nodes",
            "round",
            floor_is,
            floor,
            Timing.of(samples["after"]),
            1.1,
            f"{FINISHED} snapshots from {FINISHED} initiators, each complete, then quiet "
            f"rounds; {bytes_note}",
        ),
        Row(
            f"snapshot round cost during one, {n:,} nodes",
            "round",
            floor_is,
            floor,
            Timing.of(samples["during"]),
            None,
            during_note,
        ),
        Row(
            f"snapshot bytes per round after {FINISHED} finished, {n:,} nodes",
            "round",
            f"bytes of a quiet round before any snapshot, {n:,} nodes",
            Timing.of(bytes_seen["before"]),
            Timing.of(bytes_seen["after"]),
            1.1,
            f"mean {size(mean_bytes['before'])} before, {size(mean_bytes['after'])} after",
            unit="B",
        ),
        Row(
            f"snapshot bytes per round during one, {n:,} nodes",
            "round",
            f"bytes of a quiet round before any snapshot, {n:,} nodes",
            Timing.of(bytes_seen["before"]),
            Timing.of(bytes_seen["during"]),
            None,
            f"mean {size(mean_bytes['during'])} per round while under way",
            unit="B",
        ),
    ]
