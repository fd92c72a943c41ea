"""Gossip work per replica-round does not grow with the cluster (issue 13).

A replica that has met many peers must not pay a pass over all of them for
every change it records: positions move with every acknowledgement, and the
least position held by every peer (which decides whether a log record can
be replaced) is kept up to date as they move. Speed itself is measured in
``bench`` (``python -m bench --only gossip-scale-replicas``); this counts
the work.
"""

from __future__ import annotations

from random import Random

from crdts import GCounter
from replication import Replicator
from replication.transport import Outgoing

PEERS = 200


class _CountingPeers(dict):  # type: ignore[type-arg]
    """The replicator's per-peer table, counting the peers each pass over it visits."""

    visited = 0

    def items(self):  # type: ignore[no-untyped-def]
        self.visited += len(self)
        return super().items()


def deliver(nodes: dict[str, Replicator], sender: str, frames: list[Outgoing]) -> None:
    """Deliver ``frames`` from ``sender`` on a perfect network, breadth
    first, with every answer, until none are left (bounded)."""
    queue = [(sender, dest, frame) for dest, frame in frames]
    for _ in range(10_000):
        if not queue:
            return
        source, dest, frame = queue.pop(0)
        queue += [(dest, d, f) for d, f in nodes[dest].receive(0.0, source, frame)]
    raise AssertionError("the exchange did not settle")


def _bump(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me)


def test_recording_a_change_does_not_walk_every_peer_after_each_ack() -> None:
    # Regression (issue 13): every acknowledgement dropped the cached least
    # position, so the next change recorded walked all the peers met: with
    # a peer's ack between changes, O(peers) per change (here 200 changes
    # visited 40,000 peers on main).
    ids = [f"n{i:03d}" for i in range(PEERS + 1)]
    nodes = {i: Replicator(i, ids, rng=Random(k)) for k, i in enumerate(ids)}
    a = nodes["n000"]
    peers = ids[1:]
    a.update("k", GCounter, _bump)
    deliver(nodes, "n000", a.replicate(peers))  # every peer positioned
    assert a.holders(a.head) == peers
    table = a._peers = _CountingPeers(a._peers)
    rng = Random(5)
    for _ in range(PEERS):
        a.update("k", GCounter, _bump)  # records the change: is the log record held by all?
        peer = rng.choice(peers)
        deliver(nodes, "n000", a.replicate([peer]))  # its ack moves one position
    assert table.visited <= 4 * PEERS, table.visited
    # And the answer is still right: the lagging peers are the ones not replicated to.
    deliver(nodes, "n000", a.replicate(peers))
    assert a.holders(a.head) == peers
    assert all(nodes[p].get("k") == a.get("k") for p in peers)


def test_an_empty_push_is_the_frame_encode_interval_writes() -> None:
    # A push with no entries skips encode_interval (most pushes of a quiet
    # round): its bytes must stay those encode_interval would write.
    from crdts import CausalContext
    from replication.messages import Push, Reply, encode, encode_interval, parse

    a = Replicator("a", ["b"], rng=Random(1))
    b = Replicator("b", ["a"], rng=Random(2))
    nodes = {"a": a, "b": b}
    sent: list[bytes] = []
    frames = a.tick(0.0)
    for _ in range(10):
        if not frames:
            break
        dest, frame = frames.pop(0)
        sent.append(frame)
        frames += nodes[dest].receive(0.0, "b" if dest == "a" else "a", frame)
    pushes = [m for m in map(parse, sent) if isinstance(m, Push) and m.reply != Reply.PUSH_AND_ASK]
    assert pushes and not any(m.entries for m in pushes)
    for frame in sent:
        message = parse(frame)
        if isinstance(message, Push) and message.reply != Reply.PUSH_AND_ASK:
            assert encode_interval(message, []) == [frame]
    clock = CausalContext()
    clock.vv.update({"r1": 5, "r2": 2**40})
    template = Push("a", "b", 3, 9, 0, 1, Reply.PUSH, clock, (), 7, (("r1", 5, 2**63),))
    assert encode_interval(template, []) == [encode(template)]


