"""The encoded size of a replica's keyspace, kept up to date as keys change.

``len(replica.encode_keyspace())`` costs a whole encoding of every state,
O(total state size), each time it is asked. A caller that asks every round
(the demo's full-state byte estimate did, and it grew to half the demo's CPU
at 20,000 operations) pays for the whole keyspace every round although only
the keys gossip changed have a new size.

:class:`KeyspaceSize` subscribes to the replica (``Replicator.subscribe``)
and notes which keys changed; when asked, it encodes only those, once each,
and adds up the per-key sizes of ``encode_keyspace``'s layout
``[[key, state bytes], ...]`` (RFC 8949 heads: an array head, and per key a
two-element array head, the key as a text string, the state as a byte
string). The sum is the exact length, byte for byte
(tests/test_keyspacesize.py checks it against ``encode_keyspace`` under
faults).

Replicas of one cluster pass through the same states: a key holding the
same operations (its per-key dot ranges, ``Replicator.ops``) holds the same
state, byte for byte, on every replica (a key's state is exactly the join
of the operations its ranges say it holds: docs/bounded-state.md, "no gaps,
ever"; canonical CBOR makes equal states equal bytes). An :class:`EntrySizes`
shared by the :class:`KeyspaceSize` of several replicas remembers the size
of each ``(key, operations held)`` it has encoded, so a state that reaches
16 replicas is encoded once, not 16 times (in the demo, 92% of the
encodings were of a state some replica had already encoded, and they grew
with the states to an eighth of its CPU at 20,000 operations).

Cost: O(1) per change (a subscriber call); reading :attr:`KeyspaceSize.nbytes`
encodes each key changed since the last read once, O(size of those states),
or with a shared :class:`EntrySizes` only those whose operations it has not
seen, and looks up the others, O(writers of the key).
"""

from __future__ import annotations

from crdts import codec
from crdts.base import CRDT
from replication.dotranges import DotRanges
from replication.replicator import Replicator

__all__ = ["EntrySizes", "KeyspaceSize"]


def _head(length: int) -> int:
    """Bytes of a canonical CBOR head whose argument is ``length``."""
    if length < 24:
        return 1
    if length < 0x100:
        return 2
    if length < 0x10000:
        return 3
    if length < 0x100000000:
        return 5
    return 9


def _entry_size(key: str, state: CRDT) -> int:
    """Bytes of ``[key, codec.encode(state)]`` in ``encode_keyspace``."""
    text = len(key.encode("utf-8"))
    data = len(codec.encode(state))
    return 1 + _head(text) + text + _head(data) + data


class EntrySizes:
    """The size of ``[key, state bytes]`` in ``encode_keyspace`` by the
    operations the key holds, shared by the :class:`KeyspaceSize` of the
    replicas of one cluster: each state is encoded once, whichever replica
    holds it first.

    Exact because a key holding the same operations, markers of pruned ids
    included, holds the same state on every replica (see the module
    docstring); tests/test_keyspacesize.py compares the sizes with
    ``encode_keyspace`` every round under faults and through a pruning.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> a = Replicator("a", [], rng=Random(1))
    >>> _ = a.update("hits", GCounter, lambda c, me: c.increment(me, 300))
    >>> sizes = EntrySizes()  # two followers of a, as of two replicas holding the same
    >>> first, second = KeyspaceSize(a, sizes), KeyspaceSize(a, sizes)
    >>> first.nbytes == second.nbytes == len(a.encode_keyspace()), sizes.encoded, sizes.found
    (True, 1, 1)

    Cost: a lookup is O(writers of the key) to name its operations; memory
    at most ``per_key`` sizes per key (a key's oldest are forgotten first,
    as new operations make them stale).
    """

    __slots__ = ("_by_key", "_per_key", "encoded", "found")

    def __init__(self, per_key: int = 16) -> None:
        if per_key < 1:
            raise ValueError(f"per_key is at least 1, got {per_key}")
        self._per_key = per_key
        # key -> {the operations it holds: entry size}, oldest first
        self._by_key: dict[str, dict[object, int]] = {}
        self.encoded = 0  # states encoded
        self.found = 0  # sizes found without encoding

    def size(self, key: str, state: CRDT, ops: DotRanges) -> int:
        """Bytes of ``[key, codec.encode(state)]`` in ``encode_keyspace``,
        for ``state`` held under ``key`` with the operations ``ops``.
        Cost: O(writers of the key), plus an encoding of ``state`` unless a
        replica's state with the same operations was sized before."""
        named = ops.claims()
        known = self._by_key.get(key)
        if known is None:
            known = self._by_key[key] = {}
        else:
            size = known.get(named)
            if size is not None:
                self.found += 1
                return size
            if len(known) >= self._per_key:
                del known[next(iter(known))]
        size = known[named] = _entry_size(key, state)
        self.encoded += 1
        return size


class KeyspaceSize:
    """``len(replica.encode_keyspace())``, re-encoding only the keys that
    changed since it was last read.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", [], rng=Random(1))
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me))
    >>> size = KeyspaceSize(r)
    >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 300))
    >>> _ = r.update("visits", GCounter, lambda c, me: c.increment(me))
    >>> size.nbytes == len(r.encode_keyspace())
    True
    >>> size.close()  # stops following the replica

    ``shared``: an :class:`EntrySizes` shared with the other replicas'
    KeyspaceSize, so that a state they all come to hold is encoded once.

    Cost: building it encodes every key once, O(total state size); each
    change to a key then costs O(1), and each read of :attr:`nbytes` one
    encoding of each key changed since the last read (with ``shared``, of
    each not sized before by its operations). Memory: one int per key.
    """

    __slots__ = ("_changed", "_replica", "_shared", "_sizes", "_stop", "_total")

    def __init__(self, replica: Replicator, shared: EntrySizes | None = None) -> None:
        self._replica = replica
        self._shared = shared
        self._sizes: dict[str, int] = {}
        self._total = 0  # the sum of _sizes
        # Changed keys with their live states, encoded when next read: a key
        # merged many times between two reads is encoded once.
        self._changed: dict[str, CRDT] = {}
        held = replica.keys()  # (a Replicator is not a mapping)
        for key in held:
            state = replica.get(key)
            assert state is not None  # listed by keys()
            self._changed[key] = state
        self._stop = replica.subscribe(self._note)

    def _note(self, key: str, state: CRDT) -> None:
        self._changed[key] = state

    @property
    def nbytes(self) -> int:
        """The length of ``encode_keyspace()`` now.

        >>> from random import Random
        >>> KeyspaceSize(Replicator("a", [], rng=Random(1))).nbytes  # the empty array
        1

        Cost: one encoding of each key changed since the last read.
        """
        if self._changed:
            sizes = self._sizes
            total = self._total
            shared, ops = self._shared, self._replica.ops
            for key, state in self._changed.items():
                size = _entry_size(key, state) if shared is None else shared.size(
                    key, state, ops(key)
                )
                total += size - sizes.get(key, 0)
                sizes[key] = size
            self._total = total
            self._changed.clear()
        return _head(len(self._sizes)) + self._total

    def close(self) -> None:
        """Stop following the replica (:attr:`nbytes` then keeps its last
        value apart from changes noted before).

        >>> from random import Random
        >>> size = KeyspaceSize(Replicator("a", [], rng=Random(1)))
        >>> size.close()

        Cost: O(subscribers of the replica).
        """
        self._stop()
