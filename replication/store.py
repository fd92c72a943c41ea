"""Where a replica keeps what it must not lose: the :class:`Store` protocol,
the one durable encoding of a key, and an in-memory store for tests.

A store holds, in one transaction at a time:

- one *row* per key: the key's state and the dots of the operations it
  reflects (:func:`encode_row`, the same bytes whoever writes them);
- *answers* to client requests by request id, the newest within an
  :class:`AnswerWindow` (at most ``KEEP_ANSWERS`` of them and
  ``KEEP_ANSWER_BYTES`` in all), so a retried request is answered from here
  instead of applied twice;
- a few named *metadata* values (the node id, the last incarnation, the
  snapshot colour).

:meth:`Store.commit` writes rows, answers and metadata atomically: after it
returns all of them are durable, and if it raises :class:`CommitFailed`
none is. Restarting (:func:`restore`), a replica reads every row back and
takes a fresh incarnation, so it never issues a dot that any earlier start
issued, whatever happened to the store in between.

Two implementations: :class:`MemoryStore` here (tests, the soak and the
convergence machine restart through it) and
``replication.sqlite.SQLiteStore`` (a node's folder). Both pass the public
conformance suite in ``tests/test_store.py``.

>>> from random import Random
>>> from crdts import GCounter
>>> from replication import Replicator
>>> store = MemoryStore()
>>> r = Replicator("a", [], rng=Random(1))
>>> batch = r.stage()
>>> _ = batch.update("hits", GCounter, lambda c, me: c.increment(me, 2))
>>> store.commit([(k, encode_row(batch.entry(k))) for k in batch.keys()])
>>> r.apply(batch)
>>> back = restore(store.load(), "a", [], rng=Random(2))
>>> back.get("hits").value, back.replica_id != r.replica_id
(2, True)

Cost: a commit is O(size of what it writes); loading is O(store size).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

from crdts import codec
from crdts.errors import DecodeError, MachineError
from replication.messages import Entry, encode_entries, parse_entries
from replication.replicator import Replicator

__all__ = [
    "AnswerWindow",
    "CommitFailed",
    "FolderInUse",
    "MemoryStore",
    "Store",
    "StoreDamaged",
    "StoreError",
    "Stored",
    "WriteBehind",
    "decode_row",
    "encode_row",
    "restore",
]

#: Answers a store keeps by default (the newest), for retried requests:
#: at most this many, and this many bytes of them.
KEEP_ANSWERS = 100_000
KEEP_ANSWER_BYTES = 256 * 1024 * 1024


class StoreError(MachineError):
    """The machine failed the store: its folder, its disk, its files."""


class CommitFailed(StoreError, OSError):
    """A commit did not happen (disk full, I/O error, read-only folder):
    nothing of it is durable, so nothing of it may be applied."""


class StoreDamaged(StoreError):
    """A store that does not read back as it was written: refused whole
    (``SQLiteStore(..., repair=True)`` keeps what is intact)."""


class FolderInUse(StoreError):
    """Another process holds the store's folder."""


@dataclass(slots=True)
class Stored:
    """What a store held when it was opened: its rows (one entry per key,
    sorted by key), the answers it keeps by request id (oldest first) and its
    metadata."""

    entries: list[Entry] = field(default_factory=list)
    answers: OrderedDict[bytes, bytes] = field(default_factory=OrderedDict)
    meta: dict[str, bytes] = field(default_factory=dict)


