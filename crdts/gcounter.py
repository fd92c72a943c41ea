"""G-Counter: a grow-only counter (Shapiro et al., 2011).

Each replica counts its own increments in its own slot; the value is the sum of
the slots and the join is the pointwise max, so concurrent increments are never
lost and a duplicated or re-ordered state never counts twice.

Cost: ``increment`` O(1); ``merge`` O(r) in the other state's replicas (the
same loop as a plain dict max-merge); ``value`` O(r).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from crdts._slots import (
    _FEW,
    _few_from_flat,
    flatten,
    from_flat,
    merge_max,
    ordered_flat,
    prune_slot,
)
from crdts.base import MAX_UINT, check_amount, check_replica
from crdts.errors import InvalidOperation
from crdts.operations import Arg, Logged, Mutator, Operations

__all__ = ["GCounter"]

_new = object.__new__


class GCounter:
    """A counter that only goes up.

    >>> a, b = GCounter(), GCounter()
    >>> delta = a.increment("a", 3)
    >>> _ = b.increment("b")
    >>> a.merge(b); a.value
    4
    >>> b.merge(delta); b.value          # a delta is a state too
    4
    """

    # ``_unordered``: an id may sit out of replica order in ``_slots`` (see
    # ``to_payload``). Set by every path that can add an id.
    __slots__ = ("_slots", "_unordered")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "GCounter"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._unordered = False

    def increment(self, replica: str, amount: int = 1) -> GCounter:
        """Add ``amount`` (an int >= 0) on behalf of ``replica``; return the delta.

        >>> c = GCounter(); c.increment("a", 2)
        GCounter({'a': 2})
        >>> c.increment("a", -1)
        Traceback (most recent call last):
        ...
        crdts.errors.InvalidOperation: an amount is never negative, got -1

        Cost: O(1).
        """
        # The hot path is a replica that already has a slot and a positive
        # amount: its id was checked in full when the slot was made, so only
        # its type is tested here (a str subclass could hash and compare as
        # anything). Everything else takes the checked path, which raises or
        # makes the slot.
        if type(replica) is not str or type(amount) is not int or amount <= 0:
            return self._increment_checked(replica, amount)
        slots = self._slots
        count = slots.get(replica)
        if count is None:
            return self._increment_checked(replica, amount)
        count += amount
        if count > MAX_UINT:
            raise InvalidOperation(f"the slot of {replica!r} would pass 2**64 - 1")
        slots[replica] = count
        delta = _new(GCounter)
        delta._slots = {replica: count}
        delta._unordered = False
        return delta

    def _increment_checked(self, replica: str, amount: int) -> GCounter:
        # Off the hot path: a new replica, or input that raises (an unusable
        # id, a bad amount), or an increment by 0, which writes no slot (a
        # zero slot would give equal states two encodings).
        check_replica(replica)
        check_amount(amount)
        if not amount:
            return GCounter()
        slots = self._slots
        count = slots.get(replica, 0) + amount
        if count > MAX_UINT:
            raise InvalidOperation(f"the slot of {replica!r} would pass 2**64 - 1")
        if replica not in slots and slots and replica < next(reversed(slots)):
            self._unordered = True  # the next encoding puts it in its place
        slots[replica] = count
        delta = _new(GCounter)
        delta._slots = {replica: count}
        delta._unordered = False
        return delta

    def merge(self, other: GCounter) -> None:
        """Join ``other`` in place (pointwise max); ``other`` is unchanged.

        >>> a = GCounter(); _ = a.increment("a", 5)
        >>> b = a.copy(); _ = b.increment("a")
        >>> a.merge(b); a.merge(b); a.value
        6

        Cost: O(r) in the replicas of ``other``.
        """
        if type(other) is not GCounter:
            raise TypeError(f"cannot merge {type(other).__name__} into GCounter")
        slots = self._slots
        held = len(slots)
        merge_max(slots, other._slots)
        if len(slots) != held:
            self._unordered = True  # new replicas, appended: see to_payload

    @property
    def value(self) -> int:
        """The sum of all increments this state has seen.

        >>> c = GCounter(); _ = c.increment("a", 2); _ = c.increment("b"); c.value
        3

        Cost: O(r).
        """
        return sum(self._slots.values())

    def prune(self, removed: str, owner: str) -> int:
        """Fold the increments of ``removed`` (a replica id that will never
        issue again) into the slot of ``owner`` and forget ``removed``: see
        ``crdts.base.Prunable``. Only ``owner`` may do this, once every
        replica holds all of ``removed``'s increments.

        >>> c = GCounter(); _ = c.increment("a~1", 2); _ = c.increment("a~2", 1)
        >>> c.prune("a~1", "a~2"), c, c.value
        (0, GCounter({'a~2': 3}), 3)

        Cost: O(1).
        """
        prune_slot(self._slots, removed, owner)
        self._unordered = True  # the owner's slot may be new, appended
        return 0  # nothing is renamed: see crdts.base.Prunable

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Forget the slot of ``removed`` without folding it anywhere: what a
        replica does once it has seen a state that carries the finished
        pruning of ``removed`` into ``owner`` (whose increments are then
        counted in the owner's slot; ``base`` is not used).

        >>> c = GCounter(); _ = c.increment("a~1", 2); _ = c.increment("a~2", 1)
        >>> c.cleanup("a~1", "a~2", 0); c
        GCounter({'a~2': 1})

        Cost: O(1).
        """
        self._slots.pop(removed, None)

    def copy(self) -> GCounter:
        """An independent copy.

        >>> c = GCounter(); d = c.copy(); _ = d.increment("a"); c.value, d.value
        (0, 1)

        Cost: O(r).
        """
        out = _new(GCounter)
        out._slots = self._slots.copy()
        out._unordered = self._unordered
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not GCounter:
            return NotImplemented
        return self._slots == other._slots

    def __repr__(self) -> str:
        return f"GCounter({dict(sorted(self._slots.items()))!r})"

    def to_payload(self) -> list[object]:
        """``[replica, count, ...]`` in replica order.

        The slots are kept in that order once put in it, so encoding is a
        flatten: O(r), or O(r log r) the first time after an id arrived out
        of order (the order is not part of the state, only of its encoding).
        """
        if self._unordered:
            # (Checked, not assumed: the flag may be up for an id that came
            # in order after all, and then the map is kept as it is.)
            flat, self._slots = ordered_flat(self._slots)
            self._unordered = False
            return flat
        return flatten(self._slots)

    @classmethod
    def from_payload(cls, payload: object, version: int) -> GCounter:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else."""
        out = cls.__new__(cls)  # __init__ would build a map only to drop it
        out._unordered = False
        # The short canonical case in one tight pass, without from_flat's
        # layers: a frame carries many small counters.
        few = _few_from_flat(payload) if type(payload) is list and len(payload) <= _FEW else None
        out._slots = few if few is not None else from_flat(payload, "GCounter")
        return out


def _model(ops: Sequence[Logged]) -> int:
    # The sequential specification: the sum of the increments.
    return sum(op.args[0] for op in ops)


GCounter.OPERATIONS = Operations(
    [Mutator("increment", lambda c, me, _, n: c.increment(me, n),
             (Arg("amount", check_amount, 1),))],
    _model,
    generate=lambda rng: ("increment", (rng.randint(0, 9),)),
)
