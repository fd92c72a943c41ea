"""Pruning of replica ids that can never issue again (docs/pruning.md).

The types: ``prune(removed, owner)`` keeps the value, and a replica that
cleans ``removed`` out of its own state and joins the pruned one counts
every operation once, whatever else it saw meanwhile. The replicator: a
restarted node's old incarnations and a removed member's ids are folded into
a live owner and vanish from counters, clocks and bookkeeping; late data is
stripped; markers expire; the opening frame of a round stays the size of the
live cluster. The acceptance run: 100 restarts of one node of five, against a
cluster that never restarted.
"""

from __future__ import annotations

import random
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from crdts import GCounter, ORSet, PNCounter, VectorClock, codec
from crdts.base import Prunable
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from crdts.testing import Op
from replication import Replicator
from replication.dotranges import DotRanges
from replication.history import History, converged, random_operation
from replication.messages import Entry, Push, Reply, encode, parse
from replication.simnet import SimulatedNetwork
from replication.store import MemoryStore, WriteBehind, restore
from tests.strategies import SPECS

REMOVED, OWNER, OTHER = "a~1", "a~2", "b"

# -- the types ------------------------------------------------------------------------


def _ops(name: str, replicas: list[str]) -> st.SearchStrategy[list[Op]]:
    ops = st.one_of(*(SPECS[name].operations(r) for r in replicas))
    return st.lists(ops, max_size=12)


def _built(name: str, ops: list[Op], start: Any = None) -> Any:
    state = SPECS[name].new() if start is None else start.copy()
    for op in ops:
        op.apply(state)
    return state


# Six types: at most 150 examples each under the ci profile (CI's budget).
@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=min(settings().max_examples, 150))
@given(data=st.data())
def test_pruning_keeps_the_value_and_cleanup_counts_once(name: str, data: st.DataObject) -> None:
    # ``a``: what every replica holds of REMOVED when OWNER prunes; ``b``:
    # a replica that saw ``a`` and then OTHER's operations (never OWNER's
    # later ones: OWNER prunes its state as it stands, as an operation).
    a = _built(name, data.draw(_ops(name, [REMOVED, OWNER, OTHER])))
    b = _built(name, data.draw(_ops(name, [OTHER])), start=a)
    assert isinstance(SPECS[name].new(), Prunable)
    pruned = a.copy()
    base = pruned.prune(REMOVED, OWNER)
    if name == "VectorClock":  # its value names replicas: REMOVED's events move
        moved = a.value
        if REMOVED in moved:
            moved[OWNER] = moved.get(OWNER, 0) + moved.pop(REMOVED)
        assert pruned.value == moved
    else:
        assert pruned.value == a.value
    want = b.copy()
    assert want.prune(REMOVED, OWNER) == base  # OTHER's operations do not move it
    cleaned = b.copy()
    cleaned.cleanup(REMOVED, OWNER, base)
    cleaned.merge(pruned)
    assert cleaned == want  # never counted twice
    cleaned.merge(pruned)
    assert cleaned == want  # and idempotent
    other_way = pruned.copy()
    b_clean = b.copy()
    b_clean.cleanup(REMOVED, OWNER, base)
    other_way.merge(b_clean)
    assert other_way == want


def test_pruning_refuses_bad_ids_and_changes_nothing() -> None:
    c = GCounter()
    _ = c.increment(REMOVED, 2)
    for removed, owner in ((REMOVED, REMOVED), ("", OWNER), (REMOVED, 7)):
        with pytest.raises(ValueError):
            c.prune(removed, owner)  # type: ignore[arg-type]
    p = PNCounter()
    _ = p.increment(REMOVED, 2)
    _ = p.decrement(REMOVED, 1)
    _ = p.decrement(OWNER, 2**64 - 1)
    before = p.copy()
    with pytest.raises(ValueError):
        p.prune(REMOVED, OWNER)  # the decrements would overflow: neither half changes
    assert c == _built("GCounter", [Op("increment", (REMOVED, 2))])
    assert p == before


def test_a_marker_travels_and_hostile_ones_are_refused() -> None:
    ranges = DotRanges.whole({"b": (2, 7)})
    ranges.mark("a~1", 3, 9, "a~2", 4)
    assert ranges.to_payload() == ["b", 0, 0, 2, 7, ["a~1", 3, 9, "a~2", 4]]
    assert DotRanges.from_payload(ranges.to_payload(), "ops") == ranges
    for bad in (
        ["a", 3, 8, 3, 9],
        ["a", 0, 0, 1, 1, []],
        ["a", 0, 0, 1, 1, ["a", 1, 1, "b", 0]],  # a stretch and a marker
        [["a", 2, 1, "b", 0]],  # more operations than dots
        [["a", 1, 1, "a", 0]],  # pruned into itself
        [["b", 1, 1, "c", 0, "a", 1, 1, "c", 0]],  # out of order
    ):
        with pytest.raises(DecodeError):
            DotRanges.from_payload(bad, "ops")


