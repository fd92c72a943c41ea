"""The OR-Map: the semantics users get wrong, bad input, hostile bytes,
pruning, and the convergence machine against the map's specification."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import cbor2
import hypothesis.strategies as st
import pytest
from hypothesis import settings

from crdtkit.client import NodeError
from crdtkit.cluster import LocalCluster
from crdts import GCounter, MVRegister, ORMap, ORSet, PNCounter, codec
from crdts.base import CRDT, Atom
from crdts.errors import DecodeError, InvalidOperation
from replication.history import History
from replication.testing import convergence_machine
from tests.crashkit import client_of


def inc(n: int = 1) -> Any:
    return lambda c, me: c.increment(me, n)


def synced(*maps: ORMap[Any, Any]) -> None:
    """Every map merges every other's state, so all hold the join."""
    for a in maps:
        for b in maps:
            a.merge(b)
    assert all(m == maps[0] for m in maps)
    assert len({codec.encode(m) for m in maps}) == 1


# -- semantics -----------------------------------------------------------------------


def test_a_concurrent_update_survives_a_remove_with_what_its_writer_saw() -> None:
    a: ORMap[str, GCounter] = ORMap()
    a.update("a", "n", GCounter, inc(1))
    b = a.copy()
    removal = a.remove("n")  # a removes the n it saw (1) ...
    update = b.update("b", "n", GCounter, inc(2))  # ... while b, which saw it too, adds 2
    a.merge(update)
    b.merge(removal)
    synced(a, b)
    # The key survives, with the updater's view: the 1 it had seen and its 2.
    assert a.value == {"n": 3}


def test_a_remove_after_seeing_the_update_removes_it() -> None:
    a: ORMap[str, GCounter] = ORMap()
    b: ORMap[str, GCounter] = ORMap()
    b.merge(a.update("a", "n", GCounter, inc(1)))
    a.merge(b.update("b", "n", GCounter, inc(2)))
    b.merge(a.remove("n"))
    assert a.value == b.value == {}
    assert "n" not in a and len(b) == 0


def test_remove_then_re_add_does_not_resurrect_the_old_value() -> None:
    a: ORMap[str, ORSet[str]] = ORMap()
    a.update("a", "tags", ORSet, lambda s, me: s.add("old", me))
    b = a.copy()  # b holds the old value and does nothing more
    a.remove("tags")
    a.update("a", "tags", ORSet, lambda s, me: s.add("new", me))
    b.merge(a)
    synced(a, b)
    assert sorted(a.get("tags") or ()) == ["new"]  # Akka's plain ORMap shows both


def test_re_add_after_a_remove_is_not_absorbed_by_a_concurrent_copy_of_the_old_value() -> None:
    # Regression the convergence machine would find: a's fresh counter must not
    # count again in the slot the old value, kept alive by b's concurrent
    # update, still holds; a acts under a new lineage id.
    a: ORMap[str, GCounter] = ORMap()
    a.update("a", "n", GCounter, inc(5))
    b = a.copy()
    a.remove("n")
    a.update("a", "n", GCounter, inc(1))
    b.update("b", "n", GCounter, inc(2))
    synced(a, b)
    assert a.value == {"n": 8}  # b's view (5 + 2) and a's new 1
    assert len(a.get("n")._slots) == 3  # type: ignore[union-attr]  # two lineages of a, b's


def test_a_replica_keeps_one_lineage_while_updates_alternate() -> None:
    a: ORMap[str, GCounter] = ORMap()
    b: ORMap[str, GCounter] = ORMap()
    for _ in range(20):
        b.merge(a.update("a", "n", GCounter, inc()))
        a.merge(b.update("b", "n", GCounter, inc()))
    value = a.get("n")
    assert value is not None and value.value == 40
    assert len(value._slots) == 2  # bounded by the writers, not by the updates


def test_nested_counter_across_three_replicas() -> None:
    def visit(m: ORMap[str, Any], me: str) -> ORMap[str, Any]:
        return m.update(me, "visits", GCounter, inc())

    replicas: list[ORMap[str, ORMap[str, GCounter]]] = [ORMap(), ORMap(), ORMap()]
    deltas = [r.update(me, "profile", ORMap, visit) for r, me in zip(replicas, "abc", strict=True)]
    a, b, c = replicas
    a.merge(deltas[1])  # a hears of b, and increments again having seen it
    deltas.append(a.update("a", "profile", ORMap, visit))
    for r in replicas:  # deltas out of order, duplicated
        for delta in [*reversed(deltas), *deltas]:
            r.merge(delta)
    synced(a, b, c)
    assert a.value == {"profile": {"visits": 4}}
    # A remove of the inner key at one replica, a concurrent increment at another.
    b.update("b", "profile", ORMap, lambda m, me: m.remove("visits"))
    c.update("c", "profile", ORMap, visit)
    synced(a, b, c)
    assert a.value == {"profile": {"visits": 5}}


