"""OR-Map: an observed-remove map whose values are CRDTs (nested maps included).

Keys are add-wins, as in the OR-Set: every live key carries the dots of the
updates that put its value there, and the map carries a causal context of
every dot it has seen, so no tombstone is kept. A remove drops the key's
*observed* dots; an update made concurrently carries a dot the remover never
saw, so the key survives (Akka's ``ORMap``, riak_dt's ``riak_dt_map``, rust
``crdts``' ``Map``).

What a surviving value holds (the choice, docs/ormap.md): each update folds
every value the updater holds under the key into one and applies itself to
that, under a new dot (riak_dt's map does the same with a field's entries).
A key's value is the join of its surviving entries, so after a concurrent
remove and update it is *the updater's view plus its update*: the updates the
updater had seen, and those it had not seen but that other surviving updates
carry. A remove followed by a re-add starts from an empty value: what the
remover removed never comes back through a replica that held it, since the
remove's context drops it there too (the resurrection Akka's plain ``ORMap``
shows). This is TESTING.md's specification: "its value is the spec of the
value's type over the updates that the surviving key covers".

Inside a value, a replica acts under a *lineage id* ``"<replica>.<n>"``
(``n`` the dot of the update that started the lineage), not under its own
id: a value removed here may live on in a concurrent update elsewhere, and a
re-add that started counting again under the same id would collide with what
that value holds (an increment absorbed by a larger old slot, an OR-Set dot
naming two adds). A replica continues a lineage only while the value it
updates holds its latest update of the key (each entry records the latest
dot of every replica folded into it); otherwise it starts another. Values
therefore hold one slot per lineage, bounded by the concurrent writers, not
by the history.

Deltas are states: an update's delta holds the key's new entry (its whole
value) and, in its context, the dots it replaced; a remove's delta holds only
the dots it dropped. Values are never changed in place once stored, so
copies, deltas and merges share them.

Cost (n keys, e entries of a key, nearly always 1, |v| the size of a value):
``update`` O(e |v|) (a copy of the value); ``remove`` O(e); ``in``, ``len``
O(1); ``get`` O(e |v|) (a copy); ``merge`` O(size of the other) for a delta,
O(n) at C speed plus O(1) Python work per entry that differs for full
states; ``value`` O(n |v|).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from random import Random
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

from crdts._rename import check_rename, prune_by_renaming, rename_context
from crdts._slots import from_flat, to_flat
from crdts.base import (
    CRDT,
    Prunable,
    check_atom,
    check_replica,
    expect_atoms,
    expect_list,
    expect_replica,
    expect_uint,
)
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import Arg, Clock, Logged, Mutator, Operations, operations_of

__all__ = ["ORMap"]

K = TypeVar("K")
V = TypeVar("V", bound=CRDT)

Dot: TypeAlias = tuple[str, int]
#: One entry: the value an update left, and the latest dot of each replica
#: whose updates are folded into it. Both are never changed once stored.
Entry: TypeAlias = tuple[Any, dict[str, int]]

#: Items per entry in the payload: replica, counter, key, folded, tag, version, value.
_WIDTH = 7


class ORMap(Generic[K, V]):
    """An add-wins map from ``str``, ``int`` or ``bytes`` keys to CRDTs.

    >>> from crdts import GCounter
    >>> a: ORMap[str, GCounter] = ORMap()
    >>> _ = a.update("a", "hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> b = a.copy()
    >>> _ = a.remove("hits")                                           # a removes the key ...
    >>> _ = b.update("b", "hits", GCounter, lambda c, me: c.increment(me))  # ... b updates it
    >>> a.merge(b); a.value                                            # the update survives
    {'hits': 3}
    >>> "hits" in a, len(a), a.get("hits").value
    (True, 1, 3)
    """

    __slots__ = ("_ctx", "_entries", "_lineage", "_where")
    __hash__ = None  # type: ignore[assignment]  # mutable

    TYPE_TAG: ClassVar[str] = "ORMap"
    #: The operations it takes and its sequential model (``crdts.operations``):
    #: ``update(key, type name, operation, args)`` and ``remove(key)``.
    OPERATIONS: ClassVar[Operations]
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._ctx = CausalContext()
        # key -> {dot: (value, folded)}; a key is present iff it has entries.
        self._entries: dict[K, dict[Dot, Entry]] = {}
        # dot -> key, for every live dot: a delta's context names dots, and
        # finding the entries it drops must not walk the map.
        self._where: dict[Dot, K] = {}
        # key -> (replica, lineage id, dot counter of its latest update):
        # this replica's own memory of where it acts in each value. Not part
        # of the state (never compared or encoded); a replica without it
        # starts a new lineage, which is always safe.
        self._lineage: dict[K, tuple[str, str, int]] = {}

    # -- updates -------------------------------------------------------------------

    def update(
        self, replica: str, key: K, new: Callable[[], V], mutate: Callable[[V, str], object]
    ) -> ORMap[K, V]:
        """Apply ``mutate(value, actor)`` to the value under ``key`` on behalf
        of ``replica`` (an empty ``new()`` if the key is absent) and return
        the delta. ``actor`` is the id the value's own mutators take (the
        replica's lineage id in this value, see the module docstring).

        If ``mutate`` raises, or the key holds a value of another type,
        nothing changes: the value is updated on a copy.

        >>> from crdts import GCounter, ORSet
        >>> m: ORMap[str, ORSet[str]] = ORMap()
        >>> delta = m.update("a", "tags", ORSet, lambda s, me: s.add("red", me))
        >>> sorted(delta.get("tags"))
        ['red']
        >>> m.update("a", "tags", GCounter, lambda c, me: c.increment(me))
        Traceback (most recent call last):
        ...
        crdts.errors.InvalidOperation: key 'tags' holds a ORSet, not a GCounter

        Cost: O(e |v|): the entries are joined into a copy, which ``mutate``
        changes.
        """
        check_replica(replica)
        check_atom(key)
        held = self._entries.get(key)
        fresh = new()
        kind = type(fresh)
        value: Any = fresh
        folded: dict[str, int] = {}
        if held:
            same = [v for v, _ in held.values() if type(v) is kind]
            if not same:
                shown = type(next(iter(held.values()))[0]).__name__
                raise InvalidOperation(f"key {key!r:.40} holds a {shown}, not a {kind.__name__}")
            value = same[0].copy()
            for other in same[1:]:
                value.merge(other)
            for _, seen in held.values():
                for writer, counter in seen.items():
                    if counter > folded.get(writer, 0):
                        folded[writer] = counter
        counter = self._ctx.next_counter(replica)
        memory = self._lineage.get(key)
        if (
            memory is not None
            and memory[0] == replica
            and held
            and folded.get(replica, 0) >= memory[2]
        ):
            actor = memory[1]
        else:
            actor = f"{replica}.{counter}"
        mutate(value, actor)
        if type(value) is not kind:  # pragma: no cover - a mutator cannot change a type
            raise InvalidOperation(f"the update of {key!r:.40} changed its value's type")
        folded[replica] = counter
        dot = (replica, counter)
        entry: Entry = (value, folded)
        delta: ORMap[K, V] = ORMap()
        delta._ctx = CausalContext.from_dots(held or ())
        delta._ctx.add(*dot)
        delta._entries[key] = {dot: entry}
        delta._where[dot] = key
        # Commit: nothing above changed self.
        if held:
            for old in held:
                del self._where[old]
        self._entries[key] = {dot: entry}
        self._where[dot] = key
        self._ctx.add(*dot)
        self._lineage[key] = (replica, actor, counter)
        return delta

    def remove(self, key: K) -> ORMap[K, V]:
        """Remove ``key`` as far as this replica has seen it; return the delta.

        A concurrent update of the key, which this replica has not seen,
        survives the remove. Removing an absent key changes nothing and
        returns an empty delta.

        >>> from crdts import GCounter
        >>> m: ORMap[str, GCounter] = ORMap()
        >>> _ = m.update("a", "n", GCounter, lambda c, me: c.increment(me))
        >>> m.remove("n"), len(m)
        (ORMap({}, CausalContext(vv={'a': 1}, cloud={})), 0)

        Cost: O(e).
        """
        check_atom(key)
        held = self._entries.pop(key, None)
        delta: ORMap[K, V] = ORMap()
        if held:
            for dot in held:
                del self._where[dot]
            delta._ctx = CausalContext.from_dots(held)
        self._lineage.pop(key, None)
        return delta

    # -- join ----------------------------------------------------------------------

    def merge(self, other: ORMap[K, V]) -> None:
        """Join ``other`` in place; ``other`` is unchanged (its values are
        shared: stored values are never changed).

        >>> from crdts import GCounter
        >>> a: ORMap[str, GCounter] = ORMap(); b: ORMap[str, GCounter] = ORMap()
        >>> _ = a.update("a", "x", GCounter, lambda c, me: c.increment(me))
        >>> delta = b.update("b", "x", GCounter, lambda c, me: c.increment(me, 2))
        >>> a.merge(delta); a.merge(delta); a.value         # concurrent entries join
        {'x': 3}

        Cost: O(size of ``other``) for a delta; for full states O(n) set
        work at C speed plus O(1) Python work per entry that differs.
        """
        if type(other) is not ORMap:
            raise TypeError(f"cannot merge {type(other).__name__} into ORMap")
        if other is self:
            return
        mine, theirs = self._where, other._where
        mine_ctx, theirs_ctx = self._ctx, other._ctx
        # A dot I hold that they have seen but do not hold was removed or
        # replaced there. Look from the smaller side: a delta's few dots, or
        # my live dots against a large context.
        seen = sum(theirs_ctx.count(r) for r in theirs_ctx.origins())
        if seen <= len(mine):
            dropped = [
                dot
                for replica in theirs_ctx.origins()
                for dot in ((replica, c) for c in theirs_ctx.dots(replica))
                if dot in mine and dot not in theirs
            ]
        else:
            dropped = [dot for dot in mine.keys() - theirs.keys() if theirs_ctx.contains(*dot)]
        # A dot they hold that I have neither held nor seen is new here.
        if len(theirs) < len(mine):
            added = [d for d in theirs if d not in mine and not mine_ctx.contains(*d)]
        else:
            added = [d for d in theirs.keys() - mine.keys() if not mine_ctx.contains(*d)]
        emptied = []
        for dot in dropped:
            key = mine.pop(dot)
            entries = self._entries[key]
            del entries[dot]
            if not entries:
                del self._entries[key]
                emptied.append(key)
        for dot in added:
            key = theirs[dot]
            into = self._entries.get(key)
            if into is None:
                into = self._entries[key] = {}
            into[dot] = other._entries[key][dot]
            mine[dot] = key
        for key in emptied:
            if key not in self._entries:  # (a replaced entry leaves its key)
                self._lineage.pop(key, None)
        mine_ctx.merge(theirs_ctx)

    # -- reads ---------------------------------------------------------------------

    def _joined(self, key: K) -> Any:
        """The value under ``key``, possibly shared (do not change it)."""
        entries = self._entries.get(key)
        if not entries:
            return None
        if len(entries) == 1:
            return next(iter(entries.values()))[0]
        values = [v for v, _ in entries.values()]
        # Concurrent updates with values of different types: the type with
        # the greatest tag is shown (the same on every replica); the next
        # update of that type replaces the others.
        tag = max(v.TYPE_TAG for v in values)
        chosen = sorted(
            (dot for dot, (v, _) in entries.items() if tag == v.TYPE_TAG)
        )
        out = entries[chosen[0]][0].copy()
        for dot in chosen[1:]:
            out.merge(entries[dot][0])
        return out

    def get(self, key: K) -> V | None:
        """A copy of the value under ``key``, None if absent (update it
        through :meth:`update`, not through the copy).

        >>> from crdts import GCounter
        >>> m: ORMap[str, GCounter] = ORMap(); m.get("n") is None
        True

        Cost: O(e |v|).
        """
        try:
            value = self._joined(key)
        except TypeError:  # unhashable: never a key
            return None
        if value is None:
            return None
        if len(self._entries[key]) == 1:
            value = value.copy()
        out: V = value
        return out

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present. Cost: O(1)."""
        try:
            return key in self._entries
        except TypeError:
            return False

    def __len__(self) -> int:
        """The number of keys. Cost: O(1)."""
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys, in no set order. Cost: O(n)."""
        return iter(list(self._entries))

    @property
    def value(self) -> dict[K, object]:
        """Each key's value read as its type's ``value``, as a new dict.

        >>> from crdts import GCounter, ORSet
        >>> m: ORMap[str, ORMap[str, GCounter]] = ORMap()
        >>> _ = m.update("a", "p", ORMap, lambda inner, me: inner.update(
        ...     me, "visits", GCounter, lambda c, me2: c.increment(me2)))
        >>> m.value
        {'p': {'visits': 1}}

        Cost: O(n |v|).
        """
        return {key: self._joined(key).value for key in self._entries}

    @property
    def context(self) -> CausalContext:
        """A copy of the causal context: every dot this map has seen.

        Cost: O(r + cloud).
        """
        return self._ctx.copy()

    # -- pruning -------------------------------------------------------------------

    def prune(self, removed: str, owner: str) -> int:
        """Rename ``removed``'s dots (a replica id that will never issue
        again) into a block of ``owner``'s above its highest, and return the
        block's base (``crdts.base.Prunable``, ``crdts._rename``): the keys
        and values are unchanged. Only ``owner`` may do this; every other
        replica renames the same way with :meth:`cleanup` and the base.
        The lineage ids ``removed`` acted under inside values are renamed
        with the dots that started them, through each value type's own
        prune (docs/ormap.md, "Pruning").

        >>> from crdts import GCounter
        >>> m: ORMap[str, GCounter] = ORMap()
        >>> _ = m.update("a~1", "n", GCounter, lambda c, me: c.increment(me))
        >>> m.prune("a~1", "a~2"), m.context, m.value
        (0, CausalContext(vv={'a~2': 1}, cloud={}), {'n': 1})
        >>> m.get("n")                          # the lineage "a~1.1" inside, renamed
        GCounter({'a~2.1': 1})

        Cost: O(n log n + size of the values holding ``removed``'s lineages).
        """
        return prune_by_renaming(self, removed, owner)

    def cleanup(self, removed: str, owner: str, base: int) -> None:
        """Rename ``removed``'s dots into ``owner``'s at ``base``, as
        ``owner``'s :meth:`prune` did: a remove that observed a renamed dot
        still removes its entry. InvalidOperation, changing nothing, if a
        renamed dot would collide with one of ``owner``'s.

        >>> from crdts import GCounter
        >>> a: ORMap[str, GCounter] = ORMap()
        >>> _ = a.update("a~1", "n", GCounter, lambda c, me: c.increment(me)); b = a.copy()
        >>> base = a.prune("a~1", "a~2")
        >>> _ = b.remove("n")                   # concurrently: b removes the n it saw
        >>> b.cleanup("a~1", "a~2", base); a.merge(b); a.value
        {}

        Cost: O(n log n + size of the values holding ``removed``'s lineages).
        """
        check_rename(removed, owner, base)
        # Lineages continue only on a proof that a renaming could forge.
        self._lineage.clear()
        # (A value holds a lineage of ``removed`` only if its entry folds one
        # of ``removed``'s updates, so ``folded`` tells where to look.)
        live = any(
            replica == removed or removed in folded
            for entries in self._entries.values()
            for (replica, _), (_, folded) in entries.items()
        )
        if not live:
            self._ctx.rename(removed, owner, base)  # only seen, never live here
            return
        ctx, flat = self.to_payload()
        assert isinstance(ctx, list) and isinstance(flat, list)
        rows = [flat[i : i + _WIDTH] for i in range(0, len(flat), _WIDTH)]
        taken = {(r, c) for r, c, *_ in rows}
        for row in rows:
            seen = from_flat(row[3], "ORMap folded")
            if removed in seen:
                row[6] = _renamed_lineages(
                    self._entries[row[2]][(row[0], row[1])][0], row[6], removed, owner, base
                )
            if row[0] == removed:
                row[0], row[1] = owner, base + row[1]
                if (owner, row[1]) in taken:
                    raise InvalidOperation(
                        f"renamed dots of {removed!r} collide with {owner!r}'s"
                    )
            if removed in seen:
                moved = base + seen.pop(removed)
                seen[owner] = max(seen.get(owner, 0), moved)
                row[3] = to_flat(seen)
        rows.sort(key=lambda row: (row[0], row[1]))
        out: ORMap[K, V] = ORMap.from_payload(
            [rename_context(ctx, removed, owner, base), [x for row in rows for x in row]],
            self.FORMAT_VERSION,
        )
        self._ctx, self._entries, self._where = out._ctx, out._entries, out._where

    # -- copies and equality ---------------------------------------------------------

    def copy(self) -> ORMap[K, V]:
        """An independent copy (stored values are shared: they never change).

        >>> from crdts import GCounter
        >>> m: ORMap[str, GCounter] = ORMap(); c = m.copy()
        >>> _ = c.update("a", "n", GCounter, lambda g, me: g.increment(me)); len(m), len(c)
        (0, 1)

        Cost: O(n) at C speed.
        """
        out: ORMap[K, V] = ORMap()
        out._ctx = self._ctx.copy()
        out._entries = {key: entries.copy() for key, entries in self._entries.items()}
        out._where = self._where.copy()
        out._lineage = self._lineage.copy()
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not ORMap:
            return NotImplemented
        return self._entries == other._entries and self._ctx == other._ctx

    def __repr__(self) -> str:
        shown = {
            self._where[dot]: self._entries[self._where[dot]][dot][0] for dot in sorted(self._where)
        }
        return f"ORMap({shown!r}, {self._ctx!r})"

    # -- wire ----------------------------------------------------------------------

    def to_payload(self) -> list[object]:
        """``[context, [replica, counter, key, folded, tag, version, value, ...]]``:
        one flat array of seven items per entry, in dot order (a dot names one
        entry, so the order is total whatever the keys' kinds); ``folded`` is
        ``[replica, counter, ...]`` in replica order and the value is its
        type's envelope, spread. Cost: O(n log n + size of the values)."""
        flat: list[object] = []
        for dot in sorted(self._where):
            key = self._where[dot]
            value, folded = self._entries[key][dot]
            flat += (
                dot[0], dot[1], key, to_flat(folded),
                value.TYPE_TAG, value.FORMAT_VERSION, value.to_payload(),
            )
        return [self._ctx.to_payload(), flat]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> ORMap[K, V]:
        """Inverse of :meth:`to_payload` for untrusted input; raises
        DecodeError on anything else: a dot outside the causal context, a
        value of an unregistered type or format version, entries out of
        order, an entry whose ``folded`` does not hold its own dot."""
        from crdts import codec  # (codec imports this module to register it)

        types = codec.registered()
        parts = expect_list(payload, "ORMap")
        if len(parts) != 2:
            raise DecodeError("ORMap: expected [context, entries]")
        ctx = CausalContext.from_payload(parts[0], "ORMap context")
        flat = expect_list(parts[1], "ORMap entries")
        if len(flat) % _WIDTH:
            raise DecodeError(f"ORMap entries: expected groups of {_WIDTH} items")
        out: ORMap[K, V] = cls()
        out._ctx = ctx
        last: Dot | None = None
        for i in range(0, len(flat), _WIDTH):
            replica, counter, key, raw_folded, tag, value_version, value_payload = flat[
                i : i + _WIDTH
            ]
            dot = (
                expect_replica(replica, "ORMap dot"),
                expect_uint(counter, "ORMap dot", low=1),
            )
            if last is not None and dot <= last:
                raise DecodeError("ORMap entries: dots not in strictly increasing order")
            last = dot
            if not ctx.contains(*dot):
                raise DecodeError("ORMap: a dot lies outside the causal context")
            expect_atoms([key], "ORMap keys")
            folded = from_flat(raw_folded, "ORMap folded")
            # (Above it only where a pruning renamed a retired id's dots.)
            if folded.get(dot[0], 0) < dot[1]:
                raise DecodeError("ORMap folded: an entry does not fold its own dot")
            kind = types.get(tag) if type(tag) is str else None
            if kind is None:
                raise DecodeError(f"ORMap: unknown value type {tag!r:.40}")
            if type(value_version) is not int or not 1 <= value_version <= kind.FORMAT_VERSION:
                raise DecodeError(f"ORMap: {tag} values have no version {value_version!r:.20}")
            try:
                value = kind.from_payload(value_payload, value_version)
            except DecodeError:
                raise
            except Exception as exc:  # a registered type's own checks failed unexpectedly
                raise DecodeError(f"ORMap: {tag} value: invalid payload: {exc!r:.200}") from exc
            atom: Any = key
            entries = out._entries.get(atom)
            if entries is None:
                entries = out._entries[atom] = {}
            entries[dot] = (value, folded)
            out._where[dot] = atom
        return out


def _renamed_lineages(value: Any, payload: object, removed: str, owner: str, base: int) -> object:
    """``value``'s payload with every lineage ``"<removed>.<n>"`` it holds
    renamed ``"<owner>.<base + n>"``, through the value type's own
    :meth:`prune` (``crdts.base.Prunable``): the map renames the dot ``n``
    that started the lineage to ``base + n`` the same way, so the new id
    names a lineage nothing else acts under (the owner issues its dots above
    the block, and its lineage memory is cleared), and folding into it is a
    pure rename: the value is unchanged, and every replica, renaming the same
    stored value the same way, gets the same bytes. Nested maps carry it
    down through their own prune. A type that is not Prunable keeps its ids.
    Cost: O(|v|) to find the lineages, plus the value's prune per lineage."""
    if not isinstance(value, Prunable):
        return payload
    prefix = removed + "."
    found: set[int] = set()
    stack = [payload]
    while stack:  # (iterative: payload depth is bounded by the codec, not trusted here)
        item = stack.pop()
        if type(item) is list:
            stack.extend(item)
        elif type(item) is str and item.startswith(prefix):
            rest = item[len(prefix) :]
            # Exactly a lineage id: "r.5", not "r.5.2" (a nested map's own
            # lineage, renamed by that map) nor an element that looks alike.
            if rest.isascii() and rest.isdigit() and str(int(rest)) == rest:
                found.add(int(rest))
    if not found:
        return payload
    out = value.copy()  # (stored values never change)
    for n in sorted(found):
        out.prune(f"{prefix}{n}", f"{owner}.{base + n}")
    return out.to_payload()


# -- the sequential specification -----------------------------------------------------


class _Seen:
    """The operations an update's value had folded in, as a model asks of
    ``observed``: ``contains(writer, counter)``."""

    __slots__ = ("dots",)

    def __init__(self, dots: set[Dot]) -> None:
        self.dots = dots

    def contains(self, writer: str, counter: int) -> bool:
        return (writer, counter) in self.dots


class _ValueOperation:
    """An update of a map as an update of its key's value, for the value's model."""

    __slots__ = ("args", "delta", "dot", "key", "kind", "observed")

    def __init__(self, op: Any, observed: _Seen) -> None:
        key, _, kind, args = op.args
        self.key, self.kind, self.args = key, kind, tuple(args)
        self.dot: Dot = op.dot
        self.observed = observed
        # The value the update left (an LWW model reads its write from it).
        delta = getattr(op, "delta", None)
        self.delta = None if delta is None else delta._joined(key)


def model(ops: Any, value_model: Callable[[str, list[Any]], object]) -> dict[object, object]:
    """The sequential specification (TESTING.md) of a map over the logged
    operations that survived, in log order: ``("update", (key, type name,
    operation, args))`` and ``("remove", (key,))``, each with its ``dot`` and
    what it ``observed`` (``observed.contains(writer, counter)``).

    An operation *held* the updates of its key that it observed and that no
    operation it observed had held (those were replaced or removed before
    it). An update *covers* itself and what the updates it held cover. A key
    is present iff some update of it was held by no operation; its value is
    ``value_model(type name, updates)`` over the updates the present ones
    cover, each seen by its value's model as the value operation, having
    observed what the updates it held cover.

    >>> class Op:
    ...     def __init__(self, kind, args, dot, seen):
    ...         self.kind, self.args, self.dot = kind, args, dot
    ...         self.observed = _Seen(set(seen))
    >>> total = lambda type_name, ops: sum(op.args[0] for op in ops)
    >>> a1 = Op("update", ("n", "GCounter", "increment", [1]), ("a", 1), [])
    >>> rm = Op("remove", ("n",), ("b", 1), [("a", 1)])             # saw a1
    >>> a2 = Op("update", ("n", "GCounter", "increment", [2]), ("a", 2), [("a", 1)])
    >>> model([a1, rm], total), model([a1, rm, a2], total)     # a2 survives, with a1
    ({}, {'n': 3})

    Cost: O(u^2) per key over its u operations (it is a test oracle).
    """
    by_key: dict[object, list[Any]] = {}
    for op in ops:
        by_key.setdefault(op.args[0], []).append(op)
    out: dict[object, object] = {}
    for key, key_ops in by_key.items():
        held: list[set[int]] = []
        covers: dict[int, set[int]] = {}
        for i, op in enumerate(key_ops):
            seen = [j for j in range(i) if op.observed.contains(*key_ops[j].dot)]
            gone = set().union(*(held[j] for j in seen))
            held.append({j for j in seen if key_ops[j].kind == "update" and j not in gone})
            if op.kind == "update":
                covers[i] = {i}.union(*(covers[j] for j in held[i]))
        gone = set().union(*held)
        live = [i for i in covers if i not in gone]
        if not live:
            continue
        covered = sorted(set().union(*(covers[i] for i in live)))
        values = []
        for i in covered:
            folded = set().union(*(covers[j] for j in held[i]))
            values.append(_ValueOperation(key_ops[i], _Seen({key_ops[j].dot for j in folded})))
        out[key] = value_model(key_ops[covered[-1]].args[1], values)
    return out


# -- the operation table ----------------------------------------------------------------


def _value_model(type_name: str, ops: list[Any]) -> object:
    return operations_of(type_name)[1].model(ops)


def _model(ops: Sequence[Logged]) -> dict[object, object]:
    return model(ops, _value_model)


def _check_type(type_name: object) -> str:
    # A registered type with an operation table: InvalidOperation otherwise.
    operations_of(type_name)
    assert isinstance(type_name, str)
    return type_name


def _check_name(name: object) -> str:
    if type(name) is not str:
        raise InvalidOperation(f"an operation's name is a str, not {name!r:.40}")
    return name


def _check_args(args: object) -> list[object]:
    if type(args) not in (list, tuple):
        raise InvalidOperation(f"an operation's arguments are a list, not {args!r:.40}")
    out: list[object] = list(args)  # type: ignore[call-overload]
    return out


def _update(
    state: ORMap[Any, Any], replica: str, clock: Clock, *operation: Any
) -> ORMap[Any, Any]:
    # The value's own table checks its operation and applies it, on the copy
    # the map hands it: a refusal leaves the map as it was.
    key, type_name, name, args = operation
    cls, table = operations_of(type_name)
    return state.update(
        replica, key, cls, lambda value, actor: table.apply(value, actor, name, args, clock)
    )


#: A few keys, one type each, so that generated updates and removes meet.
_GENERATED = (("c", "GCounter"), ("s", "ORSet"), ("m", "ORMap"))


def _generate(rng: Random) -> tuple[str, tuple[Any, ...]]:
    key, type_name = rng.choice(_GENERATED)
    if rng.random() < 0.2:
        return "remove", (key,)
    if type_name == "ORMap":  # one level down, of counters (no deeper)
        inner = rng.choice(["p", "q"])
        if rng.random() < 0.2:
            return "update", (key, type_name, "remove", [inner])
        name, args = operations_of("GCounter")[1].random(rng)
        return "update", (key, type_name, "update", [inner, "GCounter", name, list(args)])
    name, args = operations_of(type_name)[1].random(rng)
    return "update", (key, type_name, name, list(args))


_KEY = Arg("key", check_atom)
ORMap.OPERATIONS = Operations(
    [
        Mutator(
            "update",
            _update,
            (_KEY, Arg("type", _check_type), Arg("operation", _check_name),
             Arg("args", _check_args, [])),
        ),
        Mutator("remove", lambda m, _me, _, key: m.remove(key), (_KEY,)),
    ],
    _model,
    generate=_generate,
)
