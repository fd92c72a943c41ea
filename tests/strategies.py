"""Operation strategies and law specs for every built-in type."""

from __future__ import annotations

import hypothesis.strategies as st

from crdts import GCounter, LWWRegister, MVRegister, ORSet, PNCounter, VectorClock
from crdts.testing import CRDTSpec, Op

#: A small pool, so that removes hit and concurrent adds collide; it mixes
#: str, int and bytes so the canonical order across kinds is exercised.
ELEMENTS = st.sampled_from(["x", "y", 0, b"x"]) | st.sampled_from(["z", -3, 2**40, b""])
AMOUNTS = st.integers(0, 5) | st.just(2**32)


def gcounter_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda n: Op("increment", (replica, n)), AMOUNTS)


def pncounter_ops(replica: str) -> st.SearchStrategy[Op]:
    names = st.sampled_from(["increment", "decrement"])
    return st.builds(lambda name, n: Op(name, (replica, n)), names, AMOUNTS)


def orset_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda x: Op("add", (x, replica)), ELEMENTS) | st.builds(
        lambda x: Op("remove", (x,)), ELEMENTS
    )


def lww_ops(replica: str) -> st.SearchStrategy[Op]:
    # Explicit timestamps collide on purpose; None takes the hybrid clock.
    timestamps = st.none() | st.integers(0, 4)
    return st.builds(lambda x, t: Op("assign", (x, replica, t)), ELEMENTS, timestamps)


def mvregister_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda x: Op("assign", (x, replica)), ELEMENTS)


def vclock_ops(replica: str) -> st.SearchStrategy[Op]:
    return st.just(Op("increment", (replica,)))


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
}