def test_concurrent_values_of_different_types_read_the_same_everywhere() -> None:
    a: ORMap[str, Any] = ORMap()
    b: ORMap[str, Any] = ORMap()
    a.update("a", "k", GCounter, inc(2))
    b.update("b", "k", ORSet, lambda s, me: s.add("x", me))
    synced(a, b)
    assert a.value == b.value == {"k": frozenset({"x"})}  # the greater type tag
    a.update("a", "k", GCounter, inc(1))  # an update of its own type replaces the others
    synced(a, b)
    assert a.value == {"k": 3}


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.update("a", "n", PNCounter, inc()),  # the key holds a G-Counter
        lambda m: m.update("a", "n", GCounter, inc(-1)),  # the value refuses
        lambda m: m.update("", "n", GCounter, inc()),
        lambda m: m.update(7, "n", GCounter, inc()),
        lambda m: m.update("a", 1.5, GCounter, inc()),
        lambda m: m.update("a", ["k"], GCounter, inc()),
        lambda m: m.update("a", True, GCounter, inc()),
        lambda m: m.remove(1.5),
        lambda m: m.remove(None),
    ],
)
def test_bad_updates_raise_and_change_nothing(call: Any) -> None:
    m: ORMap[Any, Any] = ORMap()
    m.update("a", "n", GCounter, inc(2))
    before, encoded = m.copy(), codec.encode(m)
    with pytest.raises(InvalidOperation):
        call(m)
    assert m == before and codec.encode(m) == encoded
    assert m.update("a", "n", GCounter, inc()).value == {"n": 3}


def test_merge_refuses_another_type() -> None:
    with pytest.raises(TypeError):
        ORMap().merge(GCounter())  # type: ignore[arg-type]


def test_reads_of_absent_and_unhashable_keys() -> None:
    m: ORMap[Any, GCounter] = ORMap()
    assert m.get("x") is None and m.get(["x"]) is None
    assert ["x"] not in m and "x" not in m
    m.update("a", "x", GCounter, inc())
    copy = m.get("x")
    assert copy is not None
    copy.increment("z", 100)  # a copy: the map is unchanged
    assert m.value == {"x": 1}
    assert sorted(m) == ["x"]


# -- hostile bytes -------------------------------------------------------------------


def _payload(state: ORMap[Any, Any]) -> list[Any]:
    return cbor2.loads(codec.encode(state))[2]  # type: ignore[no-any-return]


def _decode(payload: object, version: object = 1) -> CRDT:
    return codec.decode(cbor2.dumps(["ORMap", version, payload], canonical=True))


def test_hostile_payloads_give_decode_errors() -> None:
    m: ORMap[Atom, Any] = ORMap()
    m.update("a", "n", GCounter, inc(3))
    m.update("b", b"s", MVRegister, lambda r, me: r.assign("v", me))
    good = _payload(m)
    assert _decode(good) == m
    ctx, flat = good
    bad: list[object] = [
        [],
        [ctx],
        [ctx, flat, 1],
        [ctx, flat[:-1]],  # not groups of seven
        [[], flat],  # every dot outside the context
        [ctx, flat[7:] + flat[:7]],  # out of dot order
        [ctx, flat + flat],  # the same dot twice
        [ctx, [*flat[:2], 1.5, *flat[3:]]],  # a float key
        [ctx, [*flat[:2], ["k"], *flat[3:]]],  # a list key
        [ctx, [*flat[:3], [], *flat[4:]]],  # folded without its own dot
        [ctx, [*flat[:3], ["z", 1], *flat[4:]]],
        [ctx, [*flat[:4], "Nope", *flat[5:]]],  # an unknown value type
        [ctx, [*flat[:4], "ORSet", *flat[5:]]],  # a payload of another type
        [ctx, [*flat[:5], 2, *flat[6:]]],  # an unknown value version
        [ctx, [*flat[:5], True, *flat[6:]]],
        [ctx, [*flat[:6], ["a.1", -3], *flat[7:]]],  # a negative count
        [ctx, ["", *flat[1:]]],  # an empty replica id
        [ctx, ["a", 0, *flat[2:]]],  # counter 0
    ]
    for payload in bad:
        with pytest.raises(DecodeError):
            _decode(payload)
    for version in (0, 2, "1", None):
        with pytest.raises(DecodeError):
            _decode(good, version)


def test_deep_nesting_decodes_and_deeper_is_refused() -> None:
    def nest(depth: int) -> ORMap[str, Any]:
        m: ORMap[str, Any] = ORMap()
        if depth == 0:
            m.update("a", "n", GCounter, inc())
            return m
        inner = nest(depth - 1)
        return m.update("a", "m", ORMap, lambda v, me: v.merge(inner))

    # Each map adds two levels of arrays: seven maps and a counter take all 16.
    assert codec.decode(codec.encode(nest(6))) == nest(6)
    with pytest.raises(DecodeError, match="nest"):
        codec.decode(codec.encode(nest(7)))


# -- pruning -------------------------------------------------------------------------


