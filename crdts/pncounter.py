"""PN-Counter: a counter that goes up and down (Shapiro et al., 2011).

Two G-Counters, one of increments (P) and one of decrements (N); the value is
P - N. Each half only grows, so the pair is a lattice under the pairwise join.

Cost: ``increment`` and ``decrement`` O(1); ``merge`` O(r); ``value`` O(r).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from crdts.base import check_amount, expect_list
from crdts.errors import DecodeError
from crdts.gcounter import GCounter
from crdts.operations import Arg, Logged, Mutator, Operations

__all__ = ["PNCounter"]


class PNCounter:
    """A counter with increments and decrements.

    >>> p = PNCounter()
    >>> _ = p.increment("a", 5); _ = p.decrement("b", 7)
    >>> p.value
    -2
    """

    __slots__ = ("_n", "_p")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "PNCounter"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._p = GCounter()
        self._n = GCounter()

    def increment(self, replica: str, amount: int = 1) -> PNCounter:
        """Add ``amount`` (an int >= 0) on behalf of ``replica``; return the delta.

        >>> PNCounter().increment("a", 2).value
        2

        Cost: O(1).
        """
        delta = PNCounter()
        delta._p = self._p.increment(replica, amount)
        return delta

    def decrement(self, replica: str, amount: int = 1) -> PNCounter:
        """Subtract ``amount`` (an int >= 0) on behalf of ``replica``; return the delta.

        >>> PNCounter().decrement("a", 2).value
        -2

        Cost: O(1).
        """
        delta = PNCounter()
        delta._n = self._n.increment(replica, amount)
        return delta

    def merge(self, other: PNCounter) -> None:
        """Join ``other`` in place; ``other`` is unchanged.

        >>> a, b = PNCounter(), PNCounter()
        >>> _ = a.increment("a", 3); _ = b.decrement("b")
        >>> a.merge(b); a.value
        2

        Cost: O(r) in the replicas of ``other``.
        """
        if type(other) is not PNCounter:
            raise TypeError(f"cannot merge {type(other).__name__} into PNCounter")
        self._p.merge(other._p)
        self._n.merge(other._n)

    @property
    def value(self) -> int:
        """Increments minus decrements seen by this state.

        >>> p = PNCounter(); _ = p.increment("a", 2); _ = p.decrement("a", 5); p.value
        -3

        Cost: O(r).
        """
        return self._p.value - self._n.value

    def prune(self, removed: str, owner: str) -> int:
        """Fold the increments and decrements of ``removed`` (a replica id
        that will never issue again) into ``owner``'s slots and forget
        ``removed`` (``crdts.base.Prunable``); the value is unchanged.

        >>> p = PNCounter(); _ = p.increment("a~1", 5); _ = p.decrement("a~1", 2)
        >>> p.prune("a~1", "a~2"), p.value, p
        (0, 3, PNCounter(p=GCounter({'a~2': 5}), n=GCounter({'a~2': 2})))

        Cost: O(1).
        """
        # Validate both halves before changing either: all or nothing.
        self._p.copy().prune(removed, owner)
        self._n.copy().prune(removed, owner)
        self._p.prune(removed, owner)
        return self._n.prune(removed, owner)

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Forget ``removed``'s slots without folding them anywhere (once a
        state carrying its finished pruning has been seen).

        >>> p = PNCounter(); _ = p.increment("a~1", 5); _ = p.increment("b", 1)
        >>> p.cleanup("a~1", "a~2", 0); p.value
        1

        Cost: O(1).
        """
        self._p.cleanup(removed, owner, base)
        self._n.cleanup(removed, owner, base)

    def copy(self) -> PNCounter:
        """An independent copy.

        >>> p = PNCounter(); q = p.copy(); _ = q.decrement("a"); p.value, q.value
        (0, -1)

        Cost: O(r).
        """
        out = PNCounter()
        out._p = self._p.copy()
        out._n = self._n.copy()
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not PNCounter:
            return NotImplemented
        return self._p == other._p and self._n == other._n

    def __repr__(self) -> str:
        return f"PNCounter(p={self._p!r}, n={self._n!r})"

    def to_payload(self) -> list[object]:
        """``[P payload, N payload]``. Cost: O(r log r)."""
        return [self._p.to_payload(), self._n.to_payload()]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> PNCounter:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else."""
        halves = expect_list(payload, "PNCounter")
        if len(halves) != 2:
            raise DecodeError("PNCounter: expected [increments, decrements]")
        out = cls.__new__(cls)  # no throwaway halves from __init__
        out._p = GCounter.from_payload(halves[0], version)
        out._n = GCounter.from_payload(halves[1], version)
        return out


def _model(ops: Sequence[Logged]) -> int:
    # The sequential specification: increments minus decrements.
    return sum(op.args[0] if op.kind == "increment" else -op.args[0] for op in ops)


_AMOUNT = (Arg("amount", check_amount, 1),)
PNCounter.OPERATIONS = Operations(
    [
        Mutator("increment", lambda c, me, _, n: c.increment(me, n), _AMOUNT),
        Mutator("decrement", lambda c, me, _, n: c.decrement(me, n), _AMOUNT),
    ],
    _model,
    generate=lambda rng: (rng.choice(["increment", "decrement"]), (rng.randint(0, 9),)),
)
