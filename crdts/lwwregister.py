"""LWW-Register: a last-writer-wins register.

Writes are ordered by ``(timestamp, replica)``; the greatest wins everywhere.
Equal timestamps are broken by the larger replica id, and (only for writes a
caller forced to share a timestamp and a replica) by the value's canonical
order, so the order is total and every replica picks the same winner.

A default timestamp is always strictly above the register's current one,
so a write made after reading a value beats it, even when this replica's
clock is behind the clock that wrote the value (clock skew, a clock stepping
backwards). The type reads no clock: through a replicator (the operation
table, ``OPERATIONS``) the default comes from the replicator's hybrid logical
clock (Kulkarni et al., 2014; ``replication.hlc``), which also refuses an
explicit timestamp too far ahead of it, so no writer can freeze the register;
a bare register takes ``max(clock(), current + 1)`` from the ``clock`` it was
given, or ``current + 1`` without one. Lost concurrent writes are the point
of the type: use an MV-Register to keep them.

Cost: every operation O(1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

from crdts.base import (
    MAX_UINT,
    check_atom,
    check_replica,
    expect_atoms,
    expect_list,
    expect_replica,
    expect_uint,
)
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import SAMPLE_ATOMS, Arg, Clock, Logged, Mutator, Operations

__all__ = ["LWWRegister"]

T = TypeVar("T")

_RANK = {int: 0, bytes: 1, str: 2}


def _order(write: tuple[int, str, object]) -> tuple[int, str, int, object]:
    timestamp, replica, value = write
    return (timestamp, replica, _RANK[type(value)], value)


class LWWRegister(Generic[T]):
    """A register whose latest write wins.

    >>> r: LWWRegister[str] = LWWRegister()
    >>> r.value, r.timestamp
    (None, None)
    >>> _ = r.assign("v1", "a", timestamp=10)
    >>> _ = r.assign("v0", "b", timestamp=9)       # older: loses
    >>> r.value, r.timestamp
    ('v1', 10)
    >>> _ = r.assign("v2", "b", timestamp=10)      # same time: larger replica id wins
    >>> r.value
    'v2'

    ``clock``, if given, is the clock the default timestamps start from (an
    int reading; the type never reads one of its own). It is not part of the
    state: it is neither compared nor encoded.
    """

    __slots__ = ("_clock", "_write")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "LWWRegister"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        self._clock: Callable[[], int] | None = clock
        self._write: tuple[int, str, T] | None = None

    def assign(self, value: T, replica: str, timestamp: int | None = None) -> LWWRegister[T]:
        """Write ``value`` on behalf of ``replica``; return the delta (the write).

        Without ``timestamp``, the register's clock (if it has one) picks one
        above the current timestamp, so this write wins over everything this
        replica has seen:

        >>> r: LWWRegister[str] = LWWRegister(clock=lambda: 5)  # a clock far behind
        >>> _ = r.assign("theirs", "z", timestamp=1_000)
        >>> r.assign("mine", "a").timestamp, r.value
        (1001, 'mine')

        Cost: O(1).
        """
        check_atom(value)
        check_replica(replica)
        if timestamp is None:
            timestamp = self._next_timestamp()
        elif type(timestamp) is not int or not 0 <= timestamp <= MAX_UINT:
            raise InvalidOperation(f"a timestamp is an int in [0, 2**64), got {timestamp!r}")
        write = (timestamp, replica, value)
        if self._write is None or _order(write) > _order(self._write):
            self._write = write
        delta: LWWRegister[T] = LWWRegister(clock=self._clock)
        delta._write = write
        return delta

    def _next_timestamp(self) -> int:
        now = 0 if self._clock is None else self._clock()
        if type(now) is not int:
            raise InvalidOperation(f"the clock must return an int, got {now!r}")
        # Strictly above the current write, whatever the wall clock says.
        floor = 0 if self._write is None else self._write[0] + 1
        timestamp = max(now, floor)
        if timestamp > MAX_UINT:
            raise InvalidOperation("the register's timestamps are exhausted")
        return timestamp

    def merge(self, other: LWWRegister[T]) -> None:
        """Keep the greater of the two writes; ``other`` is unchanged.

        >>> a: LWWRegister[str] = LWWRegister(); b: LWWRegister[str] = LWWRegister()
        >>> _ = a.assign("old", "a", timestamp=1); _ = b.assign("new", "b", timestamp=2)
        >>> a.merge(b); a.value
        'new'

        Cost: O(1).
        """
        if type(other) is not LWWRegister:
            raise TypeError(f"cannot merge {type(other).__name__} into LWWRegister")
        if other._write is not None and (
            self._write is None or _order(other._write) > _order(self._write)
        ):
            self._write = other._write

    @property
    def value(self) -> T | None:
        """The winning value, or None before any write.

        >>> r: LWWRegister[int] = LWWRegister(); _ = r.assign(4, "a"); r.value
        4

        Cost: O(1).
        """
        return None if self._write is None else self._write[2]

    @property
    def timestamp(self) -> int | None:
        """The winning write's timestamp, or None before any write.

        >>> r: LWWRegister[int] = LWWRegister(); _ = r.assign(4, "a", timestamp=9); r.timestamp
        9

        Cost: O(1).
        """
        return None if self._write is None else self._write[0]

    @property
    def replica(self) -> str | None:
        """The replica of the winning write, or None before any write.

        >>> r: LWWRegister[int] = LWWRegister(); _ = r.assign(4, "a"); r.replica
        'a'

        Cost: O(1).
        """
        return None if self._write is None else self._write[1]

    def prune(self, removed: str, owner: str) -> int:
        """Nothing to fold (``crdts.base.Prunable``): the register keeps one
        write, whose replica id is part of its order (ties are broken by
        it), so it stays: O(1) whatever the history.

        >>> r: LWWRegister[str] = LWWRegister()
        >>> _ = r.assign("v", "a~1", timestamp=3); before = r.copy()
        >>> r.prune("a~1", "a~2"), r == before
        (0, True)

        Cost: O(1).
        """
        return 0

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Nothing to forget: see :meth:`prune`.

        >>> r: LWWRegister[str] = LWWRegister()
        >>> _ = r.assign("v", "a~1", timestamp=3); before = r.copy()
        >>> r.cleanup("a~1", "a~2", 0); r == before
        True

        Cost: O(1).
        """

    def copy(self) -> LWWRegister[T]:
        """An independent copy (with the same clock).

        >>> r: LWWRegister[int] = LWWRegister(); s = r.copy(); _ = s.assign(1, "a")
        >>> r.value, s.value
        (None, 1)

        Cost: O(1).
        """
        out: LWWRegister[T] = LWWRegister(clock=self._clock)
        out._write = self._write
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not LWWRegister:
            return NotImplemented
        return self._write == other._write

    def __repr__(self) -> str:
        return f"LWWRegister({self._write!r})"

    def to_payload(self) -> list[object]:
        """``[]`` or ``[timestamp, replica, value]``. Cost: O(1)."""
        return [] if self._write is None else list(self._write)

    @classmethod
    def from_payload(cls, payload: object, version: int) -> LWWRegister[T]:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else."""
        out: LWWRegister[T] = cls.__new__(cls)  # decoded: no clock, as __init__ leaves it
        out._clock = None
        if type(payload) is list and len(payload) == 3:
            # The usual write, checked in one condition (a frame carries
            # many registers); the checks below name what is wrong.
            timestamp, replica, value = payload
            if (
                type(timestamp) is int
                and timestamp >= 0
                and type(replica) is str
                and replica
                and type(value) in (str, int, bytes)
            ):
                out._write = (timestamp, replica, value)
                return out
        out._write = None
        fields = expect_list(payload, "LWWRegister")
        if not fields:
            return out
        if len(fields) != 3:
            raise DecodeError("LWWRegister: expected [] or [timestamp, replica, value]")
        timestamp = expect_uint(fields[0], "LWWRegister timestamp")
        replica = expect_replica(fields[1], "LWWRegister replica")
        expect_atoms(fields[2:], "LWWRegister value")
        out._write = (timestamp, replica, fields[2])  # type: ignore[assignment]
        return out


def _model(ops: Sequence[Logged]) -> object:
    # The write with the greatest (timestamp, replica): read from the
    # deltas, since a default timestamp is the clock's to choose.
    writes = [op.delta._write for op in ops]
    return max(writes, key=_order)[2] if writes else None


def _check_timestamp(timestamp: object) -> int | None:
    if timestamp is not None and (type(timestamp) is not int or not 0 <= timestamp <= MAX_UINT):
        raise InvalidOperation(
            f"a timestamp is None or an int in [0, 2**64), got {timestamp!r:.40}"
        )
    return timestamp


def _assign(
    register: LWWRegister[object], replica: str, clock: Clock, value: object, timestamp: int | None
) -> LWWRegister[object]:
    # The replicator's clock picks a default timestamp above the register's
    # and refuses an explicit one too far ahead of it (max offset).
    timestamp = clock.timestamp(register.timestamp) if timestamp is None else clock.admit(timestamp)
    return register.assign(value, replica, timestamp)


LWWRegister.OPERATIONS = Operations(
    [
        Mutator(
            "assign",
            _assign,
            (Arg("value", check_atom), Arg("timestamp", _check_timestamp, None)),
        )
    ],
    _model,
    # An explicit timestamp now and then: equal readings, and clocks behind.
    generate=lambda rng: (
        "assign", (rng.choice(SAMPLE_ATOMS), rng.choice([None, None, rng.randrange(5)]))
    ),
)