def test_a_tally_travels_and_a_bad_one_is_refused() -> None:
    tally = (("x~1", 3, 2**64 - 1), ("y", 0, 0))
    push = Push("a", "b", 0, 0, 0, 1, Reply.PUSH_AND_ASK, CausalContext(), (), -1, tally)
    assert parse(encode(push)) == push
    bad = Push("a", "b", 0, 0, 0, 1, Reply.PUSH_AND_ASK, CausalContext(), (), -1, (("y", 0, 0),
                                                                                   ("x", 1, 1)))
    with pytest.raises(DecodeError):
        parse(encode(bad))  # ids out of order


# -- the replicator ----------------------------------------------------------------------

PRUNE_AFTER, MARKER_TTL = 3.0, 6.0


def _cluster(
    n: int, seed: int, history: History | None = None
) -> tuple[list[Replicator], SimulatedNetwork]:
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(n)]
    replicas = [
        Replicator(
            i, ids, rng=random.Random(rng.getrandbits(32)), prune_after=PRUNE_AFTER,
            marker_ttl=MARKER_TTL,
        )
        for i in ids
    ]
    net = SimulatedNetwork(seed=seed)
    for replica in replicas:
        net.add(replica)
        if history is not None:
            replica.subscribe_pruning(history.pruned)
    return replicas, net


def _restart(
    replicas: list[Replicator],
    net: SimulatedNetwork,
    i: int,
    store: MemoryStore,
    *,
    seed: int,
    history: History | None = None,
) -> WriteBehind:
    net.crash(replicas[i].node_id)
    ids = [replicas[i].node_id, *replicas[i].peers]
    replicas[i] = restore(
        store.load(), replicas[i].node_id, ids, rng=random.Random(seed),
        prune_after=PRUNE_AFTER, marker_ttl=MARKER_TTL,
    )
    if history is not None:
        replicas[i].subscribe_pruning(history.pruned)
    net.restart(replicas[i])
    return WriteBehind(replicas[i])


def _get(replica: Replicator, key: str) -> Any:
    return replica.get(key)


def _writers(replica: Replicator) -> set[str]:
    keys = replica.keys()
    return {w for k in keys for w in replica.ops(k).spans} | set(replica.context.vv)


def test_a_restarted_nodes_old_incarnations_are_pruned_into_its_current_one() -> None:
    history = History()
    replicas, net = _cluster(3, seed=1, history=history)
    store = MemoryStore()
    changes = WriteBehind(replicas[0])
    for n in range(4):
        history.apply(replicas[0], "hits", "GCounter", "increment", 2)
        history.apply(replicas[0], "clock", "VectorClock", "increment")
        history.apply(replicas[1], "hits", "GCounter", "increment", 1)
        changes.flush(store)
        changes = _restart(replicas, net, 0, store, seed=n, history=history)
        net.run_rounds(2)
    assert replicas[0].retired  # its earlier incarnations, not yet pruned
    net.run_until(lambda: not any(r.retired for r in replicas) and converged(replicas), 40)
    live = {r.replica_id for r in replicas}
    assert all(_writers(r) <= live for r in replicas)
    assert _get(replicas[2], "hits").value == 4 * 3
    assert _get(replicas[2], "clock").value == {replicas[0].replica_id: 4}
    assert replicas[0].stats.pruned >= 3 and history.problems(replicas) == []
    # Markers expire after marker_ttl; nothing of the old ids is left.
    net.run_rounds(int(MARKER_TTL) + 2)
    assert all(not r.ops(k).pruned for r in replicas for k in r.keys())  # noqa: SIM118


def test_a_removed_member_is_pruned_by_the_least_member() -> None:
    history = History()
    replicas, net = _cluster(4, seed=2, history=history)
    for n, replica in enumerate(replicas):
        history.apply(replica, "stock", "PNCounter", "decrement", n + 1)
        history.apply(replica, "set", "ORSet", "add", f"x{n}")
    net.run_until(lambda: converged(replicas), 30)
    gone = replicas.pop()
    net.crash(gone.node_id)
    for replica in replicas:
        replica.remove_peer(gone.node_id)
        assert replica.retire(gone.node_id) == [gone.replica_id]
    assert net.run_until(lambda: not replicas[0].retired and converged(replicas), 40)
    assert replicas[0].stats.pruned == 2 and replicas[1].stats.pruned == 0
    assert all(gone.replica_id not in _writers(r) for r in replicas)
    assert _get(replicas[1], "stock").value == -10
    assert sorted(_get(replicas[2], "set")) == ["x0", "x1", "x2", "x3"]
    assert history.problems(replicas) == []