class Store(Protocol):
    """A replica's durable state. See the module docstring."""

    def load(self) -> Stored:
        """Everything the store holds. Raises StoreDamaged if it cannot be
        trusted. Cost: O(store size)."""
        ...

    def commit(
        self,
        rows: Sequence[tuple[str, bytes]],
        answers: Sequence[tuple[bytes, bytes]] = (),
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """Write ``rows`` (key, :func:`encode_row` bytes; a key's row replaces
        its previous one), ``answers`` (request id, answer) and ``meta``
        (name, value) in one transaction, durable when this returns.
        Raises CommitFailed, having written nothing, if it cannot.
        Cost: O(size of what it writes)."""
        ...

    def answer(self, request: bytes) -> bytes | None:
        """The answer kept for ``request``, or None. Cost: O(its size)."""
        ...

    def close(self) -> None:
        """Release the store (and its folder). Cost: O(1)."""
        ...


def encode_row(entry: Entry) -> bytes:
    """The durable bytes of one key: its state and dots, canonical CBOR.

    >>> from crdts import GCounter
    >>> from replication.dotranges import DotRanges
    >>> counter = GCounter(); _ = counter.increment("a", 5)
    >>> row = encode_row(Entry("k", counter, DotRanges.whole({"a": (1, 1)})))
    >>> decode_row("k", row).state.value
    5

    Cost: O(size of the state).
    """
    return codec.encode_plain(encode_entries([entry]))


def decode_row(key: str, data: bytes) -> Entry:
    """The entry in a row written by :func:`encode_row` for ``key``;
    DecodeError for anything else.

    >>> decode_row("k", b"junk")
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(data))."""
    entries = parse_entries(codec.decode_plain(data, max_size=len(data)))
    if len(entries) != 1 or entries[0].key != key:
        raise DecodeError(f"the row of {key!r:.60} holds another key")
    if not entries[0].dots.is_whole():
        raise DecodeError(f"the row of {key!r:.60} holds a delta, not the whole key")
    return entries[0]


def restore(
    stored: Stored, node_id: str, peers: Iterable[str], *, rng: Random, **options: Any
) -> Replicator:
    """Node ``node_id``'s replica restarted from what its store held
    (``store.load()``), under a fresh incarnation drawn from ``rng``: on every
    start, as an empty store may be a wiped one whose replica had issued dots
    already. ``options`` go to the ``Replicator``. Raises StoreDamaged if the
    store is another node's.

    >>> from random import Random
    >>> stored = Stored(meta={"node": b"b"})
    >>> restore(Stored(), "a", [], rng=Random(1)).replica_id.startswith("a~")
    True
    >>> restore(stored, "a", [], rng=Random(1))
    Traceback (most recent call last):
    ...
    replication.store.StoreDamaged: the store belongs to node 'b'

    Cost: O(store size).
    """
    held = stored.meta.get("node")
    if held is not None and held != node_id.encode():
        raise StoreDamaged(f"the store belongs to node {held.decode(errors='replace')!r}")
    return Replicator.from_entries(node_id, stored.entries, peers, rng=rng, **options)


class WriteBehind:
    """The keys of a replica changed (by updates or gossip) since they were
    last written to its store: writing them costs O(changed keys), never
    O(state).

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", [], rng=Random(1))
    >>> store, changes = MemoryStore(), WriteBehind(r)
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me))
    >>> changes.flush(store); sorted(store.rows), changes.keys
    (['hits'], set())

    While :attr:`paused`, changes are not noted (a node pauses it while it
    applies a batch its store holds already).

    Cost: O(1) per change; :meth:`take` encodes each changed key once.
    """

    def __init__(self, replica: Replicator) -> None:
        self.replica = replica
        self.keys: set[str] = set()
        self.paused = False
        replica.subscribe(self._changed)

    def _changed(self, key: str, state: object) -> None:
        if not self.paused:
            self.keys.add(key)

    def take(self) -> dict[str, bytes]:
        """The rows of the changed keys, which count as written now (give
        them back with ``keys |= ...`` if their commit fails).

        >>> from random import Random
        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> changes = WriteBehind(r)
        >>> for key in ("x", "y"):
        ...     _ = r.update(key, GCounter, lambda c, me: c.increment(me))
        >>> sorted(changes.take()), changes.keys
        (['x', 'y'], set())

        Cost: the encoding of each key taken."""
        taken, self.keys = self.keys, set()
        rows: dict[str, bytes] = {}
        for key in taken:
            entry = self.replica.entry(key)
            if entry is not None:
                rows[key] = encode_row(entry)
        return rows

    def flush(self, store: Store, meta: Mapping[str, bytes] | None = None) -> None:
        """Write the changed keys to ``store`` in one commit; on
        CommitFailed they stay changed.

        >>> from random import Random
        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> store, changes = MemoryStore(), WriteBehind(r)
        >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me))
        >>> store.fail = True
        >>> changes.flush(store)
        Traceback (most recent call last):
        ...
        replication.store.CommitFailed: the test made this commit fail
        >>> changes.keys
        {'hits'}

        Cost: see :meth:`take`."""
        rows = self.take()
        try:
            store.commit(sorted(rows.items()), (), meta)
        except CommitFailed:
            self.keys |= rows.keys()
            raise


class AnswerWindow:
    """Which answers a store keeps: the newest, at most ``count`` of them
    and ``size`` bytes in all (an answer can carry a large delta), so they
    are bounded by the window, never by how long the node has run.

    >>> window = AnswerWindow(count=10, size=100)
    >>> window.add(b"a", 60), window.add(b"b", 30), window.add(b"c", 30)
    ([], [], [b'a'])
    >>> window.add(b"b", 30), list(window.sizes)
    ([], [b'c', b'b'])

    Cost: O(1) amortised per answer.
    """

    __slots__ = ("count", "size", "sizes", "total")

    def __init__(self, count: int = KEEP_ANSWERS, size: int = KEEP_ANSWER_BYTES) -> None:
        self.count, self.size = count, size
        self.sizes: OrderedDict[bytes, int] = OrderedDict()
        self.total = 0

    def add(self, request: bytes, size: int) -> list[bytes]:
        """Keep the answer to ``request`` as the newest; the requests whose
        answers fall out of the window, oldest first. Cost: O(1) amortised."""
        self.total += size - self.sizes.pop(request, 0)
        self.sizes[request] = size
        out: list[bytes] = []
        while len(self.sizes) > 1 and (len(self.sizes) > self.count or self.total > self.size):
            old, dropped = self.sizes.popitem(last=False)
            self.total -= dropped
            out.append(old)
        return out


class MemoryStore:
    """A :class:`Store` in memory: what a crash keeps is what was committed.

    ``fail`` makes commits fail (the test's full disk): while it is set,
    every commit raises CommitFailed and writes nothing.

    >>> store = MemoryStore()
    >>> store.fail = True
    >>> store.commit([("k", b"...")])
    Traceback (most recent call last):
    ...
    replication.store.CommitFailed: the test made this commit fail

    Cost: a commit is O(size of what it writes); load is O(store size).
    """

    def __init__(self, *, window: AnswerWindow | None = None) -> None:
        self.rows: dict[str, bytes] = {}
        self.answers: OrderedDict[bytes, bytes] = OrderedDict()
        self.meta: dict[str, bytes] = {}
        self.commits = 0
        self.fail = False
        self._window = window or AnswerWindow()

    @classmethod
    def of(cls, replica: Replicator) -> MemoryStore:
        """A store holding every key of ``replica`` as it is now: a copy to
        restart it from later (as if it had written all its keys).

        >>> from random import Random
        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
        >>> back = restore(MemoryStore.of(r).load(), "a", [], rng=Random(2), incarnation=7)
        >>> back.replica_id, back.get("hits").value
        ('a~7', 2)

        Cost: the encoding of every key, O(state).
        """
        store = cls()
        entries = (replica.entry(key) for key in replica.keys())  # noqa: SIM118  (not a dict)
        store.commit([(e.key, encode_row(e)) for e in entries if e is not None])
        return store

    def load(self) -> Stored:
        """What was committed, decoded.

        >>> store = MemoryStore()
        >>> store.commit([], [(b"request", b"answer")], {"node": b"a"})
        >>> stored = store.load(); dict(stored.answers), stored.meta
        ({b'request': b'answer'}, {'node': b'a'})

        Cost: O(store size)."""
        try:
            entries = [decode_row(k, self.rows[k]) for k in sorted(self.rows)]
        except DecodeError as exc:
            raise StoreDamaged(f"a row does not decode: {exc}") from exc
        return Stored(entries, OrderedDict(self.answers), dict(self.meta))

    def commit(
        self,
        rows: Sequence[tuple[str, bytes]],
        answers: Sequence[tuple[bytes, bytes]] = (),
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """See ``Store.commit``: all of it, or (while :attr:`fail`) none.

        >>> store = MemoryStore(window=AnswerWindow(count=1))
        >>> store.commit([("k", b"row")], [(b"r1", b"a1"), (b"r2", b"a2")])
        >>> store.rows, list(store.answers), store.commits
        ({'k': b'row'}, [b'r2'], 1)

        Cost: O(size of what it writes)."""
        if self.fail:
            raise CommitFailed("the test made this commit fail")
        self.rows.update(rows)
        for request, answer in answers:
            self.answers[request] = answer
            self.answers.move_to_end(request)
            for old in self._window.add(request, len(answer)):
                del self.answers[old]
        self.meta.update(meta or {})
        self.commits += 1

    def answer(self, request: bytes) -> bytes | None:
        """The answer committed for ``request``, or None.

        >>> store = MemoryStore()
        >>> store.commit([], [(b"request", b"answer")])
        >>> store.answer(b"request"), store.answer(b"other")
        (b'answer', None)

        Cost: O(1)."""
        return self.answers.get(request)

    def close(self) -> None:
        """Nothing to release.

        >>> MemoryStore().close()

        Cost: O(1)."""
