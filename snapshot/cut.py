"""A recorded cut of a cluster: each replica's local state and the messages
that were in flight on each channel (Chandy and Lamport 1985).

A :class:`GlobalSnapshot` is plain data: it does no I/O and knows nothing of
how it was taken (``snapshot.marker`` records one over a running cluster;
``snapshot.files`` writes and reads it). Its canonical encoding,
:meth:`GlobalSnapshot.to_bytes`, is deterministic: equal snapshots, equal bytes.

A replica's recorded state is its keyspace as :class:`~replication.messages.Entry`
values (a key, its state, the operations it reflects as per-key dot ranges),
so its clock, a :class:`KeyspaceClock` of those ranges, is exact. Channel messages are kept as the
replicator frames that were in flight; :meth:`GlobalSnapshot.in_flight` parses
the entries they carry.

Restoring (:func:`restore_replica`, :func:`restore_cluster`) always takes a
new incarnation: the cut may be older than what the replica had already sent,
so it must never issue its old dots again. A restored replica also receives
the entries that were in flight to it, as Chandy-Lamport replays channels.

Cost: encoding and decoding are O(total size), at the codec's speed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from random import Random
from typing import NamedTuple

from crdts import codec
from crdts.base import CRDT, Prunable, expect_list, expect_replica, expect_uint
from crdts.errors import DecodeError
from replication.dotranges import DotRanges
from replication.messages import Entry, Push, encode_keyspace, parse, parse_entries, sent_by
from replication.messages import encode_entries as _encode_entries
from replication.replicator import Replicator

__all__ = [
    "MAX_COLOUR",
    "GlobalSnapshot",
    "KeyspaceClock",
    "LocalState",
    "SnapshotId",
    "restore_cluster",
    "restore_replica",
]

_TAG = "crdtkit-snapshot"
_LOCAL_TAG = "crdtkit-checkpoint"
#: The largest colour (snapshots recorded, ``snapshot.marker``) a frame or a
#: recorded state may carry: far beyond any honest cluster's count, and small
#: enough that adding one stays within the integers CBOR encodes untagged.
MAX_COLOUR = 2**63 - 1
FORMAT_VERSION = 3  # 2: entries carry per-key dot ranges; 3: a colour, not epochs
_READABLE = (2, 3)  # version 2 is upgraded on read


class SnapshotId(NamedTuple):
    """A snapshot's name: the replica that initiated it and its number, the
    colour of the cut (``snapshot.marker``: snapshots are numbered 1, 2, 3,
    ... across the cluster; two initiators starting one at the same colour
    share one cut)."""

    initiator: str
    number: int

    def __str__(self) -> str:
        return f"{self.initiator}#{self.number}"


@dataclass(frozen=True, slots=True, eq=False)
class KeyspaceClock:
    """The operations a recorded keyspace holds: each key's dot ranges.

    Dots are unique across keys, but a key's ranges only speak for the
    operations *on that key* (``replication.dotranges``), so questions about
    one operation name its key.

    >>> clock = KeyspaceClock({"k": DotRanges.whole({"a": (2, 7)})})
    >>> clock.contains("k", "a", 7), clock.contains("other", "a", 7), clock.top("a")
    (True, False, 7)

    Cost: O(keys x writers) for the whole-clock questions, O(1) for one key.
    """

    keys: Mapping[str, DotRanges]

    def contains(self, key: str, replica: str, counter: int) -> bool:
        """Whether the operation ``(replica, counter)`` on ``key`` is held.

        >>> KeyspaceClock({"k": DotRanges.whole({"a": (1, 3)})}).contains("k", "a", 3)
        True

        Cost: O(1).
        """
        ranges = self.keys.get(key)
        return ranges is not None and ranges.contains(replica, counter)

    def issubset(self, other: KeyspaceClock) -> bool:
        """Whether every operation held here is held by ``other``, key by key.

        >>> small = KeyspaceClock({"k": DotRanges.whole({"a": (1, 3)})})
        >>> big = KeyspaceClock({"k": DotRanges.whole({"a": (2, 5)}), "j": DotRanges()})
        >>> small.issubset(big), big.issubset(small)
        (True, False)

        Cost: O(keys x writers) here.
        """
        theirs = other.keys
        return all(
            (held := theirs.get(key)) is not None and ranges.issubset(held)
            for key, ranges in self.keys.items()
        )

    def top(self, replica: str) -> int:
        """The highest dot counter of ``replica`` held under any key (its
        entry in a vector clock of highest dots, as in Mattern's cut test).

        >>> KeyspaceClock({"k": DotRanges.whole({"a": (1, 3)}),
        ...                "j": DotRanges.whole({"a": (1, 4)})}).top("a")
        4

        Cost: O(keys).
        """
        return max((r.top(replica) for r in self.keys.values()), default=0)

    def count(self, replica: str) -> int:
        """How many operations of ``replica`` are held, over all keys.

        >>> KeyspaceClock({"k": DotRanges.whole({"a": (1, 3)}),
        ...                "j": DotRanges.whole({"a": (1, 4)})}).count("a")
        2

        Cost: O(keys).
        """
        return sum(r.count(replica) for r in self.keys.values())

    def origins(self) -> set[str]:
        """The writers with at least one operation held.

        >>> KeyspaceClock({"k": DotRanges.whole({"a": (1, 3)})}).origins()
        {'a'}

        Cost: O(keys x writers).
        """
        return {w for r in self.keys.values() for w in r.origins()}

    def to_payload(self) -> list[object]:
        """``[key, ranges, ...]`` in key order: equal clocks, equal payloads.
        Cost: O(keys x writers)."""
        return [x for key in sorted(self.keys) for x in (key, self.keys[key].to_payload())]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyspaceClock):
            return NotImplemented
        return dict(self.keys) == dict(other.keys)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class LocalState:
    """One replica's recorded state: its node, its replica id (incarnation),
    its keyspace (one entry per key, sorted by key; treat the states as
    read-only) and ``colour``, how many snapshots it had recorded by then
    (see ``snapshot.marker``), so that a node restarted from it never records
    those again with a later state.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", [], rng=Random(1))
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> local = LocalState.capture(r)
    >>> local.replica, local.state("hits").value, local.clock.contains("hits", "a", 1)
    ('a', 2, True)
    >>> LocalState.from_bytes(local.to_bytes()) == local
    True

    Cost: :meth:`capture` copies the keyspace, O(total state size), as do
    the encodings.
    """

    node: str
    replica: str
    entries: tuple[Entry, ...]
    colour: int = 0
    clock: KeyspaceClock = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The clock is the keys' ranges: derived, never trusted.
        clock = KeyspaceClock({entry.key: entry.dots for entry in self.entries})
        object.__setattr__(self, "clock", clock)

    @classmethod
    def capture(cls, replica: Replicator, colour: int = 0) -> LocalState:
        """A copy of ``replica``'s keyspace as it is now, with ``colour``.

        >>> from random import Random
        >>> LocalState.capture(Replicator("a", [], rng=Random(1)), 2).colour
        2

        Cost: O(total state size).
        """
        entries = tuple(
            Entry(k, state, replica.ops(k))
            for k in replica.keys()  # noqa: SIM118  (a Replicator is not a dict)
            if (state := replica.get(k)) is not None
        )
        return cls(replica.node_id, replica.replica_id, entries, colour)

    def state(self, key: str) -> CRDT | None:
        """The recorded state under ``key``, or None.

        >>> from random import Random
        >>> LocalState.capture(Replicator("a", [], rng=Random(1))).state("nothing") is None
        True

        Cost: O(k).
        """
        for entry in self.entries:
            if entry.key == key:
                return entry.state
        return None

    def keyspace(self) -> bytes:
        """The keyspace as canonical CBOR, comparable with
        ``Replicator.encode_keyspace()``.

        >>> from random import Random
        >>> r = Replicator("a", [], rng=Random(1))
        >>> LocalState.capture(r).keyspace() == r.encode_keyspace()
        True

        Cost: O(total state size).
        """
        return encode_keyspace((e.key, e.state) for e in self.entries)

    def to_bytes(self) -> bytes:
        """The canonical CBOR encoding (a node's checkpoint). Cost: O(total size)."""
        return codec.encode_plain([_LOCAL_TAG, FORMAT_VERSION, *self._fields()])

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = 1 << 30) -> LocalState:
        """Parse :meth:`to_bytes` output; DecodeError on anything else.
        Cost: O(len(data)); refused before parsing above ``max_size``."""
        version, raw = _envelope(data, _LOCAL_TAG, "checkpoint", 4, max_size)
        return cls._parse(raw, version)

    def _fields(self) -> list[object]:
        return [self.node, self.replica, _encode_entries(self.entries), self.colour]

    @classmethod
    def _parse(cls, raw: list[object], version: int) -> LocalState:
        node, replica, entries, colour = raw
        return cls(
            expect_replica(node, "node"),
            expect_replica(replica, "replica"),
            parse_entries(entries),
            _parse_colour(colour, version),
        )


@dataclass(frozen=True, slots=True)
class GlobalSnapshot:
    """A recorded cut: the local state of every node, by node id, and the
    replicator frames in flight on each channel ``(source, destination)``, in
    the order they arrived. ``snapshot.marker`` records consistent ones;
    ``snapshot.sec`` checks that a cut is.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", [], rng=Random(1))
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> cut = GlobalSnapshot(SnapshotId("a", 1), {"a": LocalState.capture(r)}, {})
    >>> GlobalSnapshot.from_bytes(cut.to_bytes()) == cut
    True

    Cost: O(total size) to encode or decode.
    """

    id: SnapshotId
    states: Mapping[str, LocalState]
    channels: Mapping[tuple[str, str], tuple[bytes, ...]] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GlobalSnapshot):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def in_flight(self) -> Iterator[tuple[str, str, Entry]]:
        """``(source, destination, entry)`` for every entry carried by a frame
        in flight; frames that carry no entries (acks, openers), do not parse,
        or name a sender other than the channel's source node are skipped, as
        the replica receiving them would.

        >>> from replication.messages import Ack, encode
        >>> cut = GlobalSnapshot(SnapshotId("a", 1), {}, {("a", "b"): (encode(Ack("a", 3)),)})
        >>> list(cut.in_flight())
        []

        Cost: O(size of the channel frames).
        """
        for (source, destination), frames in sorted(self.channels.items()):
            for frame in frames:
                try:
                    message = parse(frame)
                except DecodeError:
                    continue
                if not sent_by(message, source):
                    continue  # the replica would refuse it: another node's name
                if isinstance(message, Push):
                    for entry in message.entries:
                        yield source, destination, entry

    def to_bytes(self) -> bytes:
        """The canonical CBOR encoding. Cost: O(total size)."""
        states = [local._fields() for _, local in sorted(self.states.items())]
        channels = [[s, d, list(frames)] for (s, d), frames in sorted(self.channels.items())]
        return codec.encode_plain(
            [_TAG, FORMAT_VERSION, self.id.initiator, self.id.number, states, channels]
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = 1 << 30) -> GlobalSnapshot:
        """Parse :meth:`to_bytes` output; DecodeError on anything else.
        Cost: O(len(data)); refused before parsing above ``max_size``."""
        version, raw = _envelope(data, _TAG, "snapshot", 4, max_size)
        initiator = expect_replica(raw[0], "snapshot initiator")
        number = expect_uint(raw[1], "snapshot number", 1)
        states: dict[str, LocalState] = {}
        for item in expect_list(raw[2], "snapshot states"):
            fields = expect_list(item, "snapshot state")
            if len(fields) != 4:
                raise DecodeError("snapshot state: expected four fields")
            local = LocalState._parse(fields, version)
            if states and local.node <= next(reversed(states)):  # the last, the largest
                raise DecodeError("snapshot states: nodes not in increasing order")
            states[local.node] = local
        channels: dict[tuple[str, str], tuple[bytes, ...]] = {}
        for item in expect_list(raw[3], "snapshot channels"):
            fields = expect_list(item, "snapshot channel")
            if len(fields) != 3:
                raise DecodeError("snapshot channel: expected three fields")
            source, destination, frames = fields
            pair = (expect_replica(source, "channel"), expect_replica(destination, "channel"))
            if channels and pair <= next(reversed(channels)):
                raise DecodeError("snapshot channels: not in increasing order")
            frame_list = expect_list(frames, "channel frames")
            if not all(type(f) is bytes for f in frame_list):
                raise DecodeError("channel frames: expected bytes")
            channels[pair] = tuple(frame_list)  # type: ignore[arg-type]
        return cls(SnapshotId(initiator, number), states, channels)


