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
from replication.messages import Entry, Push, Reply, encode, parse
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


def _exchange(nodes: dict[str, Replicator], opener: str, peer: str | None = None) -> int:
    """One exchange opened by ``opener`` (with ``peer``, else a round's pick)
    on a perfect network: its frames."""
    first = nodes[opener]
    opened = first.tick(0.0) if peer is None else first._gossip(peer, reply=Reply.PUSH_AND_ASK)
    queue = [(opener, dest, frame) for dest, frame in opened]
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
    # The first carries the update; the next is quiet already: b takes its
    # position in a's log from a's opener, its clock covering a's.
    assert [_exchange(nodes, opener) for opener in "aaabb"] == [4, 2, 2, 2, 2]
    # Something new on either side: the exchange carries it, then quiets.
    nodes["b"].update("k", GCounter, lambda c, me: c.increment(me, 5))
    assert [_exchange(nodes, opener) for opener in "aab"] == [4, 2, 2]
    assert nodes["a"].get("k") == nodes["b"].get("k")
    nodes["a"].update("j", GCounter, lambda c, me: c.increment(me))
    assert [_exchange(nodes, opener) for opener in "aab"] == [4, 4, 2]
    assert nodes["b"].get("j") == nodes["a"].get("j")
    assert nodes["a"].holders(nodes["a"].head) == ["b"]


def test_a_fresh_pair_with_nothing_to_send_settles_in_two_frames() -> None:
    """A pair's first exchange, when neither holds anything the other
    lacks, is opener and push: the opener's interval (head, head] says its
    log holds nothing beyond its clock, which the peer's clock covers, so
    the peer takes that position and acknowledges it at once; and the
    peer's clock covering all the opener holds, the opener's answer would
    carry nothing. It took four frames and two catch-ups: at 1,024 replicas
    almost every exchange is a pair's first (docs/gossip-scale.md)."""
    ids = ["a", "b", "c"]
    nodes = {n: Replicator(n, ids, rng=Random(i)) for i, n in enumerate(ids)}
    nodes["c"].update("k", GCounter, lambda c, me: c.increment(me))
    for opener, peer in (("c", "a"), ("c", "b")):
        deliver(nodes, opener, nodes[opener]._gossip(peer, reply=Reply.PUSH_AND_ASK))
    catch_ups = sum(n.stats.catch_ups for n in nodes.values())
    # a and b hold the same (c's update), and have never met.
    assert _exchange(nodes, "a", "b") == 2
    assert sum(n.stats.catch_ups for n in nodes.values()) == catch_ups
    assert nodes["b"]._positions["a"] == nodes["a"].head
    assert nodes["a"].head > 0 and "b" in nodes["a"].holders(nodes["a"].head)
    # A pair of empty replicas: the same.
    empty = {n: Replicator(n, ["x", "y"], rng=Random(i)) for i, n in enumerate("xy")}
    assert _exchange(empty, "x", "y") == 2


def test_an_opener_gives_a_position_only_when_its_log_is_covered() -> None:
    """The position an opener offers is taken only by a peer whose clock
    covers the opener's, and offered only while the opener holds nothing
    beyond its clock: else the peer would hold a position in a log whose
    operations it lacks, and never be sent them."""
    ids = ["a", "b", "c", "d"]
    nodes = {n: Replicator(n, ids, rng=Random(i)) for i, n in enumerate(ids)}
    a, b, c, d = (nodes[n] for n in ids)
    a.update("k", GCounter, lambda s, me: s.increment(me))
    # b lacks a's update: a's opener offers a's head, b does not take it.
    b.receive(0.0, "a", a._gossip("b", reply=Reply.PUSH_AND_ASK)[0][1])
    assert b._positions.get("a", -1) == -1
    assert _exchange(nodes, "a", "b") == 4  # the update travels, then positions
    assert b.get("k") == a.get("k") and b._positions["a"] == a.head
    # c's third operation reaches d without the two before it (another key's):
    # d holds c:3 beyond its prefix clock, so its openers offer no position.
    for key in ("j", "j", "m"):
        c.update(key, GCounter, lambda s, me: s.increment(me))
    state, ops = c.get("m"), c.ops("m")
    assert state is not None
    d.receive(0.0, "c", encode(Push("c", "d", 2, 3, 0, 1, Reply.NOTHING, c.context,
                                    (Entry("m", state, ops),))))
    assert d.get("m") == state and d.context.vv.get("c", 0) < 3
    opener = parse(d._gossip("b", reply=Reply.PUSH_AND_ASK)[0][1])
    assert isinstance(opener, Push) and (opener.start, opener.end) == (-1, -1)
    b.receive(0.0, "d", encode(opener))
    assert b._positions.get("d", -1) == -1  # b's clock covers d's, but not c:3
    # Once d holds a prefix of every writer again, its opener offers its head.
    deliver(nodes, "c", c._gossip("d", reply=Reply.PUSH_AND_ASK))
    opener = parse(d._gossip("b", reply=Reply.PUSH_AND_ASK)[0][1])
    assert isinstance(opener, Push) and opener.start == opener.end == d.head

