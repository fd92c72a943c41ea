"""The replicator's hybrid logical clock (``replication.hlc``): readings are
strictly increasing whatever the physical clock does, never below it, and
no caller can push them further ahead of it than the maximum offset."""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
import pytest
from hypothesis import given

from crdts.base import MAX_UINT
from crdts.errors import InvalidOperation
from replication.hlc import HybridClock

OFFSET = 1_000

# What a clock is fed and asked, in any order: the driver's time (which may
# step backwards), a reading (above a timestamp held, or none), an explicit
# timestamp to admit.
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 10_000)),
        st.tuples(st.just("read"), st.none() | st.integers(0, 20_000)),
        st.tuples(st.just("admit"), st.integers(0, 20_000)),
    ),
    max_size=60,
)


@given(_STEPS)
def test_readings_are_monotone_and_never_behind_the_physical_clock(
    steps: list[tuple[str, int | None]],
) -> None:
    clock = HybridClock(max_offset=OFFSET)
    readings: list[int] = []
    for kind, value in steps:
        if kind == "advance":
            assert value is not None
            clock.advance(value / 1e9)
        elif kind == "read":
            reading = clock.timestamp(value)
            assert reading >= clock.physical
            assert value is None or reading > value
            assert not readings or reading > readings[-1]
            readings.append(reading)
        else:
            assert value is not None
            try:
                clock.admit(value)
            except InvalidOperation:
                assert value > clock.physical + OFFSET
            else:
                assert value <= clock.physical + OFFSET


@given(_STEPS)
def test_admitted_timestamps_push_the_clock_at_most_max_offset_ahead(
    steps: list[tuple[str, int | None]],
) -> None:
    # Fed only admitted timestamps and its own readings (no floor from
    # elsewhere), a clock reads at most max_offset ahead of the physical
    # clock, plus one per reading taken (its logical part).
    clock = HybridClock(max_offset=OFFSET)
    taken = 0
    for kind, value in steps:
        if kind == "advance":
            assert value is not None
            clock.advance(value / 1e9)
        elif kind == "read":
            taken += 1
            assert clock.timestamp(None) <= clock.physical + OFFSET + taken
        else:
            assert value is not None
            with contextlib.suppress(InvalidOperation):
                clock.admit(value)


def test_a_physical_clock_stepping_backwards_does_not_move_readings_back() -> None:
    clock = HybridClock()
    clock.advance(10.0)
    first = clock.timestamp(None)
    clock.advance(3.0)
    assert clock.physical == 10_000_000_000
    assert clock.timestamp(None) == first + 1


def test_timestamps_run_out_with_an_error_not_an_overflow() -> None:
    clock = HybridClock()
    with pytest.raises(InvalidOperation, match="exhausted"):
        clock.timestamp(MAX_UINT)
    assert clock.last is None
    with pytest.raises(ValueError, match="max_offset"):
        HybridClock(max_offset=-1)