def test_late_data_of_a_pruned_id_is_stripped_not_counted_again() -> None:
    replicas, net = _cluster(2, seed=3)
    a, b = replicas
    _ = b.update("hits", GCounter, lambda c, me: c.increment(me, 5))
    net.run_until(lambda: converged(replicas), 20)
    late = Entry("hits", _get(b, "hits"), b.ops("hits"))  # b's state before it goes
    frame = encode(Push(b.replica_id, a.replica_id, -1, 1, 0, 1, Reply.NOTHING, b.context, (late,),
                        -1))
    net.crash(b.node_id)
    a.remove_peer(b.node_id)
    a.retire(b.node_id)
    net.run_rounds(5)
    assert _get(a, "hits").value == 5
    assert a.ops("hits").pruned == {b.replica_id: (1, 1, a.replica_id, 0)}
    a.add_peer(b.node_id)  # it may come back as a new member: its old data is late
    a.receive(net.now, b.node_id, frame)
    assert _get(a, "hits").value == 5 and a.stats.late == 1
    assert b.replica_id not in _writers(a)


def test_a_round_opens_with_live_ids_only_whatever_was_seen() -> None:
    # The opener's bytes at 16 and at 1,000 replica ids ever seen (all but
    # the live ones removed): the same once pruning is done.
    # An empty OR-Set whose context saw every one of them (21 KB at 1,000
    # ids on main) shrinks to one context entry too.
    sizes = {}
    for seen in (16, 1000):
        writers = [f"w{i:04d}" for i in range(seen - 2)]
        counter, empty = GCounter(), ORSet[str]()
        for w in writers:
            _ = counter.increment(w, 1)
            _ = empty.add("x", w)
            _ = empty.remove("x")
        entries = [
            Entry("k", counter, DotRanges.whole({w: (1, 1) for w in writers})),
            Entry("s", empty, DotRanges.whole({w: (2, 3) for w in writers})),
        ]
        copies = [Entry(e.key, e.state.copy(), e.dots.copy()) for e in entries]
        a = Replicator.from_entries("a", entries, ["b"], rng=random.Random(1), incarnation=1,
                                    prune_after=0.0, marker_ttl=2.0)
        b = Replicator.from_entries("b", copies, ["a"], rng=random.Random(2), incarnation=1,
                                    prune_after=0.0, marker_ttl=2.0)
        assert len(codec.encode(empty)) > (7_000 if seen == 1000 else 0)
        before = len(a.tick(0.0)[0][1])
        for replica in (a, b):
            for w in writers:
                replica.retire(w)
        net = SimulatedNetwork(seed=1)
        net.add(a)
        net.add(b)
        def done(a: Replicator = a, b: Replicator = b) -> bool:
            return not (a.retired or a.ops("k").pruned or b.ops("k").pruned)

        net.run_until(done, 40)
        assert _get(a, "k").value == _get(b, "k").value == seen - 2
        assert set(_get(a, "k")._slots) == {a.replica_id}
        assert _get(a, "s") == _get(b, "s") and len(_get(a, "s")) == 0
        assert len(codec.encode(_get(a, "s"))) <= 30
        sizes[seen] = (before, len(a.tick(net.now)[0][1]))
    # Before: the whole clock. After: the live ids only, a few bytes more at
    # 1,000 ids (wider counts and log positions), never more ids.
    # (Frame version 4 writes the clock as [id, n, ...]: 135 and 8,000+
    # bytes with version 3's empty dot cloud per id.)
    assert sizes[16][0] == 121 and sizes[1000][0] > 7_000
    assert sizes[16][1] <= 32 and sizes[16][1] <= sizes[1000][1] <= sizes[16][1] + 4


# -- acceptance: 100 restarts of one node of five ---------------------------------------


