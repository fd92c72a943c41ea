"""The replicator's hybrid logical clock (Kulkarni et al., 2014).

A :class:`HybridClock` reads no time of its own: its replicator feeds it the
``now`` it is given (``tick`` and ``receive``), mapped onto nanoseconds of
wall time by ``origin`` (the driver's time minus the wall clock's, which a
node sets once; 0 in a simulation, whose virtual time is the only time).

A reading is one int, the HLC's ``l`` with its logical counter folded into
the low nanoseconds: ``max(previous + 1, physical, floor + 1)``. So readings
are strictly increasing, stay within a few nanoseconds of the physical clock
as long as nothing ahead of it is seen, and a write made after reading a
value (its timestamp is the ``floor``) always sorts after it, whatever the
wall clocks say.

CockroachDB's max-offset rule bounds how far a caller may push the clock: an
explicit timestamp more than ``max_offset`` nanoseconds ahead of the
physical clock is refused (:class:`~crdts.errors.InvalidOperation`), so no
single writer can move a last-writer-wins register beyond every later write
(``timestamp=2**64-1`` froze one before).

>>> clock = HybridClock(max_offset=1_000)
>>> clock.advance(2e-6)                       # 2,000 ns of the driver's time
>>> clock.timestamp(None), clock.timestamp(None), clock.timestamp(10_000)
(2000, 2001, 10001)
>>> clock.admit(3_000)
3000
>>> clock.admit(2**64 - 1)
Traceback (most recent call last):
...
crdts.errors.InvalidOperation: timestamp 18446744073709551615 is ... ns ahead of ...

Cost: every operation O(1).
"""

from __future__ import annotations

from crdts.base import MAX_UINT
from crdts.errors import InvalidOperation

__all__ = ["DEFAULT_MAX_OFFSET", "HybridClock"]

#: CockroachDB's default maximum clock offset: 500 ms.
DEFAULT_MAX_OFFSET = 500_000_000


class HybridClock:
    """A hybrid logical clock in nanoseconds, fed by its owner (see the module)."""

    __slots__ = ("_last", "_physical", "max_offset", "origin")

    def __init__(self, *, max_offset: int = DEFAULT_MAX_OFFSET, origin: int = 0) -> None:
        if type(max_offset) is not int or max_offset < 0:
            raise ValueError("max_offset is an int >= 0 (nanoseconds)")
        self.max_offset = max_offset
        #: Nanoseconds added to the driver's time to make wall time.
        self.origin = origin
        self._physical = 0
        self._last = -1

    @property
    def physical(self) -> int:
        """The last physical reading fed, in nanoseconds. Cost: O(1)."""
        return self._physical

    @property
    def last(self) -> int | None:
        """The last reading given or admitted (None before any). Cost: O(1)."""
        return None if self._last < 0 else self._last

    def advance(self, now: float) -> None:
        """Feed the driver's time ``now`` (seconds). The physical reading never
        goes back (a wall clock stepping backwards holds it where it was).
        Cost: O(1)."""
        physical = min(int(now * 1_000_000_000) + self.origin, MAX_UINT)
        self._physical = max(self._physical, physical)

    def timestamp(self, above: int | None) -> int:
        """A new reading: strictly above every earlier one and above
        ``above`` (a timestamp already held), at least the physical clock.
        InvalidOperation if that would pass 2**64 - 1. Cost: O(1)."""
        reading = max(self._last + 1, self._physical, -1 if above is None else above + 1)
        if reading > MAX_UINT:
            raise InvalidOperation("timestamps are exhausted: a timestamp held is 2**64 - 1")
        self._last = reading
        return reading

    def admit(self, timestamp: int) -> int:
        """``timestamp`` (a caller's explicit one) if it is at most
        ``max_offset`` ahead of the physical clock; the clock then reads
        above it. InvalidOperation, changing nothing, otherwise. Cost: O(1)."""
        ahead = timestamp - self._physical
        if ahead > self.max_offset:
            raise InvalidOperation(
                f"timestamp {timestamp} is {ahead} ns ahead of this replica's clock "
                f"(at most {self.max_offset} allowed)"
            )
        self._last = max(self._last, timestamp)
        return timestamp

    def __repr__(self) -> str:
        return (f"HybridClock(physical={self._physical}, last={self.last}, "
                f"max_offset={self.max_offset})")
