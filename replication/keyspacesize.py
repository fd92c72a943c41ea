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

Cost: O(1) per change (a subscriber call); reading :attr:`KeyspaceSize.nbytes`
encodes each key changed since the last read once, O(size of those states),
and nothing else.
"""

from __future__ import annotations

from crdts import codec
from crdts.base import CRDT
from replication.replicator import Replicator

__all__ = ["KeyspaceSize"]


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

    Cost: building it encodes every key once, O(total state size); each
    change to a key then costs O(1), and each read of :attr:`nbytes` one
    encoding of each key changed since the last read. Memory: one int per key.
    """

    __slots__ = ("_changed", "_sizes", "_stop", "_total")

    def __init__(self, replica: Replicator) -> None:
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
            for key, state in self._changed.items():
                size = _entry_size(key, state)
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
