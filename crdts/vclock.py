"""Vector clocks (Fidge 1988, Mattern 1989): a count of events per replica.

A vector clock is itself a join-semilattice (pointwise max), so it merges,
copies, encodes and obeys the laws like every other type here. ``compare``
tells the causal relation of two clocks: one happened before the other, they
are equal, or they are concurrent.

Cost: ``increment``, ``[]`` are O(1); ``merge`` is O(r) in the other clock's
replicas; ``compare`` and ``<=`` are O(r) in both clocks' replicas.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

from crdts._slots import from_flat, leq_slots, merge_max, prune_slot, to_flat
from crdts.base import MAX_UINT, check_replica
from crdts.errors import InvalidOperation
from crdts.operations import Logged, Mutator, Operations

__all__ = ["Order", "VectorClock"]


class Order(enum.Enum):
    """The causal relation of one clock to another."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock:
    """A map of replica id to event count, joined by pointwise max.

    >>> v, w = VectorClock(), VectorClock()
    >>> _ = v.increment("a"); _ = w.increment("b")
    >>> v.compare(w)
    <Order.CONCURRENT: 'concurrent'>
    >>> v.merge(w); v["a"], v["b"], v["c"]
    (1, 1, 0)
    >>> w <= v, v <= w
    (True, False)
    """

    __slots__ = ("_slots",)
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "VectorClock"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        """A clock, empty or with the given counts (zeros are dropped).

        >>> VectorClock({"a": 2, "b": 0})
        VectorClock({'a': 2})

        Cost: O(r).
        """
        self._slots: dict[str, int] = {}
        for replica, count in (counts or {}).items():
            check_replica(replica)
            if type(count) is not int or not 0 <= count <= MAX_UINT:
                raise InvalidOperation(f"a clock entry is an int in [0, 2**64), got {count!r}")
            if count:
                self._slots[replica] = count

    def increment(self, replica: str) -> VectorClock:
        """Count one more event of ``replica``; return the delta (that one entry).

        >>> v = VectorClock(); v.increment("a")
        VectorClock({'a': 1})

        Cost: O(1).
        """
        check_replica(replica)
        count = self._slots.get(replica, 0) + 1
        if count > MAX_UINT:
            raise InvalidOperation(f"the clock of {replica!r} would overflow")
        self._slots[replica] = count
        delta = VectorClock()
        delta._slots[replica] = count
        return delta

    def merge(self, other: VectorClock) -> None:
        """Join ``other`` into this clock (pointwise max); ``other`` is unchanged.

        >>> v = VectorClock({"a": 3}); v.merge(VectorClock({"a": 1, "b": 2})); v
        VectorClock({'a': 3, 'b': 2})

        Cost: O(r) in the replicas of ``other``.
        """
        if type(other) is not VectorClock:
            raise TypeError(f"cannot merge {type(other).__name__} into VectorClock")
        merge_max(self._slots, other._slots)

    def compare(self, other: VectorClock) -> Order:
        """How this clock relates causally to ``other``.

        >>> VectorClock({"a": 1}).compare(VectorClock({"a": 2}))
        <Order.BEFORE: 'before'>

        Cost: O(r).
        """
        if type(other) is not VectorClock:
            raise TypeError(f"cannot compare VectorClock with {type(other).__name__}")
        below = leq_slots(self._slots, other._slots)
        above = leq_slots(other._slots, self._slots)
        if below and above:
            return Order.EQUAL
        if below:
            return Order.BEFORE
        if above:
            return Order.AFTER
        return Order.CONCURRENT

    def __le__(self, other: VectorClock) -> bool:
        """Every entry is at most the other's: this clock happened before or equals it."""
        if type(other) is not VectorClock:
            return NotImplemented
        return leq_slots(self._slots, other._slots)

    def __lt__(self, other: VectorClock) -> bool:
        if type(other) is not VectorClock:
            return NotImplemented
        return self.compare(other) is Order.BEFORE

    def __getitem__(self, replica: str) -> int:
        """The count of ``replica``, 0 if it never counted here. Cost: O(1)."""
        return self._slots.get(replica, 0)

    def __iter__(self) -> Iterator[str]:
        """The replicas with a non-zero count, in no set order."""
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def value(self) -> dict[str, int]:
        """The counts as a new dict.

        >>> VectorClock({"b": 1, "a": 2}).value == {"a": 2, "b": 1}
        True

        Cost: O(r).
        """
        return dict(self._slots)

    def prune(self, removed: str, owner: str) -> int:
        """Fold the events of ``removed`` (a replica id that will never
        issue again) into the slot of ``owner`` and forget ``removed``: see
        ``crdts.base.Prunable``. Only ``owner`` may do this, once every
        replica holds all of ``removed``'s events.

        >>> c = VectorClock({"a~1": 2, "a~2": 1})
        >>> c.prune("a~1", "a~2"), c
        (0, VectorClock({'a~2': 3}))

        Cost: O(1).
        """
        prune_slot(self._slots, removed, owner)
        return 0  # nothing is renamed: see crdts.base.Prunable

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Forget the slot of ``removed`` without folding it anywhere: what a
        replica does once it has seen a state that carries the finished
        pruning of ``removed`` into ``owner`` (whose events are then
        counted in the owner's slot; ``base`` is not used).

        >>> c = VectorClock({"a~1": 2, "a~2": 1})
        >>> c.cleanup("a~1", "a~2", 0); c
        VectorClock({'a~2': 1})

        Cost: O(1).
        """
        self._slots.pop(removed, None)

    def copy(self) -> VectorClock:
        """An independent copy.

        >>> v = VectorClock(); w = v.copy(); _ = w.increment("a"); v["a"], w["a"]
        (0, 1)

        Cost: O(r).
        """
        out = VectorClock()
        out._slots = self._slots.copy()
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not VectorClock:
            return NotImplemented
        return self._slots == other._slots

    def __repr__(self) -> str:
        return f"VectorClock({dict(sorted(self._slots.items()))!r})"

    def to_payload(self) -> list[object]:
        """``[replica, count, ...]`` in replica order. Cost: O(r log r)."""
        return to_flat(self._slots)

    @classmethod
    def from_payload(cls, payload: object, version: int) -> VectorClock:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else."""
        out = cls()
        out._slots = from_flat(payload, "VectorClock")
        return out


def _model(ops: Sequence[Logged]) -> dict[str, int]:
    # The sequential specification: the number of increments per replica.
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.dot[0]] = counts.get(op.dot[0], 0) + 1
    return counts


# Its value names replicas: an operation folded into an owner's by pruning
# counts under the owner.
VectorClock.OPERATIONS = Operations(
    [Mutator("increment", lambda v, me, _: v.increment(me))],
    _model,
    names_replicas=True,
    generate=lambda _: ("increment", ()),
)