def _parse_colour(raw: object, version: int) -> int:
    """A recorded colour; in version 2, a per-initiator epoch vector
    ``[initiator, number, ...]``, upgraded to its largest number (a node
    restarted from it records no snapshot numbered that or below again).
    DecodeError on anything else. Cost: O(len(raw))."""
    if version >= 3:
        colour = expect_uint(raw, "colour")
        if colour > MAX_COLOUR:
            raise DecodeError(f"colour: over the largest, {MAX_COLOUR}")
        return colour
    items = expect_list(raw, "epochs")
    if len(items) % 2:
        raise DecodeError("epochs: expected [initiator, number] pairs")
    last, colour = "", 0
    for i in range(0, len(items), 2):
        initiator = expect_replica(items[i], "epoch initiator")
        if initiator <= last:
            raise DecodeError("epochs: initiators not in increasing order")
        colour = max(colour, expect_uint(items[i + 1], "epoch number", 1))
        last = initiator
    return min(colour, MAX_COLOUR)


def _envelope(
    data: bytes, tag: str, what: str, fields: int, max_size: int
) -> tuple[int, list[object]]:
    raw = expect_list(codec.decode_plain(data, max_size=max_size), what)
    if len(raw) != 2 + fields or raw[0] != tag:
        raise DecodeError(f"not a crdtkit {what}")
    if raw[1] not in _READABLE or type(raw[1]) is not int:
        raise DecodeError(f"{what}: unknown format version {raw[1]!r:.20}")
    return raw[1], raw[2:]


