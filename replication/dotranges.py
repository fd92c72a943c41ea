"""Per-key dot ranges with predecessor links: which operations a key's state
(or a delta of it) reflects, in O(writers) space whatever the history.

An operation has a *dot* ``(writer, n)``: ``n`` counts every operation of
that writer, on any key, so dots are unique across the keyspace (the
snapshot checker, the operation log and Mattern's cut test rely on that).
When updates to different keys interleave, one key's dots are sparse
(a:1, a:11, a:21, ...); kept as a set they grow with every operation. But
the operations of one writer *on one key* are totally ordered, so a key
only needs, per writer, a range of that order:

``writer -> (lo, lo_dot, hi, hi_dot)``: the writer's operations on this key
number ``lo + 1`` to ``hi`` (the ``i``-th is the ``i``-th operation that
writer made on this key), and ``hi_dot`` is the dot counter of the ``hi``-th,
``lo_dot`` that of the ``lo``-th (its *predecessor link*; 0 when ``lo`` is 0).
Their dots are exactly the writer's dots on this key in ``(lo_dot, hi_dot]``.

A key's whole bookkeeping has ``lo == 0`` for every writer ("the first
``hi``"); a delta covers a later stretch. Two stretches of one writer join
into one exactly when they touch (``lo2 <= hi1``); a delta *follows* a key's
bookkeeping when each of its stretches starts at or below what the key holds,
so joining it leaves no hole. Counting per writer also makes the replica-wide
clock checkable: if a replica holds ``count`` operations of a writer and the
highest dot among them is ``count``, it holds exactly that writer's first
``count`` operations (see ``replication.replicator``).

>>> key = DotRanges()
>>> key.add("a", 1); key.add("a", 11); key            # a's 1st and 2nd ops on this key
DotRanges({'a': (0, 0, 2, 11)})
>>> delta = key.successor("a", 21); delta              # a's 3rd, dot 21
DotRanges({'a': (2, 11, 3, 21)})
>>> delta.follows(key), delta.contains("a", 11), delta.contains("a", 21)
(True, False, True)
>>> key.merge(delta); key.count("a"), key.top("a")
(3, 21)

Pruning (docs/pruning.md). When a writer can never issue again and every
member holds all its operations, a live owner folds them into one operation
of its own on each key (``crdts.base.Prunable``). The key's bookkeeping then
drops the writer's stretch and keeps a *marker* ``writer -> (hi, hi_dot,
owner, base)``: its first ``hi`` operations on this key (up to dot
``hi_dot``) are counted through ``owner`` (``base``: where the owner's state
renamed the writer's dots, for the dotted types). A replica that merges a
marker drops its own stretch of that writer (and cleans the state the same
way), and strips the writer from any stretch that arrives later and the
marker covers. Markers are not operations: the questions above look at
stretches only, and markers are dropped after a dissemination period. On
the wire the markers are one last array, ``[writer, hi, hi_dot, owner,
base, ...]`` in writer order, present only when there are some.

>>> _ = key.strip("a"); key.mark("a", 3, 21, "b", 0); key, key.count("a")
(DotRanges({}, pruned={'a': (3, 21, 'b', 0)}), 0)
>>> late = DotRanges.whole({"a": (2, 11)}); key.covers(late, "a")
True

Cost: O(writers) for every operation that looks at all spans, O(1) per writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import cast

from crdts.base import (
    MAX_UINT,
    expect_increasing,
    expect_list,
    expect_replica,
    expect_uint,
    share,
    share_at_c_speed,
)
from crdts.errors import DecodeError

__all__ = ["DotRanges", "Marker", "Span"]

#: ``(lo, lo_dot, hi, hi_dot)``, as described in the module docstring.
Span = tuple[int, int, int, int]
#: ``(hi, hi_dot, owner, base)``: a pruning marker (the module docstring).
Marker = tuple[int, int, str, int]

#: The markers of ranges that have none (nearly all), shared: an empty dict
#: per key cost 64 bytes. Read-only, so a mutation that forgot to copy
#: raises instead of marking every key (:meth:`DotRanges.mark` copies).
_NO_MARKERS = cast("dict[str, Marker]", MappingProxyType({}))


class DotRanges:
    """One contiguous stretch of each writer's operations on one key.

    >>> whole = DotRanges.whole({"a": (2, 9), "b": (1, 4)})
    >>> whole.is_whole(), whole.count("a"), whole.contains("b", 4)
    (True, 2, True)
    """

    __slots__ = ("pruned", "spans")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(
        self,
        spans: Mapping[str, Span] | None = None,
        pruned: Mapping[str, Marker] | None = None,
    ) -> None:
        self.spans: dict[str, Span] = {} if spans is None else dict(spans)
        #: writer -> (hi, hi_dot, owner, base): its first ``hi`` operations on
        #: the key were pruned into ``owner`` (see the module docstring).
        self.pruned: dict[str, Marker] = dict(pruned) if pruned else _NO_MARKERS

    @classmethod
    def whole(cls, tops: Mapping[str, tuple[int, int]]) -> DotRanges:
        """A key's whole bookkeeping from ``{writer: (count, dot of the last)}``.

        >>> DotRanges.whole({"a": (1, 5)})
        DotRanges({'a': (0, 0, 1, 5)})

        Cost: O(writers).
        """
        return cls({w: (0, 0, hi, hi_dot) for w, (hi, hi_dot) in tops.items()})

    # -- questions -----------------------------------------------------------------

    def contains(self, replica: str, counter: int) -> bool:
        """Whether the operation with dot ``(replica, counter)``, *an operation
        on this key*, is covered. (Dots of other keys fall in the same ranges
        of counters: ask the bookkeeping of the operation's own key.)

        >>> DotRanges({"a": (1, 3, 2, 7)}).contains("a", 3)
        False

        Cost: O(1).
        """
        span = self.spans.get(replica)
        return span is not None and span[1] < counter <= span[3]

    def count(self, replica: str) -> int:
        """How many operations of ``replica`` are covered.

        >>> DotRanges({"a": (1, 3, 4, 9)}).count("a"), DotRanges().count("a")
        (3, 0)

        Cost: O(1).
        """
        span = self.spans.get(replica)
        return 0 if span is None else span[2] - span[0]

    def held(self, replica: str) -> int:
        """``hi`` for ``replica``: with ``lo`` 0, how many of its operations on
        this key are held (0 if none).

        >>> DotRanges({"a": (1, 3, 4, 9)}).held("a")
        4

        Cost: O(1).
        """
        span = self.spans.get(replica)
        return 0 if span is None else span[2]

    def top(self, replica: str) -> int:
        """The dot counter of ``replica``'s last covered operation, 0 if none.

        >>> DotRanges({"a": (1, 3, 4, 9)}).top("a"), DotRanges().top("a")
        (9, 0)

        Cost: O(1).
        """
        span = self.spans.get(replica)
        return 0 if span is None else span[3]

    def origins(self) -> set[str]:
        """The writers with at least one covered operation.

        >>> sorted(DotRanges.whole({"b": (1, 2), "a": (1, 1)}).origins())
        ['a', 'b']

        Cost: O(writers).
        """
        return set(self.spans)

    def items(self) -> Iterator[tuple[str, Span]]:
        """``(writer, span)`` pairs.

        >>> list(DotRanges.whole({"a": (1, 1)}).items())
        [('a', (0, 0, 1, 1))]

        Cost: O(1) per pair.
        """
        return iter(self.spans.items())

    def claims(self) -> object:
        """The operations covered and the markers, as a hashable value: equal
        ranges, equal claims. A key's state (or a logged delta) is exactly the
        join of what its ranges claim, so this names a state's bytes.

        >>> DotRanges.whole({"a": (3, 9)}).claims() == DotRanges({"a": (0, 0, 3, 9)}).claims()
        True

        Cost: O(writers).
        """
        held = frozenset(self.spans.items())
        return (held, frozenset(self.pruned.items())) if self.pruned else held

    def is_whole(self) -> bool:
        """Whether every stretch starts at the writer's first operation on the
        key (a key's bookkeeping, or a whole state), not a delta's.

        >>> DotRanges.whole({"a": (1, 1)}).is_whole(), DotRanges().successor("a", 3).is_whole()
        (True, True)

        Cost: O(writers).
        """
        return all(span[0] == 0 for span in self.spans.values())

    def issubset(self, other: DotRanges) -> bool:
        """Whether every operation covered here is covered by ``other``.

        >>> key = DotRanges.whole({"a": (3, 9)})
        >>> DotRanges({"a": (1, 2, 3, 9)}).issubset(key), key.issubset(DotRanges())
        (True, False)

        Cost: O(writers here).
        """
        theirs = other.spans
        for replica, (lo, _, hi, _) in self.spans.items():
            span = theirs.get(replica)
            if span is None or span[0] > lo or span[2] < hi:
                return False
        return True

    def within(self, vv: Mapping[str, int]) -> bool:
        """Whether every covered dot is at or below ``vv`` (a prefix clock:
        every operation of writer ``w`` up to ``vv[w]``, on any key).

        >>> key = DotRanges.whole({"a": (2, 9)})
        >>> key.within({"a": 9}), key.within({"a": 8}), key.within({})
        (True, False, False)

        Cost: O(writers here).
        """
        return all(span[3] <= vv.get(replica, 0) for replica, span in self.spans.items())

    def follows(self, held: DotRanges) -> bool:
        """Whether joining this into the whole bookkeeping ``held`` leaves no
        hole: each stretch starts at or below what ``held`` has of its writer.

        >>> held = DotRanges.whole({"a": (2, 5)})
        >>> next_one, one_later = DotRanges({"a": (2, 5, 3, 8)}), DotRanges({"a": (3, 8, 4, 9)})
        >>> next_one.follows(held), one_later.follows(held)
        (True, False)

        Cost: O(writers here).
        """
        theirs = held.spans
        for replica, span in self.spans.items():
            lo = span[0]
            if lo:
                mine = theirs.get(replica)
                if mine is None or mine[2] < lo:
                    return False
        return True

    def joinable(self, other: DotRanges) -> bool:
        """Whether the union with ``other`` is again one stretch per writer:
        the stretches of every common writer overlap or touch.

        >>> a = DotRanges({"a": (0, 0, 2, 5)})
        >>> a.joinable(DotRanges({"a": (2, 5, 3, 8)})), a.joinable(DotRanges({"a": (3, 8, 4, 9)}))
        (True, False)

        Cost: O(writers).
        """
        theirs = other.spans
        for replica, (lo, _, hi, _) in self.spans.items():
            span = theirs.get(replica)
            if span is not None and (span[0] > hi or lo > span[2]):
                return False
        return True

    # -- changes -------------------------------------------------------------------

    def successor(self, replica: str, counter: int) -> DotRanges:
        """The stretch of ``replica``'s next operation on this key, with dot
        counter ``counter``: what a new local operation's delta carries.

        >>> DotRanges.whole({"a": (2, 5)}).successor("a", 9)
        DotRanges({'a': (2, 5, 3, 9)})

        Cost: O(1).
        """
        span = self.spans.get(replica)
        hi, hi_dot = (0, 0) if span is None else (span[2], span[3])
        if counter <= hi_dot:
            raise ValueError(f"dot {counter} of {replica!r} is not after {hi_dot}")
        return DotRanges({replica: (hi, hi_dot, hi + 1, counter)})

    def add(self, replica: str, counter: int) -> None:
        """Cover ``replica``'s next operation on this key, dot ``counter``
        (ValueError unless ``counter`` is above its last).

        >>> d = DotRanges(); d.add("a", 4); d
        DotRanges({'a': (0, 0, 1, 4)})

        Cost: O(1).
        """
        # What merging in successor(replica, counter) does, which always
        # touches: without the two objects and the general merge (this is
        # once per update staged).
        spans = self.spans
        span = spans.get(replica)
        lo, lo_dot, hi, hi_dot = (0, 0, 0, 0) if span is None else span
        if counter <= hi_dot:
            raise ValueError(f"dot {counter} of {replica!r} is not after {hi_dot}")
        spans[replica] = (lo, lo_dot, hi + 1, counter)

    def merge(self, other: DotRanges) -> None:
        """Union ``other`` in; ValueError (changing nothing) unless
        :meth:`joinable`: a hole is never claimed.

        >>> d = DotRanges({"a": (1, 2, 3, 7)}); d.merge(DotRanges({"a": (0, 0, 2, 5)})); d
        DotRanges({'a': (0, 0, 3, 7)})

        Cost: O(writers of ``other``).
        """
        if not self.joinable(other):
            raise ValueError("the stretches leave a hole: not joinable")
        if other.pruned:
            for writer, marker in other.pruned.items():
                self.mark(writer, *marker)
        mine = self.spans
        for replica, span in other.spans.items():
            held = mine.get(replica)
            if held is None:
                mine[replica] = span
            elif held != span:
                lo, lo_dot = (held[0], held[1]) if held[0] <= span[0] else (span[0], span[1])
                hi, hi_dot = (held[2], held[3]) if held[2] >= span[2] else (span[2], span[3])
                mine[replica] = (lo, lo_dot, hi, hi_dot)

    def copy(self) -> DotRanges:
        """An independent copy.

        >>> d = DotRanges(); e = d.copy(); e.add("a", 1); d.count("a"), e.count("a")
        (0, 1)

        Cost: O(writers).
        """
        return DotRanges(self.spans, self.pruned)

    # -- pruning -------------------------------------------------------------------

    def strip(self, replica: str) -> Span | None:
        """Drop ``replica``'s stretch; return it (None if there was none).

        >>> d = DotRanges.whole({"a": (1, 4)}); d.strip("a"), d.strip("a")
        ((0, 0, 1, 4), None)

        Cost: O(1).
        """
        return self.spans.pop(replica, None)

    def mark(self, replica: str, hi: int, hi_dot: int, owner: str, base: int) -> None:
        """Record that ``replica``'s first ``hi`` operations on the key (up to
        dot ``hi_dot``) were pruned into ``owner`` (renamed at ``base``); a
        marker only grows.

        >>> d = DotRanges(); d.mark("a", 2, 9, "b", 0); d.mark("a", 1, 4, "b", 0); d.pruned
        {'a': (2, 9, 'b', 0)}

        Cost: O(1).
        """
        held = self.pruned.get(replica)
        if held is None or hi > held[0]:
            if self.pruned is _NO_MARKERS:
                self.pruned = {}
            self.pruned[replica] = (hi, hi_dot, owner, base)

    def covers(self, other: DotRanges, replica: str) -> bool:
        """Whether a marker here accounts for every operation of ``replica``
        that ``other`` holds (so they must not be counted again).

        >>> d = DotRanges(); d.mark("a", 2, 9, "b", 0)
        >>> d.covers(DotRanges.whole({"a": (2, 9)}), "a")
        True
        >>> d.covers(DotRanges.whole({"a": (3, 12)}), "a")
        False

        Cost: O(1).
        """
        marker = self.pruned.get(replica)
        span = other.spans.get(replica)
        return marker is not None and (span is None or span[2] <= marker[0])

    def __reduce__(self) -> tuple[type[DotRanges], tuple[dict[str, Span], dict[str, Marker]]]:
        # (copy.deepcopy and pickle: the shared empty markers cannot be pickled.)
        return DotRanges, (dict(self.spans), dict(self.pruned))

    def __eq__(self, other: object) -> bool:
        if type(other) is not DotRanges:
            return NotImplemented
        return self.spans == other.spans and self.pruned == other.pruned

    def __repr__(self) -> str:
        if not self.pruned:
            return f"DotRanges({dict(sorted(self.spans.items()))!r})"
        spans, pruned = dict(sorted(self.spans.items())), dict(sorted(self.pruned.items()))
        return f"DotRanges({spans!r}, pruned={pruned!r})"

    # -- wire form -----------------------------------------------------------------

    def to_payload(self) -> list[object]:
        """``[writer, lo, lo_dot, hi, hi_dot, ...]`` in writer order, then
        the markers as one array ``[writer, hi, hi_dot, owner, base, ...]``
        if there are any."""
        out: list[object] = []
        for replica in sorted(self.spans):
            out += (replica, *self.spans[replica])
        if self.pruned:
            markers: list[object] = []
            for replica in sorted(self.pruned):
                markers += (replica, *self.pruned[replica])
            out.append(markers)
        return out

    @classmethod
    def from_payload(cls, payload: object, what: str) -> DotRanges:
        """Inverse of :meth:`to_payload` for untrusted input: DecodeError
        unless every stretch is one a replica could hold: writers in strictly
        increasing order, ``lo < hi``, a predecessor link exactly when ``lo``
        is not 0, and at least ``hi - lo`` dot counters in ``(lo_dot, hi_dot]``.

        >>> DotRanges.from_payload(["a", 0, 0, 3, 2], "ops")
        Traceback (most recent call last):
        ...
        crdts.errors.DecodeError: ops: stretch of 'a' claims 3 operations in 2 dots

        Cost: O(len(payload)).
        """
        flat = expect_list(payload, what)
        if len(flat) % 5 == 0 and (spans := _spans_at_c_speed(flat)) is not None:
            out = cls.__new__(cls)  # every frame entry has one: no __init__ copies
            out.spans, out.pruned = spans, _NO_MARKERS
            return out
        markers: list[object] | None = None
        if len(flat) % 5 == 1 and isinstance(last := flat[-1], list):
            flat, markers = flat[:-1], last
        if len(flat) % 5:
            raise DecodeError(f"{what}: expected writer/lo/lo_dot/hi/hi_dot groups")
        writers = flat[0::5]
        for writer in writers:
            expect_replica(writer, what)
        expect_increasing(writers, what)
        out = cls()
        for i in range(0, len(flat), 5):
            # Shared (crdts.base.share): every key a writer wrote names it.
            writer = share(cast(str, flat[i]))  # a replica id: checked above
            lo, lo_dot, hi, hi_dot = (expect_uint(x, what) for x in flat[i + 1 : i + 5])
            if hi_dot > MAX_UINT:
                raise DecodeError(f"{what}: dot counter out of range")
            if lo >= hi or (lo == 0) != (lo_dot == 0):
                raise DecodeError(f"{what}: stretch of {writer!r:.40} is not a range")
            if hi - lo > hi_dot - lo_dot:
                raise DecodeError(
                    f"{what}: stretch of {writer!r:.40} claims {hi - lo} operations "
                    f"in {hi_dot - lo_dot} dots"
                )
            out.spans[writer] = (lo, lo_dot, hi, hi_dot)
        if markers is not None:
            out.pruned = _markers(markers, what, out.spans)
        return out


def _spans_at_c_speed(flat: list[object]) -> dict[str, Span] | None:
    """The stretches of a payload without markers if every check passes, in
    one tight pass (every frame entry is parsed here: this is 3-5x faster
    than the checks one by one); None to have the loop in ``from_payload``
    find and name what is wrong."""
    if len(flat) == 5:
        # One writer (most deltas): unpacked, without the loop's setup, which
        # costs more than the checks.
        writer, lo, lo_dot, hi, hi_dot = flat
        if (
            type(writer) is str
            and writer
            and type(lo) is int
            and type(lo_dot) is int
            and type(hi) is int
            and type(hi_dot) is int
            and 0 <= lo < hi
            and lo_dot >= 0
            and hi_dot <= MAX_UINT
            and (lo == 0) == (lo_dot == 0)
            and hi - lo <= hi_dot - lo_dot
        ):
            return {share_at_c_speed(writer): (lo, lo_dot, hi, hi_dot)}
        return None
    if len(flat) % 5:
        return None
    spans: dict[str, Span] = {}
    prev = ""  # below every non-empty str
    it = iter(flat)
    # The length is checked above; strict=True would cost more than the checks.
    for writer, lo, lo_dot, hi, hi_dot in zip(it, it, it, it, it, strict=False):
        if not (
            type(writer) is str
            and writer > prev
            and type(lo) is int
            and type(lo_dot) is int
            and type(hi) is int
            and type(hi_dot) is int
            and 0 <= lo < hi
            and lo_dot >= 0
            and hi_dot <= MAX_UINT
            and (lo == 0) == (lo_dot == 0)
            and hi - lo <= hi_dot - lo_dot
        ):
            return None
        spans[share_at_c_speed(writer)] = (lo, lo_dot, hi, hi_dot)  # shared: see from_payload
        prev = writer
    return spans


def _whole_spans_at_c_speed(flat: list[object]) -> dict[str, Span] | None:
    """:func:`_spans_at_c_speed` for a catch-up's entry, whose every stretch
    is a whole key's (``lo`` and ``lo_dot`` 0), which needs fewer checks:
    the stretches if every check passes and each is a whole key's; None to
    have the full checks find and name what is wrong."""
    if len(flat) == 5:
        writer, lo, lo_dot, hi, hi_dot = flat
        if (
            type(writer) is str
            and writer
            and lo is _ZERO  # the int 0 (cbor2 builds CPython's cached 0), not False
            and lo_dot is _ZERO
            and type(hi) is int
            and type(hi_dot) is int
            and 0 < hi <= hi_dot <= MAX_UINT
        ):
            return {share_at_c_speed(writer): (0, 0, hi, hi_dot)}
        return None
    if len(flat) % 5:
        return None
    spans: dict[str, Span] = {}
    prev = ""  # below every non-empty str
    it = iter(flat)
    for writer, lo, lo_dot, hi, hi_dot in zip(it, it, it, it, it, strict=False):
        if not (
            type(writer) is str
            and writer > prev
            and lo is _ZERO
            and lo_dot is _ZERO
            and type(hi) is int
            and type(hi_dot) is int
            and 0 < hi <= hi_dot <= MAX_UINT
        ):
            return None
        spans[share_at_c_speed(writer)] = (0, 0, hi, hi_dot)
        prev = writer
    return spans


#: Compared by identity: an int 0 built anywhere in CPython is this object
#: (small ints are cached), and False, which equals it, is not. Anything
#: else only takes the slower path, which checks by type.
_ZERO = 0


def _markers(flat: list[object], what: str, spans: dict[str, Span]) -> dict[str, Marker]:
    """The markers array of a payload, checked: writers in strictly
    increasing order, ``0 < hi <= hi_dot``, an owner that is a replica id
    other than the writer, a base >= 0; none at all is not canonical."""
    if not flat or len(flat) % 5:
        raise DecodeError(f"{what}: expected writer/hi/hi_dot/owner/base markers")
    writers = flat[0::5]
    for writer in writers:
        expect_replica(writer, what)
    expect_increasing(writers, what)
    out: dict[str, Marker] = {}
    for i in range(0, len(flat), 5):
        writer, owner = share(cast(str, flat[i])), share(expect_replica(flat[i + 3], what))
        if writer in spans:
            raise DecodeError(f"{what}: {writer!r:.40} has both a stretch and a marker")
        hi, hi_dot, base = (expect_uint(flat[i + j], what) for j in (1, 2, 4))
        if not 0 < hi <= hi_dot <= MAX_UINT or base > MAX_UINT or owner == writer:
            raise DecodeError(f"{what}: marker of {writer!r:.40} is not one a pruning leaves")
        out[writer] = (hi, hi_dot, owner, base)
    return out