def test_prune_and_cleanup_rename_the_retired_id_everywhere() -> None:
    a: ORMap[str, GCounter] = ORMap()
    a.update("r~1", "n", GCounter, inc(2))
    a.update("r~1", "gone", GCounter, inc())
    a.remove("gone")
    a.update("r~2", "m", GCounter, inc())
    b = a.copy()
    c = a.copy()
    base = a.prune("r~1", "r~2")
    assert "r~1" not in a.context.origins()
    assert a.value == {"n": 2, "m": 1}
    b.cleanup("r~1", "r~2", base)
    assert b == a and codec.encode(b) == codec.encode(a)
    removal = c.remove("n")  # concurrently, c removes the n it saw under r~1's dot
    c.cleanup("r~1", "r~2", base)
    removal.cleanup("r~1", "r~2", base)
    a.merge(removal)
    assert a.value == {"m": 1}
    with pytest.raises(InvalidOperation):
        a.cleanup("r~2", "r~2", 0)


# -- through a node and the client ---------------------------------------------------


def test_a_map_through_a_node_and_the_client(tmp_path: Path) -> None:
    cluster = LocalCluster(2, tmp_path)
    cluster.start()

    async def work() -> None:
        n0, n1 = await client_of(cluster, "n0"), await client_of(cluster, "n1")
        try:
            h = History()
            for client, args in [
                (n0, ("visits", "GCounter", "increment", [2])),
                (n1, ("visits", "GCounter", "increment", [3])),
                (n0, ("tags", "ORSet", "add", ["red"])),
                (n1, ("profile", "ORMap", "update", ["logins", "GCounter", "increment", [1]])),
            ]:
                h.operations.append(await client.update("user", "ORMap", "update", *args))
            with pytest.raises(NodeError, match="holds a GCounter"):  # refused, connection kept
                await n0.update("user", "ORMap", "update", "visits", "ORSet", "add", ["x"])
            with pytest.raises(NodeError, match="no operation 'decrement'"):
                await n0.update("user", "ORMap", "update", "visits", "GCounter", "decrement", [1])
            with pytest.raises(InvalidOperation):  # the client checks before sending
                await n0.update("user", "ORMap", "update", 1.5, "GCounter", "increment", [1])
            with pytest.raises(NodeError):  # and so does the node
                await n0._call("update", "user", "ORMap", "update",
                               [["k"], "GCounter", "increment", [1]], b"a list as a key")
            h.operations.append(await n0.update("user", "ORMap", "remove", "tags"))
            for _ in range(200):  # gossip between the two nodes, bounded
                entries = [await c.entry("user") for c in (n0, n1)]
                if all(e is not None and e.state.value == {  # type: ignore[attr-defined]
                    "visits": 5, "profile": {"logins": 1}
                } for e in entries):
                    break
                await asyncio.sleep(0.05)
            entry = await n1.entry("user")
            assert entry is not None and isinstance(entry.state, ORMap)
            assert entry.state.value == {"visits": 5, "profile": {"logins": 1}}
            assert h.problems_of(lambda key: entry if key == "user" else None) == []
        finally:
            n0.close()
            n1.close()

    try:
        asyncio.run(asyncio.wait_for(work(), 60))
    finally:
        cluster.stop()
    assert "Traceback" not in cluster.log("n0") + cluster.log("n1")


# -- convergence -----------------------------------------------------------------------

#: Programs of the machine (more: CRDTKIT_CONVERGENCE_RUNS, as for the other types).
RUNS = int(os.environ.get("CRDTKIT_CONVERGENCE_RUNS", "200"))

ELEMENTS = st.sampled_from(["x", "y", 1])

#: Map operations over a few keys, one type per key, so that updates and
#: removes of a key meet: counters, sets, registers and a nested map.
OPERATIONS: st.SearchStrategy[tuple[str, tuple[Any, ...]]] = st.one_of(
    st.tuples(
        st.just("update"),
        st.tuples(st.just("c"), st.just("GCounter"), st.just("increment"),
                  st.tuples(st.integers(0, 5)).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("s"), st.just("ORSet"), st.sampled_from(["add", "remove"]),
                  st.tuples(ELEMENTS).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("r"), st.just("MVRegister"), st.just("assign"),
                  st.tuples(ELEMENTS).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("l"), st.just("LWWRegister"), st.just("assign"),
                  st.tuples(ELEMENTS, st.none() | st.integers(0, 4)).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(
            st.just("m"), st.just("ORMap"), st.just("update"),
            st.tuples(st.sampled_from(["p", "q"]), st.just("GCounter"), st.just("increment"),
                      st.tuples(st.integers(0, 3)).map(list)).map(list),
        ),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("m"), st.just("ORMap"), st.just("remove"),
                  st.tuples(st.sampled_from(["p", "q"])).map(list)),
    ),
    st.tuples(st.just("remove"), st.tuples(st.sampled_from(["c", "s", "r", "l", "m"]))),
)

# Through the map's operation table, as a node applies them.
TestORMapConvergence = convergence_machine("ORMap", OPERATIONS).TestCase
TestORMapConvergence.settings = settings(
    stateful_step_count=50, max_examples=min(settings().max_examples, RUNS // 2)
)
