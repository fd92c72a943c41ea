"""The causal context of a dotted CRDT: which events (dots) a state has seen.

A dot ``(replica, n)`` names the n-th event of a replica. A context is a set of
dots, kept compact as a version vector (every dot ``n <= vv[r]``) plus a *dot
cloud* of the dots seen beyond a gap, which only deltas and out-of-order joins
produce (Almeida, Shoker and Baquero, 2018, section 7). The OR-Set and the
MV-Register keep one; a dot that is in the context but carries no value is an
event that was overwritten or removed, so no tombstone is ever stored.

The representation is canonical: ``vv`` holds no zeros and every cloud dot is
above ``vv[r] + 1``, so equal contexts compare and encode equal.

Cost: ``contains``, ``add`` O(1) amortised; ``merge`` O(size of the other).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from crdts.base import (
    MAX_UINT,
    expect_increasing,
    expect_list,
    expect_replica,
    expect_uint,
    expect_uints,
)
from crdts.errors import DecodeError, InvalidOperation

__all__ = ["CausalContext", "context_of"]


class CausalContext:
    """A compact set of dots.

    >>> c = CausalContext.from_dots([("a", 1), ("a", 2), ("a", 4)])
    >>> c
    CausalContext(vv={'a': 2}, cloud={'a': [4]})
    >>> c.contains("a", 3), c.contains("a", 4), c.next_counter("a")
    (False, True, 5)
    >>> c.add("a", 3); c
    CausalContext(vv={'a': 4}, cloud={})
    """

    __slots__ = ("cloud", "vv")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        self.cloud: dict[str, set[int]] = {}

    @classmethod
    def from_dots(cls, dots: Iterable[tuple[str, int]]) -> CausalContext:
        """The context holding exactly ``dots``. Cost: O(len(dots))."""
        out = cls()
        for replica, counter in dots:
            out.add(replica, counter)
        return out

    def contains(self, replica: str, counter: int) -> bool:
        """Whether the dot ``(replica, counter)`` has been seen.

        >>> c = CausalContext.from_dots([("a", 1), ("a", 3)])
        >>> [c.contains("a", n) for n in (1, 2, 3)]
        [True, False, True]

        Cost: O(1).
        """
        if counter <= self.vv.get(replica, 0):
            return True
        gaps = self.cloud.get(replica)
        return gaps is not None and counter in gaps

    def next_counter(self, replica: str) -> int:
        """The counter of ``replica``'s next new dot: above every one seen.

        >>> CausalContext.from_dots([("a", 1), ("a", 7)]).next_counter("a")
        8

        Cost: O(1) without gaps, O(cloud of ``replica``) with them.
        """
        gaps = self.cloud.get(replica)
        top = max(gaps) if gaps else self.vv.get(replica, 0)
        if top >= MAX_UINT:
            raise InvalidOperation(f"the dots of {replica!r} are exhausted")
        return top + 1

    def count(self, replica: str) -> int:
        """How many dots of ``replica`` are in the context.

        >>> CausalContext.from_dots([("a", 1), ("a", 2), ("a", 9)]).count("a")
        3

        Cost: O(1).
        """
        return self.vv.get(replica, 0) + len(self.cloud.get(replica, ()))

    def dots(self, replica: str) -> Iterator[int]:
        """The counters of ``replica``'s dots, the version vector's range first.

        >>> list(CausalContext.from_dots([("a", 1), ("a", 2), ("a", 9)]).dots("a"))
        [1, 2, 9]

        Cost: O(1) per dot.
        """
        yield from range(1, self.vv.get(replica, 0) + 1)
        yield from self.cloud.get(replica, ())

    def issubset(self, other: CausalContext) -> bool:
        """Whether every dot here is also in ``other``.

        >>> small = CausalContext.from_dots([("a", 2)])
        >>> big = CausalContext.from_dots([("a", 1), ("a", 2)])
        >>> small.issubset(big), small.issubset(CausalContext())
        (True, False)

        Cost: O(r + cloud) here, plus O(gap) where ``other`` covers a range of
        this version vector only through its cloud.
        """
        for replica, top in self.vv.items():
            theirs = other.vv.get(replica, 0)
            if top > theirs:
                gaps = other.cloud.get(replica, ())
                if any(c not in gaps for c in range(theirs + 1, top + 1)):
                    return False
        return all(
            other.contains(replica, c) for replica, gaps in self.cloud.items() for c in gaps
        )

    def origins(self) -> set[str]:
        """The replicas with at least one dot here.

        >>> sorted(CausalContext.from_dots([("b", 2), ("a", 1)]).origins())
        ['a', 'b']

        Cost: O(r).
        """
        return self.vv.keys() | self.cloud.keys()

    def add(self, replica: str, counter: int) -> None:
        """Insert one dot, keeping the representation compact.

        >>> c = CausalContext.from_dots([("a", 2)]); c.add("a", 1); c
        CausalContext(vv={'a': 2}, cloud={})

        Cost: O(1) amortised.
        """
        top = self.vv.get(replica, 0)
        if counter <= top:
            return
        if counter == top + 1:
            gaps = self.cloud.get(replica)
            while gaps and counter + 1 in gaps:
                counter += 1
                gaps.discard(counter)
            if gaps is not None and not gaps:
                del self.cloud[replica]
            self.vv[replica] = counter
        else:
            self.cloud.setdefault(replica, set()).add(counter)

    def merge(self, other: CausalContext) -> None:
        """Union ``other`` in.

        >>> c = CausalContext.from_dots([("a", 1), ("a", 3)])
        >>> c.merge(CausalContext.from_dots([("a", 2), ("b", 1)])); c
        CausalContext(vv={'a': 3, 'b': 1}, cloud={})

        Cost: O(r + cloud of other), plus O(own cloud of r) for each replica r
        whose version vector entry grows past a gap.
        """
        vv = self.vv
        for replica, top in other.vv.items():
            if top > vv.get(replica, 0):
                vv[replica] = top
                gaps = self.cloud.get(replica)
                if gaps:
                    self._compact(replica, gaps)
        for replica, theirs in other.cloud.items():
            top = vv.get(replica, 0)
            gaps = self.cloud.setdefault(replica, set())
            gaps.update(c for c in theirs if c > top)
            self._compact(replica, gaps)

    def _compact(self, replica: str, gaps: set[int]) -> None:
        top = self.vv.get(replica, 0)
        if gaps and min(gaps) <= top:
            gaps.difference_update([c for c in gaps if c <= top])
        while top + 1 in gaps:
            top += 1
            gaps.discard(top)
        if top:
            self.vv[replica] = top
        if not gaps:
            del self.cloud[replica]

    def rename(self, removed: str, owner: str, base: int) -> None:
        """Move ``removed``'s dots to ``owner``: ``(removed, i)`` becomes
        ``(owner, base + i)`` (how the dotted types prune: ``crdts._rename``).

        >>> c = CausalContext.from_dots([("a~1", 1), ("a~1", 2), ("a~2", 1)])
        >>> c.rename("a~1", "a~2", 1); c
        CausalContext(vv={'a~2': 3}, cloud={})

        Cost: O(dots of ``removed``).
        """
        moving = list(self.dots(removed))
        self.vv.pop(removed, None)
        self.cloud.pop(removed, None)
        for counter in moving:
            self.add(owner, base + counter)

    def copy(self) -> CausalContext:
        """An independent copy.

        >>> c = CausalContext(); d = c.copy(); d.add("a", 1); c.count("a"), d.count("a")
        (0, 1)

        Cost: O(size).
        """
        out = CausalContext()
        out.vv = self.vv.copy()
        out.cloud = {replica: gaps.copy() for replica, gaps in self.cloud.items()}
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not CausalContext:
            return NotImplemented
        return self.vv == other.vv and self.cloud == other.cloud

    def __repr__(self) -> str:
        vv = dict(sorted(self.vv.items()))
        cloud = {r: sorted(gaps) for r, gaps in sorted(self.cloud.items())}
        return f"CausalContext(vv={vv!r}, cloud={cloud!r})"

    def to_payload(self) -> list[object]:
        """``[replica, vv, [cloud...], ...]`` in replica order."""
        out: list[object] = []
        for replica in sorted(self.origins()):
            out += (replica, self.vv.get(replica, 0), sorted(self.cloud.get(replica, ())))
        return out

    @classmethod
    def from_payload(cls, payload: object, what: str) -> CausalContext:
        """Inverse of :meth:`to_payload` for untrusted input: canonical or DecodeError.

        Cost: O(len(payload)), one tight pass when no id has a dot cloud
        (the usual case: every ORSet, MVRegister and ORMap state has one).
        """
        flat = expect_list(payload, what)
        fast = _without_cloud(flat)
        if fast is not None:
            out = cls.__new__(cls)  # every state in a frame has one: no __init__
            out.vv, out.cloud = fast, {}
            return out
        if len(flat) % 3:
            raise DecodeError(f"{what}: expected replica/vv/cloud triples")
        replicas = flat[0::3]
        for replica in replicas:
            expect_replica(replica, what)
        expect_increasing(replicas, what)
        out = cls()
        for replica, raw_top, raw_gaps in zip(replicas, flat[1::3], flat[2::3], strict=True):
            top = expect_uint(raw_top, what)
            gaps = expect_list(raw_gaps, what)
            expect_uints(gaps, what)
            expect_increasing(gaps, what)
            # Canonical: no empty entry, no cloud dot that the vv could absorb.
            if not top and not gaps:
                raise DecodeError(f"{what}: empty entry for {replica!r}")
            if gaps and gaps[0] <= top + 1:  # type: ignore[operator]
                raise DecodeError(f"{what}: cloud of {replica!r} not compact")
            if top:
                out.vv[replica] = top  # type: ignore[index]
            if gaps:
                out.cloud[replica] = set(gaps)  # type: ignore[index, arg-type]
        return out


def context_of(payload: object, what: str) -> CausalContext:
    """:meth:`CausalContext.from_payload`, its usual case (no dot cloud)
    without the method's layers: every OR-Set and MV-Register state in a
    frame has a context, and each call layer costs as much as its checks.

    >>> context_of(["a", 2, [], "b", 1, []], "ctx").vv
    {'a': 2, 'b': 1}

    Cost: O(len(payload)), one tight pass when no id has a dot cloud.
    """
    vv = _without_cloud(payload) if type(payload) is list else None
    if vv is None:
        return CausalContext.from_payload(payload, what)
    out = _new(CausalContext)
    out.vv, out.cloud = vv, {}
    return out


_new = object.__new__


def _without_cloud(flat: list[object]) -> dict[str, int] | None:
    """The version vector of a payload whose every dot cloud is empty, if it
    is canonical; None otherwise (then ``from_payload`` checks it in full
    and names what is wrong)."""
    if len(flat) == 3:
        # One id (most deltas): unpacked, without the loop's setup.
        replica, top, gaps = flat
        if type(replica) is str and replica and type(top) is int and top > 0 and gaps == []:
            return {replica: top}
        return None
    if len(flat) % 3:
        return None
    vv: dict[str, int] = {}
    prev = ""  # below every non-empty str
    it = iter(flat)
    for replica, top, gaps in zip(it, it, it, strict=False):  # length checked above
        if not (
            type(replica) is str and replica > prev and type(top) is int and top > 0 and gaps == []
        ):
            return None
        vv[replica] = top
        prev = replica
    return vv