def join_entries(
    entries: Iterable[Entry], into: dict[str, Entry] | None = None
) -> tuple[dict[str, Entry], list[Entry]]:
    """Join ``entries`` by key as a replica merges them, on copies: each into
    ``into`` (the joins so far, whole keys; changed in place), and a delta
    only once what it follows is there, whatever the order. Returns the joins
    and the entries left out: deltas that would leave a hole (ranges whose
    earlier operations nothing given holds). Types are not checked.

    >>> from crdts import GCounter
    >>> c = GCounter(); d1 = c.increment("a"); d2 = c.increment("a")
    >>> first = DotRanges().successor("a", 1); second = first.successor("a", 2)
    >>> joined, left = join_entries([Entry("k", d2, second), Entry("k", d1, first)])
    >>> joined["k"].state.value, joined["k"].dots, left
    (2, DotRanges({'a': (0, 0, 2, 2)}), [])

    Cost: O(n) joins when each entry follows the ones before it, O(n^2)
    tests at worst.
    """
    out: dict[str, Entry] = {} if into is None else into
    pending = list(entries)
    while pending:
        left: list[Entry] = []
        for entry in pending:
            held = out.get(entry.key)
            if held is None:
                if entry.dots.is_whole():
                    out[entry.key] = Entry(entry.key, entry.state.copy(), entry.dots.copy())
                else:
                    left.append(entry)
                continue
            entry = _without_pruned(entry, held.dots)  # noqa: PLW2901
            if entry.dots.follows(held.dots):
                # A marker joined in cleans the writer it names out of what
                # is held, as a replica does (docs/pruning.md).
                for writer, (_, _, owner, base) in entry.dots.pruned.items():
                    if held.dots.strip(writer) is not None and isinstance(held.state, Prunable):
                        held.state.cleanup(writer, owner, base)
                held.state.merge(entry.state)
                held.dots.merge(entry.dots)
            else:
                left.append(entry)
        if len(left) == len(pending):
            return out, left
        pending = left
    return out, []