def _least_by_walking(r: Replicator) -> tuple[int | None, int]:
    positions = [
        p.acked if p.acked is not None else p.caught_up
        for node, p in r._peers.items()
        if node in r.peers
    ]
    held = [p for p in positions if p is not None]
    least = min(held, default=1 << 64)
    return least, positions.count(least)


def test_the_kept_least_position_is_the_one_a_walk_finds() -> None:
    # Acks up and down (a restarted peer acks less), catch-ups, new
    # incarnations, visitors, peers added and removed, over a lossy network:
    # whenever the replica has a least position kept, a walk agrees.
    from replication.simnet import Faults, SimulatedNetwork

    ids = [f"n{i}" for i in range(6)]
    rng = Random(11)
    for seed in range(8):
        nodes = {i: Replicator(i, ids, rng=Random(seed * 10 + k)) for k, i in enumerate(ids)}
        net = SimulatedNetwork(seed=seed, faults=Faults(loss=0.2, duplication=0.05, reorder=True))
        for node in nodes.values():
            net.add(node)
        a = nodes["n0"]
        for step in range(120):
            choice = rng.randrange(6)
            if choice == 0:
                rng.choice(list(nodes.values())).update("k", GCounter, _bump)
            elif choice == 1 and a._peers:
                peer = rng.choice(sorted(a._peers))  # acks come from nodes heard from
                a._on_ack(peer, rng.randint(-1, a.head))  # a restarted peer acks less
            elif choice == 2 and len(a.peers) > 2:
                a.remove_peer(rng.choice(a.peers))
            elif choice == 3:
                a.add_peer(rng.choice(ids[1:]))
            elif choice == 4:
                a._meet(rng.choice(ids[1:]), f"x{step}")  # a new incarnation heard
            else:
                net.run_round()
            a.update("k", GCounter, _bump)  # records: computes the least if it was dropped
            if a._held_by_all is not None:
                assert (a._held_by_all, a._at_least) == _least_by_walking(a)


def _exchange(nodes: dict[str, Replicator], opener: str) -> int:
    """One exchange opened by ``opener`` on a perfect network: its frames."""
    queue = [(opener, dest, frame) for dest, frame in nodes[opener].tick(0.0)]
    for count in range(100):
        if not queue:
            return count
        source, dest, frame = queue.pop(0)
        queue += [(dest, d, f) for d, f in nodes[dest].receive(0.0, source, frame)]
    raise AssertionError("the exchange did not settle")


def test_an_idle_exchange_takes_two_frames_not_four() -> None:
    """Opener, push, push, ack: the last two told the peer nothing once a
    pair has settled (its position in our log at our head, our position in
    its log and our clock as our last push said). An idle cluster's gossip
    costs half as much (172 -> 93 us of CPU per replica-round at 16
    replicas), and anything new still travels."""
    nodes = {n: Replicator(n, ["a", "b"], rng=Random(i)) for i, n in enumerate("ab")}
    nodes["a"].update("k", GCounter, lambda c, me: c.increment(me))
    # The first quiet exchange still says the positions once.
    assert [_exchange(nodes, opener) for opener in "aaabb"] == [4, 4, 2, 2, 2]
    # Something new on either side: the exchange carries it, then quiets.
    nodes["b"].update("k", GCounter, lambda c, me: c.increment(me, 5))
    assert [_exchange(nodes, opener) for opener in "aab"] == [4, 2, 2]
    assert nodes["a"].get("k") == nodes["b"].get("k")
    nodes["a"].update("j", GCounter, lambda c, me: c.increment(me))
    assert [_exchange(nodes, opener) for opener in "aab"] == [4, 4, 2]
    assert nodes["b"].get("j") == nodes["a"].get("j")
    assert nodes["a"].holders(nodes["a"].head) == ["b"]
