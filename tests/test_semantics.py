"""The semantics users get wrong elsewhere: bad amounts, LWW ties and clock
skew, MV-Register siblings, vector clock order, and cross-type merges."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from crdts import (
    CRDTError,
    DecodeError,
    GCounter,
    InvalidOperation,
    LWWRegister,
    MVRegister,
    Order,
    ORSet,
    PNCounter,
    VectorClock,
    codec,
)
from crdts.base import MAX_UINT

BAD_AMOUNTS = [-1, -(2**70), True, False, 1.0, 0.5, float("nan"), "3", None]


def test_error_tree() -> None:
    assert issubclass(InvalidOperation, CRDTError) and issubclass(InvalidOperation, ValueError)
    assert issubclass(DecodeError, CRDTError) and issubclass(DecodeError, ValueError)


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_counters_refuse_bad_amounts(amount: object) -> None:
    g, p = GCounter(), PNCounter()
    g.increment("a", 2)
    p.decrement("a", 2)
    before = (g.copy(), p.copy())
    with pytest.raises(InvalidOperation):
        g.increment("a", amount)  # type: ignore[arg-type]
    with pytest.raises(InvalidOperation):
        p.increment("a", amount)  # type: ignore[arg-type]
    with pytest.raises(InvalidOperation):
        p.decrement("a", amount)  # type: ignore[arg-type]
    assert (g, p) == before


@pytest.mark.parametrize("replica", ["", None, 1, b"a"])
def test_replica_ids_are_non_empty_str(replica: object) -> None:
    with pytest.raises(InvalidOperation):
        GCounter().increment(replica)  # type: ignore[arg-type]
    with pytest.raises(InvalidOperation):
        ORSet().add("x", replica)  # type: ignore[arg-type]
    with pytest.raises(InvalidOperation):
        VectorClock().increment(replica)  # type: ignore[arg-type]


def test_gcounter_overflow_is_refused_not_wrapped() -> None:
    g = GCounter()
    g.increment("a", MAX_UINT)
    with pytest.raises(InvalidOperation):
        g.increment("a")
    assert g.value == MAX_UINT
    assert codec.decode(codec.encode(g)) == g


def test_zero_increment_is_an_empty_delta() -> None:
    g = GCounter()
    assert g.increment("a", 0) == GCounter()
    assert g == GCounter()


def test_concurrent_increments_all_count() -> None:
    replicas = [PNCounter() for _ in range(3)]
    for i, p in enumerate(replicas):
        p.increment(f"r{i}", 10)
        p.decrement(f"r{i}", i)
    for p in replicas:
        for q in replicas:
            p.merge(q)
            p.merge(q)  # duplicates never count twice
    assert {p.value for p in replicas} == {30 - 3}


def states_of_every_type() -> Iterator[object]:
    yield GCounter()
    yield PNCounter()
    yield ORSet()
    yield LWWRegister()
    yield MVRegister()
    yield VectorClock()


@pytest.mark.parametrize("left", list(states_of_every_type()), ids=lambda s: type(s).__name__)
def test_merging_a_different_type_raises_type_error(left: object) -> None:
    for right in states_of_every_type():
        if type(right) is type(left):
            continue
        with pytest.raises(TypeError):
            left.merge(right)  # type: ignore[attr-defined]


# -- LWW-Register ----------------------------------------------------------------


def test_lww_ties_break_by_replica_id_everywhere() -> None:
    a: LWWRegister[str] = LWWRegister()
    b: LWWRegister[str] = LWWRegister()
    from_a = a.assign("from a", "a", timestamp=100)
    from_b = b.assign("from b", "b", timestamp=100)
    a.merge(from_b)
    b.merge(from_a)
    assert a == b
    assert a.value == b.value == "from b"  # the larger replica id
    assert codec.encode(a) == codec.encode(b)


def test_lww_write_after_read_wins_when_wall_clock_is_behind() -> None:
    fast: LWWRegister[str] = LWWRegister(clock=lambda: 5_000)
    slow: LWWRegister[str] = LWWRegister(clock=lambda: 1_000)  # seconds behind
    slow.merge(fast.assign("old", "z"))  # slow reads the value ...
    assert slow.value == "old"
    delta = slow.assign("new", "a")  # ... then overwrites it, from a smaller replica id
    assert delta.timestamp is not None and delta.timestamp > 5_000
    fast.merge(delta)
    assert fast.value == slow.value == "new"


def ticking(readings: list[int]) -> Callable[[], int]:
    it = iter(readings)
    return lambda: next(it)


def test_lww_clock_stepping_backwards_still_advances() -> None:
    r: LWWRegister[int] = LWWRegister(clock=ticking([100, 50, 50, 200]))
    stamps = []
    for value in range(4):
        r.assign(value, "a")
        stamps.append(r.timestamp)
    assert stamps == [100, 101, 102, 200]
    assert r.value == 3


def test_lww_equal_readings_still_order_writes() -> None:
    r: LWWRegister[str] = LWWRegister(clock=lambda: 7)
    r.assign("one", "a")
    r.assign("two", "a")
    assert (r.value, r.timestamp) == ("two", 8)


def test_lww_older_explicit_write_loses_but_is_a_valid_delta() -> None:
    r: LWWRegister[str] = LWWRegister()
    r.assign("new", "a", timestamp=10)
    delta = r.assign("old", "b", timestamp=3)
    assert r.value == "new"
    assert delta.value == "old"
    r.merge(delta)
    assert r.value == "new"


@pytest.mark.parametrize("timestamp", [-1, 1.0, True, 2**64, "1"])
def test_lww_refuses_bad_timestamps(timestamp: object) -> None:
    r: LWWRegister[str] = LWWRegister()
    with pytest.raises(InvalidOperation):
        r.assign("v", "a", timestamp=timestamp)  # type: ignore[arg-type]
    assert r.value is None


# -- MV-Register -----------------------------------------------------------------


def test_mv_register_keeps_concurrent_writes_until_one_sees_them() -> None:
    a: MVRegister[str] = MVRegister()
    b: MVRegister[str] = MVRegister()
    c: MVRegister[str] = MVRegister()
    for replica, reg in zip("abc", (a, b, c), strict=True):
        reg.assign(f"v{replica}", replica)
    for reg in (a, b, c):
        for other in (a, b, c):
            reg.merge(other)
    assert a.values == frozenset({"va", "vb", "vc"})
    delta = b.assign("resolved", "b")
    a.merge(delta)
    c.merge(delta)
    assert a.values == b.values == c.values == frozenset({"resolved"})


def test_mv_register_same_value_twice_is_one_value() -> None:
    a: MVRegister[str] = MVRegister()
    b: MVRegister[str] = MVRegister()
    a.assign("v", "a")
    b.assign("v", "b")
    a.merge(b)
    assert a.values == frozenset({"v"})


# -- VectorClock -----------------------------------------------------------------


def test_vector_clock_orders() -> None:
    v = VectorClock({"a": 1, "b": 2})
    assert v.compare(v.copy()) is Order.EQUAL
    w = v.copy()
    w.increment("a")
    assert v.compare(w) is Order.BEFORE and w.compare(v) is Order.AFTER
    assert v < w and v <= w and not w <= v
    x = v.copy()
    x.increment("c")
    assert w.compare(x) is Order.CONCURRENT
    assert not w <= x and not x <= w
    w.merge(x)
    assert w.value == {"a": 2, "b": 2, "c": 1}


def test_vector_clock_refuses_bad_entries() -> None:
    with pytest.raises(InvalidOperation):
        VectorClock({"a": -1})
    with pytest.raises(InvalidOperation):
        VectorClock({"a": True})
    with pytest.raises(InvalidOperation):
        VectorClock({"": 1})
