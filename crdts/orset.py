"""OR-Set: an add-wins observed-remove set without tombstones.

This is the optimized OR-Set of Bieniusa et al. (2012) in delta-state form
(Almeida, Shoker and Baquero, 2018): every live element carries the dots of the
adds that put it there, and the set carries a causal context of every dot it
has seen. A remove drops the element's *observed* dots and keeps nothing else;
a concurrent add carries a dot the remover never saw, so the add wins. A dot in
the context without an element is how "added, then removed" is remembered.

Join rule, for states ``(E1, C1)`` and ``(E2, C2)``: a dot survives if both
sides hold it, or one side holds it and the other side has not seen it.

Layout, chosen for speed (see PERFORMANCE.md): entries are kept *per origin
replica*, ``origin -> {element: counter}``, with a reverse index
``origin -> {counter: element}``. A full-state join of replicas that have not
seen each other's adds then copies whole dicts at C speed, a join of mostly
equal states touches only the items that differ (a dict-items set difference,
also at C speed), and a small delta touches only the elements it names or whose
dots its context covers. An element normally has one dot per origin; an
out-of-order join of deltas can leave it two from the same origin for a while,
which is stored as a frozenset and is the only slow path.

Beside them, an element index ``element -> origin`` (a tuple of origins for
an element that several origins' concurrent adds keep) says where each live
element's dots are, so that ``add``, ``remove``, ``in`` and ``len`` never
walk the origins: a set whose live elements came from 10,000 origins (every
incarnation of every node that ever added) answers as fast as one with a
single origin. A small join (a delta) updates the index dot by dot. A join
with a state of comparable size drops it instead: updating it would cost
more than the join, which copies and compares whole maps at C speed, while
an insert into a large dict costs a cache miss. Until something needs the
index again, ``len`` counts with one set union at C speed and ``in`` looks
in each origin's map while there are at most ``_SCAN_ORIGINS`` of them; an
update, a small join or ``in`` over more origins rebuilds the index, O(n) at
C speed, at most once per full-state join. A decoded state starts without
one too: a delta decoded from gossip is usually merged, never read.

Cost (n elements, r origins, d the size of the other state or delta, k the
origins whose concurrent adds an element carries, nearly always 1): ``add``,
``remove`` O(k) amortised; ``in``, ``len`` O(1) amortised; ``merge`` O(d) for
a delta, O(n) at C speed for full states; ``value`` O(n) at C speed. None of
them grows with r: the O(n + r) rebuild after a full-state join is paid once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import ClassVar, Generic, TypeAlias, TypeVar

from crdts._rename import check_rename, prune_by_renaming, rename_context
from crdts.base import (
    check_atom,
    check_replica,
    expect_atoms,
    expect_increasing,
    expect_list,
    expect_replica,
    expect_uints,
)
from crdts.dotcontext import CausalContext, context_of
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import SAMPLE_ATOMS, Arg, Logged, Mutator, Operations

__all__ = ["ORSet"]

T = TypeVar("T")

#: The counters of one element's dots from one origin: nearly always one.
Dots: TypeAlias = int | frozenset[int]

#: The origins holding dots of one element: nearly always one, otherwise a
#: tuple (of the few origins whose adds of it were concurrent): immutable, so
#: copies share it, and cheaper to build than a frozenset at these sizes.
Holders: TypeAlias = str | tuple[str, ...]


def _as_set(dots: Dots | None) -> frozenset[int]:
    if dots is None:
        return frozenset()
    if type(dots) is int:
        return frozenset((dots,))
    return dots  # type: ignore[return-value]


#: Without its index, ``in`` looks in each origin's map while there are at
#: most this many (a few lookups), and rebuilds the index beyond.
_SCAN_ORIGINS = 8

#: A join updates the index dot by dot while the other state holds at most
#: this many elements or a quarter of ours; a larger one drops the index.
_SMALL_JOIN = 64


def _holding(held: Holders, origin: str) -> Holders:
    """``held`` with ``origin`` among them. Cost: O(len(held))."""
    if type(held) is str:
        return held if held == origin else (held, origin)
    return held if origin in held else (*held, origin)


def _without(held: Holders, origin: str) -> Holders | None:
    """``held`` less ``origin`` (None when no origin is left); ``held``
    itself when ``origin`` is not among them. Cost: O(len(held))."""
    if type(held) is str:
        return None if held == origin else held
    if origin not in held:
        return held
    rest = tuple(o for o in held if o != origin)
    return rest[0] if len(rest) == 1 else rest


class ORSet(Generic[T]):
    """An add-wins set of ``str``, ``int`` or ``bytes`` values.

    >>> a: ORSet[str] = ORSet()
    >>> _ = a.add("x", "a"); _ = a.add("y", "a")
    >>> b = a.copy()
    >>> _ = a.remove("x")          # a removes the x it has seen ...
    >>> _ = b.add("x", "b")        # ... while b adds x again, concurrently
    >>> a.merge(b); sorted(a)      # the unobserved add wins
    ['x', 'y']
    >>> "x" in a, len(a)
    (True, 2)
    """

    __slots__ = ("_ctx", "_dropped", "_entries", "_index", "_len", "_owner")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "ORSet"
    #: The operations it takes and its sequential model (``crdts.operations``).
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._entries: dict[str, dict[T, Dots]] = {}
        self._owner: dict[str, dict[int, T]] = {}
        self._ctx = CausalContext()
        # element -> the origins holding its dots; None after a full-state
        # join until something needs it, and then _len caches the count.
        self._index: dict[T, Holders] | None = {}
        self._len: int | None = 0
        # The index a full-state join dropped, kept to be refilled: freeing a
        # large dict is a pass over its entries that would double the join.
        self._dropped: dict[T, Holders] | None = None

    # -- updates ---------------------------------------------------------------

    def add(self, element: T, replica: str) -> ORSet[T]:
        """Add ``element`` on behalf of ``replica``; return the delta.

        The delta holds the new dot and, in its context, the dots of ``element``
        it replaces, so it also carries the fact that those are gone.

        >>> s: ORSet[int] = ORSet(); s.add(7, "a")
        ORSet({'a': {7: 1}}, CausalContext(vv={'a': 1}, cloud={}))

        Cost: O(1) amortised, whatever the number of origins (O(k) to
        replace the dots of an element that k origins' concurrent adds hold).
        """
        check_atom(element)
        check_replica(replica)
        counter = self._ctx.next_counter(replica)
        replaced = self._pop(element)
        self._ctx.add(replica, counter)
        self._put(replica, element, counter)
        delta: ORSet[T] = ORSet()
        delta._ctx = CausalContext.from_dots(replaced)
        delta._ctx.add(replica, counter)
        delta._put(replica, element, counter)
        return delta

    def remove(self, element: T) -> ORSet[T]:
        """Remove ``element`` as far as this replica has seen it; return the delta.

        Removing an absent element changes nothing and returns an empty delta.

        >>> s: ORSet[str] = ORSet(); _ = s.add("x", "a")
        >>> s.remove("x"), len(s)
        (ORSet({}, CausalContext(vv={'a': 1}, cloud={})), 0)
        >>> s.remove("x")
        ORSet({}, CausalContext(vv={}, cloud={}))

        Cost: O(1) amortised, whatever the number of origins (O(k) for an
        element that k origins' concurrent adds hold).
        """
        check_atom(element)
        removed = self._pop(element)
        delta: ORSet[T] = ORSet()
        delta._ctx = CausalContext.from_dots(removed)
        return delta

    def _pop(self, element: T) -> list[tuple[str, int]]:
        """Drop every dot of ``element``; return them. Cost: O(its dots)."""
        held = self._indexed().pop(element, None)
        if held is None:
            return []
        dropped: list[tuple[str, int]] = []
        for origin in (held,) if type(held) is str else held:
            elements = self._entries[origin]
            owner = self._owner[origin]
            dots = elements.pop(element)
            if type(dots) is int:
                del owner[dots]
                dropped.append((origin, dots))
            else:
                for counter in dots:  # type: ignore[union-attr]
                    del owner[counter]
                    dropped.append((origin, counter))
            if not elements:
                del self._entries[origin], self._owner[origin]
        return dropped

    def _put(self, origin: str, element: T, counter: int) -> None:
        """Give ``element`` the dot ``(origin, counter)``."""
        elements = self._entries.get(origin)
        if elements is None:
            elements = self._entries[origin] = {}
            self._owner[origin] = {}
        held = elements.get(element)
        if held is None:
            elements[element] = counter
            index = self._index
            if index is None:
                self._len = None
            else:
                holders = index.setdefault(element, origin)
                if holders != origin:
                    index[element] = _holding(holders, origin)
        else:
            elements[element] = _as_set(held) | {counter}
        self._owner[origin][counter] = element

    def _indexed(self) -> dict[T, Holders]:
        """The element index, rebuilt first if a full-state join dropped it.

        Cost: O(1), or O(n + r) at C speed to rebuild, plus O(1) Python work
        per dot of an element that several origins hold.
        """
        index = self._index
        if index is None:
            index = self._dropped
            if index is None:
                index = {}
            else:
                index.clear()
                self._dropped = None
            # Holders of elements several origins hold are gathered in lists
            # and frozen once: growing a tuple origin by origin would be
            # quadratic in the origins of one element.
            crowded: dict[T, list[str]] = {}
            for origin, elements in self._entries.items():
                if index:
                    for element in index.keys() & elements.keys():
                        held = crowded.get(element)
                        if held is None:
                            # Still the single earlier holder: the update
                            # below overwrites only elements already crowded.
                            crowded[element] = [index[element], origin]  # type: ignore[list-item]
                        else:
                            held.append(origin)
                index.update(dict.fromkeys(elements, origin))
            for element, held in crowded.items():
                index[element] = tuple(held)
            self._index = index
        return index

    # -- join ------------------------------------------------------------------

    def merge(self, other: ORSet[T]) -> None:
        """Join ``other`` in place; ``other`` is unchanged.

        >>> a: ORSet[str] = ORSet(); b: ORSet[str] = ORSet()
        >>> _ = a.add("x", "a"); delta = b.add("y", "b")
        >>> a.merge(delta); a.merge(delta); sorted(a)
        ['x', 'y']

        Cost: O(size of ``other``) when it is a delta (plus, once after a
        full-state join, the O(n + r) rebuild of the element index); for full
        states, O(n) dict work at C speed plus O(1) Python work per item that
        differs. Neither grows with the number of origins.
        """
        if type(other) is not ORSet:
            raise TypeError(f"cannot merge {type(other).__name__} into ORSet")
        if other is self:
            return
        size = other._size()
        if size > _SMALL_JOIN and 4 * size > self._size():
            # Comparable sizes: the join runs at C speed, an index kept in
            # step would not. Dropped, and rebuilt once when needed.
            if self._index is not None:
                self._dropped, self._index = self._index, None
            self._len = None
        elif self._index is None:
            # A delta after a full-state join: from here on the index pays.
            self._indexed()
        theirs_ctx = other._ctx
        # Only origins where other holds entries can add; only origins whose
        # dots other has seen can remove.
        for origin in other._entries.keys() | (theirs_ctx.origins() & self._entries.keys()):
            self._merge_origin(origin, other)
        # Last: the entry rules above compare against the contexts as they were.
        self._ctx.merge(theirs_ctx)

    def _merge_origin(self, origin: str, other: ORSet[T]) -> None:
        # The join rule acts on dots, and a dot names one element, so only the
        # dots that one side holds and the other does not can change anything.
        mine = self._owner.get(origin)
        theirs = other._owner.get(origin)
        mine_ctx, theirs_ctx = self._ctx, other._ctx
        dropped: Iterable[int] = ()
        added: Iterable[int] = ()
        if not theirs:
            if not mine:
                return
            dropped = self._seen_by(mine, origin, theirs_ctx)
        elif not mine:
            if not mine_ctx.count(origin):
                # Nothing of this origin seen here: everything of theirs is new.
                adopted = self._entries[origin] = other._entries[origin].copy()
                self._owner[origin] = theirs.copy()
                if self._index is not None:
                    _index_into(self._index, origin, adopted)
                return
            added = [c for c in theirs if not mine_ctx.contains(origin, c)]
        elif theirs_ctx.count(origin) + len(theirs) < len(mine):
            # A delta: touch only the dots it holds or has seen.
            dropped = [c for c in theirs_ctx.dots(origin) if c in mine and c not in theirs]
            added = [c for c in theirs if c not in mine and not mine_ctx.contains(origin, c)]
        else:
            # Full states: set differences of the dot keys run at C speed.
            top, gaps = theirs_ctx.vv.get(origin, 0), theirs_ctx.cloud.get(origin, ())
            dropped = [c for c in mine.keys() - theirs.keys() if c <= top or c in gaps]
            top, gaps = mine_ctx.vv.get(origin, 0), mine_ctx.cloud.get(origin, ())
            added = [c for c in theirs.keys() - mine.keys() if c > top and c not in gaps]
        if dropped or added:
            self._apply(origin, dropped, added, theirs or {})

    @staticmethod
    def _seen_by(owner: dict[int, T], origin: str, ctx: CausalContext) -> list[int]:
        """The dots of ``origin`` in ``owner`` that ``ctx`` has seen."""
        if ctx.count(origin) < len(owner):
            return [c for c in ctx.dots(origin) if c in owner]
        top, gaps = ctx.vv.get(origin, 0), ctx.cloud.get(origin, ())
        return [c for c in owner if c <= top or c in gaps]

    def _apply(
        self, origin: str, dropped: Iterable[int], added: Iterable[int], theirs: dict[int, T]
    ) -> None:
        """Drop and add dots of ``origin``, keeping entries, reverse index and
        element index (if kept) in step."""
        elements = self._entries.setdefault(origin, {})
        owner = self._owner.setdefault(origin, {})
        index = self._index
        if index is None:
            self._len = None
        for c in dropped:
            element = owner.pop(c)
            held = elements[element]
            if held == c:
                del elements[element]
                if index is not None:
                    holders = index[element]
                    if holders == origin:
                        del index[element]
                    else:
                        index[element] = _without(holders, origin)  # type: ignore[assignment]
            else:
                left = _as_set(held) - {c}
                elements[element] = next(iter(left)) if len(left) == 1 else left
        for c in added:
            element = theirs[c]
            owner[c] = element
            present = elements.get(element)
            if present is None:
                elements[element] = c
                if index is not None:
                    holders = index.setdefault(element, origin)
                    if holders != origin:
                        index[element] = _holding(holders, origin)
            else:
                elements[element] = _as_set(present) | {c}
        if not elements:
            del self._entries[origin], self._owner[origin]

    def _size(self) -> int:
        """The number of elements, or an upper bound: O(1), or O(r) if
        neither the index nor the count is at hand."""
        if self._index is not None:
            return len(self._index)
        if self._len is not None:
            return self._len
        return sum(map(len, self._entries.values()))

    # -- reads -----------------------------------------------------------------

    def __contains__(self, element: object) -> bool:
        """Whether ``element`` is in the set. Cost: O(1) amortised, whatever
        the number of origins."""
        index = self._index
        try:
            if index is None:
                if len(self._entries) <= _SCAN_ORIGINS:
                    return any(element in elements for elements in self._entries.values())
                index = self._indexed()
            return element in index
        except TypeError:  # unhashable: never an element
            return False

    def __len__(self) -> int:
        """The number of elements. Cost: O(1), or O(n) at C speed once after
        a full-state join."""
        if self._index is not None:
            return len(self._index)
        if self._len is None:
            groups = list(self._entries.values())
            self._len = len(groups[0]) if len(groups) == 1 else len(set().union(*groups))
        return self._len

    def __iter__(self) -> Iterator[T]:
        """The elements, in no set order (iterate ``sorted(s)`` for one). Cost: O(n)."""
        return iter(self.value)

    @property
    def value(self) -> frozenset[T]:
        """The elements as a frozenset.

        >>> s: ORSet[str] = ORSet(); _ = s.add("x", "a"); s.value
        frozenset({'x'})

        Cost: O(n) at C speed.
        """
        if self._index is not None:
            return frozenset(self._index)
        return frozenset().union(*self._entries.values())

    @property
    def context(self) -> CausalContext:
        """A copy of the causal context: every dot this state has seen.

        >>> s: ORSet[str] = ORSet(); _ = s.add("x", "a"); _ = s.remove("x"); s.context
        CausalContext(vv={'a': 1}, cloud={})

        Cost: O(r + cloud).
        """
        return self._ctx.copy()

    def prune(self, removed: str, owner: str) -> int:
        """Rename ``removed``'s dots (a replica id that will never issue
        again) into a block of ``owner``'s above its highest, and return the
        block's base (``crdts.base.Prunable``, ``crdts._rename``): the
        elements, and what was seen and removed, are unchanged. Only
        ``owner`` may do this; every other replica then renames the same way
        with :meth:`cleanup` and the base.

        >>> s: ORSet[str] = ORSet(); _ = s.add("x", "a~1"); _ = s.add("y", "a~2")
        >>> _ = s.add("z", "a~1"); _ = s.remove("z")
        >>> s.prune("a~1", "a~2"), sorted(s)
        (1, ['x', 'y'])
        >>> s
        ORSet({'a~2': {'y': 1, 'x': 2}}, CausalContext(vv={'a~2': 3}, cloud={}))

        Cost: O(n log n) (through the payload).
        """
        return prune_by_renaming(self, removed, owner)

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Rename ``removed``'s dots into ``owner``'s at ``base``, as
        ``owner``'s :meth:`prune` did: what a replica does to its own state,
        and to states arriving late, once it has seen the pruning. Nothing
        is counted twice: renamed dots name the same adds. InvalidOperation,
        changing nothing, if a renamed dot would collide with one of
        ``owner``'s.

        >>> a: ORSet[str] = ORSet(); _ = a.add("x", "a~1"); b = a.copy()
        >>> base = a.prune("a~1", "a~2")
        >>> _ = b.remove("x")                   # concurrently: b removes the x it saw
        >>> b.cleanup("a~1", "a~2", base); a.merge(b); sorted(a)
        []

        Cost: O(n log n) (through the payload).
        """
        check_rename(removed, owner, base)
        if removed not in self._entries:
            # Only seen, never live here: the context alone moves, in
            # O(its dots) (a pass over the whole state per retired id would
            # make pruning many ids quadratic).
            self._ctx.rename(removed, owner, base)
            return
        ctx, entries = self.to_payload()
        assert isinstance(ctx, list) and isinstance(entries, list)
        if removed not in ctx[0::3]:
            return
        groups = dict(zip(entries[0::2], entries[1::2], strict=True))
        moving = groups.pop(removed, None)
        if moving is not None:
            assert isinstance(moving, list)
            held = groups.get(owner, [])
            assert isinstance(held, list)
            pairs = list(zip(held[0::2], held[1::2], strict=True))
            counters = {c for c, _ in pairs}
            renamed = [(base + c, e) for c, e in zip(moving[0::2], moving[1::2], strict=True)]
            if any(c in counters for c, _ in renamed):
                raise InvalidOperation(f"renamed dots of {removed!r} collide with {owner!r}'s")
            merged = sorted(pairs + renamed, key=lambda pair: pair[0])
            groups[owner] = [x for pair in merged for x in pair]
        flat: list[object] = []
        for origin in sorted(groups):
            flat += (origin, groups[origin])
        out: ORSet[T] = ORSet.from_payload(
            [rename_context(ctx, removed, owner, base), flat], self.FORMAT_VERSION
        )
        for name in ORSet.__slots__:
            setattr(self, name, getattr(out, name))

    def copy(self) -> ORSet[T]:
        """An independent copy.

        >>> s: ORSet[str] = ORSet(); t = s.copy(); _ = t.add("x", "a"); len(s), len(t)
        (0, 1)

        Cost: O(n) at C speed.
        """
        out: ORSet[T] = ORSet()
        out._entries = {origin: elements.copy() for origin, elements in self._entries.items()}
        out._owner = {origin: owner.copy() for origin, owner in self._owner.items()}
        out._ctx = self._ctx.copy()
        # The holders are str or tuple: immutable, so shared.
        out._index = None if self._index is None else self._index.copy()
        out._len = self._len
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not ORSet:
            return NotImplemented
        return self._entries == other._entries and self._ctx == other._ctx

    def __repr__(self) -> str:
        shown = {
            origin: {e: self._entries[origin][e] for _, e in sorted(owner.items())}
            for origin, owner in sorted(self._owner.items())
        }
        return f"ORSet({shown!r}, {self._ctx!r})"

    # -- wire ------------------------------------------------------------------

    def to_payload(self) -> list[object]:
        """``[context, [origin, [counter, element, ...], ...]]``, every list in
        canonical order (origins by id, dots by counter). Cost: O(n log n)."""
        entries: list[object] = []
        for origin in sorted(self._owner):
            entries += (origin, list(chain.from_iterable(sorted(self._owner[origin].items()))))
        return [self._ctx.to_payload(), entries]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> ORSet[T]:
        """Inverse of :meth:`to_payload`; raises DecodeError on anything else,
        including a dot outside the causal context."""
        parts = expect_list(payload, "ORSet")
        if len(parts) != 2:
            raise DecodeError("ORSet: expected [context, entries]")
        ctx = context_of(parts[0], "ORSet context")
        flat = expect_list(parts[1], "ORSet entries")
        if len(flat) == 2 and type(group := flat[1]) is list and len(group) == 2:
            # One origin with one dot (most deltas): checked in one
            # condition, without the slices and loops below (which name
            # what is wrong otherwise).
            origin, (counter, element) = flat[0], group
            if (
                type(origin) is str
                and origin
                and type(counter) is int
                and counter >= 1
                and type(element) in _ATOMS
                and (counter <= ctx.vv.get(origin, 0) or counter in ctx.cloud.get(origin, ()))
            ):
                out: ORSet[T] = cls.__new__(cls)
                out._entries = {origin: {element: counter}}
                out._owner = {origin: {counter: element}}
                out._ctx, out._dropped, out._index, out._len = ctx, None, None, None
                return out
        if len(flat) % 2:
            raise DecodeError("ORSet entries: expected origin/dots pairs")
        origins = flat[0::2]
        prev = ""  # below every non-empty str: one pass checks type, emptiness, order
        for item in origins:
            if type(item) is str and item > prev:
                prev = item
                continue
            for origin in origins:  # they raise, naming what is wrong
                expect_replica(origin, "ORSet entries")
            expect_increasing(origins, "ORSet entries")
        out = cls.__new__(cls)  # __init__ would build a context to drop
        out._entries, out._owner, out._ctx, out._dropped = {}, {}, ctx, None
        vv, cloud = ctx.vv, ctx.cloud
        for origin, group in zip(origins, flat[1::2], strict=True):
            if type(group) is list and len(group) == 2:
                # One dot (most deltas): checked inline, seen by the context
                # included; the general path below names what is wrong.
                counter, element = group
                if (
                    type(counter) is int
                    and counter >= 1
                    and type(element) in _ATOMS
                    and (counter <= vv.get(origin, 0) or counter in cloud.get(origin, ()))  # type: ignore[call-overload]
                ):
                    out._entries[origin] = {element: counter}  # type: ignore[index]
                    out._owner[origin] = {counter: element}  # type: ignore[index]
                    continue
            dots = expect_list(group, "ORSet entries")
            counters, elements = dots[0::2], dots[1::2]
            if not _few_dots(dots):
                if not dots or len(dots) % 2:
                    raise DecodeError("ORSet entries: expected non-empty counter/element pairs")
                expect_uints(counters, "ORSet dots", low=1)
                expect_increasing(counters, "ORSet dots")
                expect_atoms(elements, "ORSet elements")
            _check_seen(ctx, origin, counters)  # type: ignore[arg-type]
            owner: dict[int, T] = dict(zip(counters, elements, strict=True))  # type: ignore[arg-type]
            by_element: dict[T, Dots] = dict(zip(elements, counters, strict=True))  # type: ignore[arg-type]
            if len(by_element) != len(owner):  # some element has several dots here
                # Gather first, freeze once: growing a frozenset dot by dot is
                # quadratic in the dots of one element, which the input chooses.
                grouped: dict[T, list[int]] = {}
                for counter, element in owner.items():
                    grouped.setdefault(element, []).append(counter)
                by_element = {
                    element: found[0] if len(found) == 1 else frozenset(found)
                    for element, found in grouped.items()
                }
            out._entries[origin] = by_element  # type: ignore[index]
            out._owner[origin] = owner  # type: ignore[index]
        # Indexed when needed: a decoded delta is usually only merged.
        out._index = None
        out._len = None
        return out


def _index_into(index: dict[T, Holders], origin: str, elements: dict[T, Dots]) -> None:
    """Record ``origin`` among the holders of each of ``elements``.

    Cost: O(len(elements)) at C speed (a dict update), plus O(1) Python work
    per element already indexed.
    """
    # Find the elements other origins hold too before the update overwrites
    # their holders; the intersection walks the smaller side.
    shared = [(e, index[e]) for e in index.keys() & elements.keys()] if index else []
    index.update(dict.fromkeys(elements, origin))
    for element, held in shared:
        index[element] = _holding(held, origin)


#: Groups of up to this many items are checked in one tight pass (a delta
#: in a frame holds one or two dots per origin); longer ones at C speed.
_FEW = 16
_ATOMS = (str, int, bytes)


def _few_dots(dots: list[object]) -> bool:
    """Whether ``dots`` is a short, canonical ``[counter, element, ...]``:
    counters ints >= 1 in increasing order, elements atoms. False for a
    long one, or to have the full checks name what is wrong."""
    if not dots or len(dots) > _FEW or len(dots) % 2:
        return False
    prev = 0
    it = iter(dots)
    for counter, element in zip(it, it, strict=False):  # length checked above
        if not (type(counter) is int and counter > prev and type(element) in _ATOMS):
            return False
        prev = counter
    return True


def _check_seen(ctx: CausalContext, origin: str, counters: list[int]) -> None:
    top = ctx.vv.get(origin, 0)
    if counters[-1] > top and not ctx.cloud.get(origin, set()).issuperset(
        c for c in counters if c > top
    ):
        raise DecodeError(f"ORSet: a dot of {origin!r} lies outside the causal context")


def _model(ops: Sequence[Logged]) -> frozenset[object]:
    # Add-wins: an element is in iff some add of it was observed by no
    # remove of it.
    removes = [op for op in ops if op.kind == "remove"]
    return frozenset(
        op.args[0]
        for op in ops
        if op.kind == "add"
        and not any(r.args[0] == op.args[0] and r.observed.contains(*op.dot) for r in removes)
    )


_ELEMENT = (Arg("element", check_atom),)
ORSet.OPERATIONS = Operations(
    [
        Mutator("add", lambda s, me, _, x: s.add(x, me), _ELEMENT),
        Mutator("remove", lambda s, _me, _, x: s.remove(x), _ELEMENT),
    ],
    _model,
    generate=lambda rng: (rng.choice(["add", "add", "remove"]), (rng.choice(SAMPLE_ATOMS),)),
)