def _run(restarts: int, seed: int = 7) -> dict[str, Any]:
    history = History()
    replicas, net = _cluster(5, seed=seed, history=history)
    rng = random.Random(seed)
    store = MemoryStore()
    changes = WriteBehind(replicas[0])
    for n in range(100):
        for _ in range(5):
            key, type_name, kind, args = random_operation(rng)
            history.apply(rng.choice(replicas), key, type_name, kind, *args)
        if n < restarts:
            changes.flush(store)
            changes = _restart(replicas, net, 0, store, seed=rng.getrandbits(32), history=history)
        net.run_round()
    # Once stable: everything pruned and every marker expired.
    net.run_until(lambda: not any(r.retired for r in replicas) and converged(replicas), 60)
    net.run_rounds(int(MARKER_TTL) + 2)
    assert converged(replicas) and history.problems(replicas) == []
    changes.flush(store)
    node = replicas[0]
    saved = sum(map(len, MemoryStore.of(node).rows.values()))
    states = [_get(node, k) for k in node.keys()]  # noqa: SIM118
    counters = sum(
        len(s._slots) if isinstance(s, GCounter | VectorClock) else
        len(s._p._slots) + len(s._n._slots) if isinstance(s, PNCounter) else 0
        for s in states
    )
    contexts = sum(len(s._ctx.origins()) for s in states if hasattr(s, "_ctx"))
    return {
        "saved": saved,
        "clock": len(node.context.vv),
        "counters": counters,
        "ranges": sum(len(node.ops(k).spans) for k in node.keys()),  # noqa: SIM118
        "contexts": contexts,
        "opener": len(node.tick(net.now)[0][1]),
    }


def test_after_100_restarts_state_is_within_2x_of_a_cluster_that_never_restarted() -> None:
    calm, restarted = _run(0), _run(100)
    for what in ("saved", "clock", "counters", "ranges", "opener"):
        assert restarted[what] <= 2 * calm[what], (what, calm, restarted)
    assert restarted["contexts"] <= 2 * calm["contexts"], (calm, restarted)


def test_a_remove_concurrent_with_a_pruning_is_not_undone() -> None:
    # The OR-Set renames the retired id's dots: a remove that observed the
    # old dot, merged after the pruning (either way round), still removes.
    a: ORSet[str] = ORSet()
    _ = a.add("x", REMOVED)
    _ = a.add("y", REMOVED)
    b = a.copy()
    base = a.prune(REMOVED, OWNER)
    delta = b.remove("x")
    late = delta.copy()
    late.cleanup(REMOVED, OWNER, base)  # as the replicator cleans late data
    a.merge(late)
    b.cleanup(REMOVED, OWNER, base)
    b.merge(a)
    assert sorted(a) == sorted(b) == ["y"] and a == b
    assert codec.decode(codec.encode(a)) == a


def test_a_retired_node_that_joins_again_is_live_again() -> None:
    # Its new incarnation issues under the same node id: retiring that would
    # fold live updates into another owner while they are still being made.
    a = Replicator("a", ["b"], rng=random.Random(1), prune_after=0.0)
    old = Replicator("b", ["a"], rng=random.Random(2), incarnation=1)
    old.update("k", GCounter, lambda c, me: c.increment(me, 2))
    a.receive(0.0, "b", old.tick(0.0)[0][1])  # b~1 opens; a learns nothing yet
    a.remove_peer("b")
    a.retire("b")
    assert a.add_peer("b")  # b comes back, as b~9
    new = Replicator("b", ["a"], rng=random.Random(3), incarnation=9)
    new.update("k", GCounter, lambda c, me: c.increment(me, 5))
    net = SimulatedNetwork(seed=1)
    net.add(a)
    net.add(new)
    assert net.run_until(lambda: converged([a, new]), 20)
    assert "b~9" not in a.retired
    net.run_rounds(5)
    assert _get(a, "k").value == 5 and "b~9" in _writers(a)


def test_an_operation_folded_twice_is_held_through_the_folding_that_spread() -> None:
    # An owner folds a retired id's operations into one of its own and
    # crashes before that spreads; its next incarnation folds them again.
    # The history must follow either folding: the soak's seed 75 reported
    # the retired id's operations "lost" while every replica held them
    # through the second one (the checker followed only the first).
    history = History()
    history.pruned("k", "r04", (2, 10), ("r04~1", 24))  # gone with r04~1's crash
    history.pruned("k", "r04", (2, 10), ("r04~2", 21))
    held = DotRanges({"r04~2": (0, 0, 2, 21)})
    assert history.holder("k", held, ("r04", 10)) == "r04~2"
    assert history.holder("k", held, ("r04", 11)) is None  # beyond what was folded
    assert history.holder("k", DotRanges({"r00": (0, 0, 1, 1)}), ("r04", 10)) is None