def _without_pruned(entry: Entry, held: DotRanges) -> Entry:
    """``entry`` without the stretches of writers a marker in ``held`` says
    were pruned (counted through their owner), on copies."""
    stale = held.pruned.keys() & entry.dots.spans.keys()
    if not stale:
        return entry
    ops, state = entry.dots.copy(), entry.state.copy()
    for writer in stale:
        ops.strip(writer)
        if isinstance(state, Prunable):
            state.cleanup(writer, *held.pruned[writer][2:])
    return Entry(entry.key, state, ops)


def _joined(entries: Iterable[Entry]) -> list[Entry]:
    """One entry per key: the join of the given ones, on copies. An entry
    whose type differs from the key's first one is left out, as a replica
    refuses it; so is a delta that would leave a hole, as a replica leaves
    out a gap."""
    first: dict[str, type[CRDT]] = {}
    fitting = [e for e in entries if first.setdefault(e.key, type(e.state)) is type(e.state)]
    out, _ = join_entries(fitting)
    return [out[k] for k in sorted(out)]


def restore_replica(
    local: LocalState,
    peers: Iterable[str],
    *,
    rng: Random,
    incarnation: int | None = None,
    arriving: Iterable[Entry] = (),
    **options: int,
) -> Replicator:
    """Node ``local.node`` restarted from its recorded state, joined with the
    entries ``arriving`` (those in flight to it, when restoring from a cut),
    under a new incarnation (drawn from ``rng`` unless given; never reuse
    one). ``options`` go to the ``Replicator``.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", ["b"], rng=Random(1))
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> back = restore_replica(LocalState.capture(r), ["b"], rng=Random(2), incarnation=1)
    >>> back.replica_id, back.get("hits").value
    ('a~1', 2)

    Cost: O(size of the state and of the arriving entries).
    """
    entries = _joined([*local.entries, *arriving])
    return Replicator.from_entries(
        local.node, entries, peers, rng=rng, incarnation=incarnation, **options
    )


def restore_cluster(
    snapshot: GlobalSnapshot, *, rng: Random, **options: int
) -> dict[str, Replicator]:
    """Every node of ``snapshot`` restarted from it, each with the entries that
    were in flight to it (Chandy-Lamport replays the channels), its own
    generator seeded from ``rng``, and a new incarnation; they gossip with
    each other.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", ["b"], rng=Random(1))
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> b = Replicator("b", ["a"], rng=Random(2))
    >>> states = {n.node_id: LocalState.capture(n) for n in (r, b)}
    >>> cluster = restore_cluster(GlobalSnapshot(SnapshotId("a", 1), states), rng=Random(3))
    >>> sorted(cluster), cluster["a"].get("hits").value, cluster["b"].keys()
    (['a', 'b'], 2, [])

    Cost: O(total size of the snapshot).
    """
    arriving: dict[str, list[Entry]] = {}
    for _, destination, entry in snapshot.in_flight():
        arriving.setdefault(destination, []).append(entry)
    return {
        node: restore_replica(
            local,
            [n for n in snapshot.states if n != node],
            rng=Random(rng.getrandbits(64)),
            arriving=arriving.get(node, ()),
            **options,
        )
        for node, local in sorted(snapshot.states.items())
    }
