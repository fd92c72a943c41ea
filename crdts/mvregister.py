"""MV-Register: a multi-value register (Shapiro et al., 2011; Dynamo's siblings).

An assignment replaces every value it has seen; assignments that did not see
each other are all kept, and the application sees the concurrent values
together and decides. Kept as dots plus a causal context like the OR-Set: each
live value carries the dot of its write, the context remembers overwritten ones.

Cost (v concurrent values, r replicas): ``assign`` O(v); ``merge`` O(v + r);
``values`` O(v).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from crdts._rename import check_rename, prune_by_renaming, rename_context
from crdts.base import (
    check_atom,
    check_replica,
    expect_atoms,
    expect_list,
    expect_replica,
    expect_uints,
)
from crdts.dotcontext import CausalContext, context_of
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import SAMPLE_ATOMS, Arg, Logged, Mutator, Operations

__all__ = ["MVRegister"]

T = TypeVar("T")


class MVRegister(Generic[T]):
    """A register that keeps every concurrently written value.

    >>> a: MVRegister[str] = MVRegister()
    >>> _ = a.assign("v0", "a")
    >>> b = a.copy()
    >>> _ = a.assign("v1", "a"); _ = b.assign("v2", "b")    # concurrent writes
    >>> a.merge(b); sorted(a.values)
    ['v1', 'v2']
    >>> _ = a.assign("v3", "a"); sorted(a.values)            # a write that saw both
    ['v3']
    """

    __slots__ = ("_ctx", "_entries")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "MVRegister"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], T] = {}
        self._ctx = CausalContext()

    def assign(self, value: T, replica: str) -> MVRegister[T]:
        """Write ``value`` on behalf of ``replica``, replacing what it has seen;
        return the delta.

        >>> r: MVRegister[int] = MVRegister(); r.assign(5, "a").values
        frozenset({5})

        Cost: O(v).
        """
        check_atom(value)
        check_replica(replica)
        dot = (replica, self._ctx.next_counter(replica))
        delta: MVRegister[T] = MVRegister()
        delta._ctx = CausalContext.from_dots(self._entries)
        delta._ctx.add(*dot)
        delta._entries[dot] = value
        self._ctx.add(*dot)
        self._entries = {dot: value}
        return delta

    def merge(self, other: MVRegister[T]) -> None:
        """Join ``other`` in place; ``other`` is unchanged.

        >>> a: MVRegister[int] = MVRegister(); b: MVRegister[int] = MVRegister()
        >>> _ = a.assign(1, "a"); _ = b.assign(2, "b")
        >>> a.merge(b); sorted(a.values)
        [1, 2]

        Cost: O(v + r).
        """
        if type(other) is not MVRegister:
            raise TypeError(f"cannot merge {type(other).__name__} into MVRegister")
        mine, theirs = self._entries, other._entries
        kept = {
            dot: value
            for dot, value in mine.items()
            if dot in theirs or not other._ctx.contains(*dot)
        }
        kept.update(
            (dot, value)
            for dot, value in theirs.items()
            if dot not in mine and not self._ctx.contains(*dot)
        )
        self._entries = kept
        self._ctx.merge(other._ctx)

    @property
    def values(self) -> frozenset[T]:
        """The concurrent values; empty before any assignment.

        >>> r: MVRegister[str] = MVRegister(); r.values
        frozenset()

        Cost: O(v).
        """
        return frozenset(self._entries.values())

    @property
    def value(self) -> frozenset[T]:
        """Same as :attr:`values`, for generic code.

        >>> r: MVRegister[str] = MVRegister(); _ = r.assign("v", "a"); r.value
        frozenset({'v'})

        Cost: O(v).
        """
        return self.values

    def prune(self, removed: str, owner: str) -> int:
        """Rename ``removed``'s dots (a replica id that will never issue
        again) into a block of ``owner``'s above its highest, and return the
        block's base (``crdts.base.Prunable``, ``crdts._rename``): the values,
        and what was seen and overwritten, are unchanged. Only ``owner`` may
        do this; every other replica renames the same way with
        :meth:`cleanup` and the base.

        >>> r: MVRegister[str] = MVRegister(); _ = r.assign("v", "a~1")
        >>> r.prune("a~1", "a~2"), r
        (0, MVRegister({('a~2', 1): 'v'}, CausalContext(vv={'a~2': 1}, cloud={})))

        Cost: O(v log v + r) (through the payload).
        """
        return prune_by_renaming(self, removed, owner)

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Rename ``removed``'s dots into ``owner``'s at ``base``, as
        ``owner``'s :meth:`prune` did (for a replica that has seen the
        pruning): a write that overwrote a renamed one still overwrites it.
        InvalidOperation, changing nothing, if a renamed dot would collide.

        >>> a: MVRegister[str] = MVRegister(); _ = a.assign("v", "a~1"); b = a.copy()
        >>> base = a.prune("a~1", "a~2")
        >>> _ = b.assign("w", "b")              # concurrently: b overwrites the v it saw
        >>> b.cleanup("a~1", "a~2", base); a.merge(b); sorted(a.values)
        ['w']

        Cost: O(v log v + r) (through the payload).
        """
        check_rename(removed, owner, base)
        if all(replica != removed for replica, _ in self._entries):
            self._ctx.rename(removed, owner, base)  # only seen, never live here
            return
        ctx, entries = self.to_payload()
        assert isinstance(ctx, list) and isinstance(entries, list)
        if removed not in ctx[0::3]:
            return
        triples = [
            (owner, base + c, v) if r == removed else (r, c, v)
            for r, c, v in zip(entries[0::3], entries[1::3], entries[2::3], strict=True)
        ]
        dots = [(r, c) for r, c, _ in triples]
        if len(set(dots)) != len(dots):
            raise InvalidOperation(f"renamed dots of {removed!r} collide with {owner!r}'s")
        triples.sort(key=lambda t: (t[0], t[1]))
        out: MVRegister[T] = MVRegister.from_payload(
            [rename_context(ctx, removed, owner, base), [x for t in triples for x in t]],
            self.FORMAT_VERSION,
        )
        self._entries, self._ctx = out._entries, out._ctx

    def copy(self) -> MVRegister[T]:
        """An independent copy.

        >>> r: MVRegister[int] = MVRegister(); s = r.copy(); _ = s.assign(1, "a")
        >>> r.values, s.values
        (frozenset(), frozenset({1}))

        Cost: O(v + r).
        """
        out: MVRegister[T] = MVRegister()
        out._entries = self._entries.copy()
        out._ctx = self._ctx.copy()
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not MVRegister:
            return NotImplemented
        return self._entries == other._entries and self._ctx == other._ctx

    def __repr__(self) -> str:
        return f"MVRegister({dict(sorted(self._entries.items()))!r}, {self._ctx!r})"

    def to_payload(self) -> list[object]:
        """``[context, [replica, counter, value, ...]]`` in dot order. Cost: O(v log v + r)."""
        entries: list[object] = []
        for (replica, counter), value in sorted(self._entries.items()):
            entries += (replica, counter, value)
        return [self._ctx.to_payload(), entries]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> MVRegister[T]:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else."""
        parts = expect_list(payload, "MVRegister")
        if len(parts) != 2:
            raise DecodeError("MVRegister: expected [context, entries]")
        ctx = context_of(parts[0], "MVRegister context")
        flat = expect_list(parts[1], "MVRegister entries")
        out: MVRegister[T] = cls.__new__(cls)  # no throwaway context from __init__
        out._ctx = ctx
        few = _few_entries(flat, ctx)
        if few is not None:
            out._entries = few  # type: ignore[assignment]
            return out
        if len(flat) % 3:
            raise DecodeError("MVRegister entries: expected replica/counter/value triples")
        replicas, counters, values = flat[0::3], flat[1::3], flat[2::3]
        for replica in replicas:
            expect_replica(replica, "MVRegister entries")
        expect_uints(counters, "MVRegister entries", low=1)
        expect_atoms(values, "MVRegister values")
        dots: list[tuple[str, int]] = list(zip(replicas, counters, strict=True))  # type: ignore[arg-type]
        if dots != sorted(set(dots)):
            raise DecodeError("MVRegister entries: dots not in strictly increasing order")
        if not all(ctx.contains(*dot) for dot in dots):
            raise DecodeError("MVRegister: a dot lies outside the causal context")
        out._entries = dict(zip(dots, values, strict=True))  # type: ignore[arg-type]
        return out


#: Entries up to this many items are checked in one tight pass (a register
#: holds one value, or a few concurrent ones); longer ones at C speed.
_FEW = 24
_ATOMS = (str, int, bytes)


def _few_entries(flat: list[object], ctx: CausalContext) -> dict[tuple[str, int], object] | None:
    """The entries of a short canonical ``[replica, counter, value, ...]``
    whose every dot lies in ``ctx``, checked in one tight pass (frames carry
    many small registers: the C-speed passes cost more on their fixed cost);
    None to have the full checks name what is wrong."""
    if len(flat) > _FEW or len(flat) % 3:
        return None
    vv, cloud = ctx.vv, ctx.cloud
    if len(flat) == 3:
        # One value (most registers): unpacked, without the loop's setup.
        replica, counter, value = flat
        if (
            type(replica) is str
            and replica
            and type(counter) is int
            and type(value) in _ATOMS
            and counter >= 1
            and (counter <= vv.get(replica, 0) or counter in cloud.get(replica, ()))
        ):
            return {(replica, counter): value}
        return None
    entries: dict[tuple[str, int], object] = {}
    prev_replica, prev_counter = "", 0
    it = iter(flat)
    for replica, counter, value in zip(it, it, it, strict=False):  # length checked above
        if not (
            type(replica) is str
            and replica
            and type(counter) is int
            and type(value) in _ATOMS
            and (replica > prev_replica or (replica == prev_replica and counter > prev_counter))
            and counter >= 1
            and (counter <= vv.get(replica, 0) or counter in cloud.get(replica, ()))
        ):
            return None
        entries[(replica, counter)] = value
        prev_replica, prev_counter = replica, counter
    return entries


def _model(ops: Sequence[Logged]) -> frozenset[object]:
    # The writes no other write observed.
    return frozenset(
        op.args[0]
        for op in ops
        if not any(other is not op and other.observed.contains(*op.dot) for other in ops)
    )


MVRegister.OPERATIONS = Operations(
    [Mutator("assign", lambda r, me, _, v: r.assign(v, me), (Arg("value", check_atom),))],
    _model,
    generate=lambda rng: ("assign", (rng.choice(SAMPLE_ATOMS),)),
)
