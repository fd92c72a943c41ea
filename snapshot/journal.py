"""An append-only journal of updates: durability for one update at a time,
without rewriting the whole state.

A node acknowledges an update once it is in its journal on disk; the journal
is folded into a checkpoint now and then (``snapshot.files``), after which it
is emptied. Restarting, a node reads its checkpoint and then the journal, and
joins the journal's entries in: an entry is a key, a delta and its dots, so
reading one twice (a crash between a checkpoint and the emptying) changes
nothing.

A record is ``length (4 bytes, big-endian) + BLAKE2b-128 of the body + body``,
the body the canonical CBOR of ``[[key, state, dots], ...]`` (as
``replication.messages.encode_entries`` writes them). Reading stops at the
first record that is cut short or does not verify: a crash in the middle of
an append leaves a torn last record, which was never acknowledged, and
nothing after a damaged record can be trusted to follow it.

>>> import os, tempfile
>>> from random import Random
>>> from crdts import GCounter
>>> from replication import Replicator
>>> r = Replicator("a", [], rng=Random(1))
>>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
>>> with tempfile.TemporaryDirectory() as folder:
...     with Journal(os.path.join(folder, "updates.log")) as journal:
...         journal.append([Entry("hits", r.get("hits"), r.ops("hits"))])
...         journal.sync()
...     entries, torn = read_journal(os.path.join(folder, "updates.log"))
>>> [(e.key, e.state.value) for e in entries], torn
([('hits', 2)], 0)

Cost: an append is O(size of its entries); a sync is one fsync; reading is
O(file size).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from types import TracebackType

from crdts import codec
from crdts.errors import DecodeError
from replication.messages import MAX_FRAME, Entry, encode_entries, parse_entries

__all__ = ["Journal", "read_journal"]

_HEAD = 4 + 16


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


class Journal:
    """An open journal file, appended to (created if absent).

    Cost: see the module docstring.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "ab")  # noqa: SIM115  (closed by close())
        self._pending = False

    def append(self, entries: Iterable[Entry]) -> None:
        """Add a record of ``entries`` (written, not yet synced).

        Cost: O(size of the entries)."""
        body = codec.encode_plain(encode_entries(entries))
        self._file.write(len(body).to_bytes(4, "big") + _digest(body) + body)
        self._pending = True

    def sync(self) -> None:
        """Make every record appended so far durable. Cost: one fsync."""
        if self._pending:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._pending = False

    def clear(self) -> None:
        """Empty the journal (its entries are in a checkpoint now).
        Cost: a truncate and an fsync."""
        self._file.flush()
        self._file.truncate(0)
        os.fsync(self._file.fileno())
        self._pending = False

    def close(self) -> None:
        """Sync and close. Cost: one fsync."""
        if not self._file.closed:
            self.sync()
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_journal(path: str | os.PathLike[str]) -> tuple[list[Entry], int]:
    """The entries of every whole, verified record of the journal at
    ``path`` (none if there is no file), and how many bytes after them were
    left unread (a torn or damaged tail).

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "updates.log")
    ...     with open(path, "wb") as f:
    ...         _ = f.write(b"\\x00\\x00\\x00\\x09 and then nothing")
    ...     read_journal(path)
    ([], 21)

    Cost: O(file size).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return [], 0
    entries: list[Entry] = []
    at = 0
    while at + _HEAD <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        end = at + _HEAD + length
        if length > MAX_FRAME or end > len(data):
            break
        body = data[at + _HEAD : end]
        if not hmac.compare_digest(_digest(body), data[at + 4 : at + _HEAD]):
            break
        try:
            entries += parse_entries(codec.decode_plain(body))
        except DecodeError:
            break
        at = end
    return entries, len(data) - at
