"""Pruning reaches inside an OR-Map: the lineage ids a retired replica acted
under inside the map's values (counter slots, set and register dots, nested
maps' dots and lineages) are renamed with the map's dots, so a retired id
does not stay inside values for ever (docs/ormap.md, "Pruning")."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from crdts import GCounter, MVRegister, ORMap, ORSet, PNCounter, codec
from crdts.testing import Op
from replication.history import History, converged
from tests.strategies import SPECS
from tests.test_pruning import _cluster

REMOVED, OWNER, OTHER = "r~1", "r~2", "b"


def _strings(payload: object) -> set[str]:
    """Every str anywhere in a canonical payload."""
    out: set[str] = set()
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _mentions(state: Any, replica: str) -> set[str]:
    """The ids in ``state`` that are ``replica`` or one of its lineages."""
    return {s for s in _strings(state.to_payload()) if s == replica or s.startswith(replica + ".")}


def _nested_map() -> ORMap[str, Any]:
    m: ORMap[str, Any] = ORMap()
    m.update(REMOVED, "hits", GCounter, lambda c, me: c.increment(me, 2))
    m.update(REMOVED, "debt", PNCounter, lambda c, me: c.decrement(me, 3))
    m.update(REMOVED, "tags", ORSet, lambda s, me: s.add("red", me))
    m.update(REMOVED, "note", MVRegister, lambda r, me: r.assign("hi", me))
    m.update(REMOVED, "deep", ORMap, lambda inner, me: inner.update(
        me, "n", GCounter, lambda c, me2: c.increment(me2, 5)))
    m.update(OTHER, "hits", GCounter, lambda c, me: c.increment(me))  # folds r~1's lineage
    return m


def test_pruning_renames_the_retired_ids_lineages_inside_every_value() -> None:
    m = _nested_map()
    before = m.value
    other = m.copy()
    assert _mentions(m, REMOVED)
    base = m.prune(REMOVED, OWNER)
    assert _mentions(m, REMOVED) == set()  # (on main: the lineage "r~1.N" stayed in values)
    assert m.value == before
    other.cleanup(REMOVED, OWNER, base)  # every other replica renames the same way
    assert other == m and codec.encode(other) == codec.encode(m)
    # The owner goes on updating: its new lineages never meet the renamed ones.
    m.update(OWNER, "hits", GCounter, lambda c, me: c.increment(me, 10))
    assert m.value["hits"] == 13
    other.merge(m)
    assert other.value == m.value


def test_a_late_delta_is_cleaned_the_same_way() -> None:
    a = _nested_map()
    b = a.copy()
    late = b.update(OTHER, "tags", ORSet, lambda s, me: s.remove("red"))  # saw r~1's add
    base = a.prune(REMOVED, OWNER)
    late.cleanup(REMOVED, OWNER, base)
    a.merge(late)
    assert a.value["tags"] == frozenset()
    b.cleanup(REMOVED, OWNER, base)
    assert b == a


def _ops(replicas: list[str]) -> st.SearchStrategy[list[Op]]:
    ops = st.one_of(*(SPECS["ORMap"].operations(r) for r in replicas))
    return st.lists(ops, max_size=10)


def _built(ops: list[Op], start: ORMap[Any, Any] | None = None) -> ORMap[Any, Any]:
    state: ORMap[Any, Any] = ORMap() if start is None else start.copy()
    for op in ops:
        op.apply(state)
    return state


@settings(max_examples=min(settings().max_examples, 60))
@given(data=st.data())
def test_pruning_commutes_with_merging_and_keeps_the_value(data: st.DataObject) -> None:
    # ``a`` holds every operation of REMOVED; ``x`` and ``y`` go on from it
    # concurrently (OTHER, and OWNER before it prunes).
    a = _built(data.draw(_ops([REMOVED, OWNER, OTHER])))
    x = _built(data.draw(_ops([OTHER])), start=a)
    y = _built(data.draw(_ops([OWNER])), start=a)
    joined = x.copy()
    joined.merge(y)
    pruned = joined.copy()
    base = pruned.prune(REMOVED, OWNER)
    assert pruned.value == joined.value
    assert _mentions(pruned, REMOVED) == set()
    x.cleanup(REMOVED, OWNER, base)
    y.cleanup(REMOVED, OWNER, base)
    x.merge(y)
    assert x == pruned
    assert codec.encode(x) == codec.encode(pruned)


def test_a_removed_members_ids_leave_the_values_of_a_replicated_map() -> None:
    history = History()
    replicas, net = _cluster(3, seed=4, history=history)
    for n, replica in enumerate(replicas):
        history.apply(replica, "m", "ORMap", "update", "hits", "GCounter", "increment", [n + 1])
        history.apply(replica, "m", "ORMap", "update", "tags", "ORSet", "add", [f"x{n}"])
        history.apply(replica, "m", "ORMap", "update", "deep", "ORMap", "update",
                      ["n", "GCounter", "increment", [2]])
    net.run_until(lambda: converged(replicas), 30)
    gone = replicas.pop()
    assert _mentions(replicas[0].get("m"), gone.replica_id)
    net.crash(gone.node_id)
    for replica in replicas:
        replica.remove_peer(gone.node_id)
        replica.retire(gone.node_id)
    assert net.run_until(lambda: not replicas[0].retired and converged(replicas), 40)
    for replica in replicas:
        m = replica.get("m")
        assert isinstance(m, ORMap)
        assert _mentions(m, gone.replica_id) == set()
        assert m.value == {"hits": 6, "tags": frozenset({"x0", "x1", "x2"}), "deep": {"n": 6}}
    assert history.problems(replicas) == []
