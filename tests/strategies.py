"""Operation strategies and law specs for every built-in type."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st

from crdts import GCounter, LWWRegister, MVRegister, ORMap, ORSet, PNCounter, VectorClock
from crdts.testing import CRDTSpec, Op

#: A small pool, so that removes hit and concurrent adds collide; it mixes
#: str, int and bytes so the canonical order across kinds is exercised.
ELEMENTS = st.sampled_from(["x", "y", 0, b"x"]) | st.sampled_from(["z", -3, 2**40, b""])
AMOUNTS = st.integers(0, 5) | st.just(2**32)


@functools.cache
def gcounter_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda n: Op("increment", (replica, n)), AMOUNTS)


@functools.cache
def pncounter_ops(replica: str) -> st.SearchStrategy[Op]:
    names = st.sampled_from(["increment", "decrement"])
    return st.builds(lambda name, n: Op(name, (replica, n)), names, AMOUNTS)


@functools.cache
def orset_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda x: Op("add", (x, replica)), ELEMENTS) | st.builds(
        lambda x: Op("remove", (x,)), ELEMENTS
    )


@functools.cache
def lww_ops(replica: str) -> st.SearchStrategy[Op]:
    # Explicit timestamps collide on purpose; None takes the hybrid clock.
    timestamps = st.none() | st.integers(0, 4)
    return st.builds(lambda x, t: Op("assign", (x, replica, t)), ELEMENTS, timestamps)


@functools.cache
def mvregister_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda x: Op("assign", (x, replica)), ELEMENTS)


@functools.cache
def vclock_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.just(Op("increment", (replica,)))


@dataclass(frozen=True)
class Increment:
    """A value mutator for ORMap.update: increment a counter (a readable repr)."""

    amount: int

    def __call__(self, counter: Any, me: str) -> object:
        return counter.increment(me, self.amount)


@dataclass(frozen=True)
class Add:
    element: object

    def __call__(self, elements: Any, me: str) -> object:
        return elements.add(self.element, me)


@dataclass(frozen=True)
class Remove:
    element: object

    def __call__(self, elements: Any, me: str) -> object:
        return elements.remove(self.element)


@dataclass(frozen=True)
class Nested:
    """Update (or, with ``remove``, remove) key ``key`` of a nested map."""

    key: str
    amount: int
    remove: bool = False

    def __call__(self, inner: Any, me: str) -> object:
        if self.remove:
            return inner.remove(self.key)
        return inner.update(me, self.key, GCounter, Increment(self.amount))


@functools.cache
def ormap_ops(replica: str) -> st.SearchStrategy[Op]:
    # Built once per replica: a composite strategy costs Hypothesis more to
    # set up than to draw from, and the laws draw one per update.
    # Each key keeps one type: "c" counters, "s" sets, "m" maps of counters.
    counters = st.builds(lambda n: Op("update", (replica, "c", GCounter, Increment(n))), AMOUNTS)
    sets = st.builds(
        lambda add, x: Op("update", (replica, "s", ORSet, Add(x) if add else Remove(x))),
        st.booleans(),
        st.sampled_from(["x", "y", 0]),
    )
    maps = st.builds(
        lambda k, n, rm: Op("update", (replica, "m", ORMap, Nested(k, n, rm))),
        st.sampled_from(["p", "q"]),
        st.integers(0, 3),
        st.booleans(),
    )
    removes = st.builds(lambda k: Op("remove", (k,)), st.sampled_from(["c", "s", "m"]))
    return counters | sets | maps | removes


def _stopped_clock() -> int:
    # A wall clock that never moves: every default timestamp comes from the
    # logical half of the hybrid clock, deterministically.
    return 0


def new_lww() -> LWWRegister[object]:
    return LWWRegister(clock=_stopped_clock)


SPECS: dict[str, CRDTSpec] = {  # type: ignore[type-arg]
    "GCounter": CRDTSpec(GCounter, gcounter_ops),
    "PNCounter": CRDTSpec(PNCounter, pncounter_ops),
    "ORSet": CRDTSpec(ORSet, orset_ops),
    "LWWRegister": CRDTSpec(new_lww, lww_ops),
    "MVRegister": CRDTSpec(MVRegister, mvregister_ops),
    "VectorClock": CRDTSpec(VectorClock, vclock_ops),
    "ORMap": CRDTSpec(ORMap, ormap_ops, max_steps=14),
}
