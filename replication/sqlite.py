"""A node's folder: a :class:`~replication.store.Store` on SQLite.

The folder holds ``store.db`` (with ``store.db-wal`` and ``store.db-shm``
while it is open: write-ahead logging, ``synchronous=FULL``, so a commit is
durable when it returns) and ``lock``, which the store holds with
``flock`` for as long as it is open: a second process on the folder is
refused with the holder's pid and node (the kernel drops the lock when its
holder dies, even by SIGKILL).

Tables: ``rows`` (key, the row's bytes, their BLAKE2b digest), ``answers``
(request id, answer, digest, in order of arrival; those in the store's
``AnswerWindow`` are kept) and ``meta`` (name, value). A row's digest is
checked on every load, because SQLite checks the structure of its pages but
not what they hold.

Damage is loud. Opening refuses, with :class:`StoreDamaged` naming the file
and what is wrong, a database that is not one, fails ``PRAGMA quick_check``
or holds a row that does not verify or decode; a ``store.db-wal`` with no
``store.db`` beside it; and a write-ahead log damaged in the middle, where
frames of committed transactions follow a frame that does not verify (SQLite
would silently stop reading at the bad frame and drop them). A torn tail, the
last frames of a transaction a crash cut short, is what a crash leaves, was
never acknowledged, and is dropped by SQLite as usual.

``repair=True`` keeps what is intact instead: every row, answer and value it
can read and verify goes into a new database, the damaged files are kept
beside it as ``store.db.damaged*``, and :attr:`SQLiteStore.repairs` says
exactly what was dropped.

>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as folder:
...     store = SQLiteStore(Path(folder), node="a")
...     store.commit([("k", b"row")], meta={"node": b"a"})
...     try:
...         SQLiteStore(Path(folder), node="b")
...     except FolderInUse as exc:
...         print("refused:", "in use by pid" in str(exc))
...     store.close()
refused: True

Cost: a commit is O(size of what it writes) plus two fsyncs (the WAL's and
its directory's first time); opening is O(store size).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import sqlite3
import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from crdts.errors import DecodeError
from replication.store import (
    AnswerWindow,
    CommitFailed,
    FolderInUse,
    Stored,
    StoreDamaged,
    StoreError,
    decode_row,
)

__all__ = ["DATABASE", "LOCK", "SQLiteStore", "read_store"]

DATABASE = "store.db"
LOCK = "lock"
_FORMAT = b"crdtkit-store-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, data BLOB NOT NULL, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY, request BLOB UNIQUE NOT NULL, data BLOB NOT NULL,
    digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _verified(digest: object, *parts: bytes) -> bool:
    return type(digest) is bytes and hmac.compare_digest(digest, _digest(*parts))


class SQLiteStore:
    """The store of the node ``node`` in ``folder`` (created if absent).
    Raises FolderInUse if another process holds the folder, StoreDamaged if
    the store cannot be trusted (unless ``repair``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with open(Path(folder) / DATABASE, "wb") as f:
    ...         _ = f.write(b"not a database, but 4096 bytes of something" * 100)
    ...     try:
    ...         SQLiteStore(Path(folder), node="a")
    ...     except StoreDamaged as exc:
    ...         print("refused:", "is damaged" in str(exc))
    ...     store = SQLiteStore(Path(folder), node="a", repair=True)
    ...     print(store.repairs[-1].startswith("kept 0 keys"), len(store.load().entries))
    ...     store.close()
    refused: True
    True 0

    Cost: see the module docstring.
    """

    def __init__(
        self,
        folder: Path,
        *,
        node: str,
        repair: bool = False,
        window: AnswerWindow | None = None,
    ) -> None:
        self.folder = folder
        self.path = folder / DATABASE
        self.repairs: list[str] = []  # what a repair dropped, one line each
        self._window = window or AnswerWindow()
        self._repair = repair
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = _take_lock(folder / LOCK, node)
        try:
            fresh = self._precheck()
            self._db = self._connect(self.path)
            if fresh:
                _fsync_dir(folder)
            self._reread_window()
        except BaseException:
            os.close(self._lock)
            raise

    # -- opening ----------------------------------------------------------------------

    def _precheck(self) -> bool:
        """Refuse what SQLite would open silently; say whether the store is new."""
        wal = Path(f"{self.path}-wal")
        if not self.path.exists():
            if wal.exists() and wal.stat().st_size > 0:
                self._damaged(f"{self.path} is missing, but {wal} holds a write-ahead log")
            return True
        problem = _wal_damage(wal)
        if problem is not None:
            self._damaged(f"{wal} is damaged: {problem}")
        return False

    def _damaged(self, what: str) -> None:
        if not self._repair:
            raise StoreDamaged(what)
        self.repairs.append(f"found: {what}")
        self._salvage()

    def _connect(self, path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                # Once, not in every commit: a third of a small commit's CPU.
                db.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('format', ?)", (_FORMAT,)
                )
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as exc:
            if self._repair and path == self.path and not self.repairs:
                self._damaged(f"{path} is damaged: {exc}")
                return self._connect(path)
            raise StoreDamaged(f"{path} is damaged: {exc}") from exc
        except sqlite3.Error as exc:  # cannot open at all: a machine fault
            raise CommitFailed(f"cannot open {path}: {exc}") from exc
        return db

    # -- the Store protocol ---------------------------------------------------------------

    def load(self) -> Stored:
        """Every row, answer and metadata value, each verified; see the
        module docstring for what is refused, and what a repair does.

        >>> import tempfile
        >>> from crdts import GCounter
        >>> from replication.dotranges import DotRanges
        >>> from replication.messages import Entry
        >>> from replication.store import encode_row
        >>> counter = GCounter(); _ = counter.increment("a", 3)
        >>> row = encode_row(Entry("k", counter, DotRanges.whole({"a": (1, 1)})))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = SQLiteStore(Path(folder), node="a")
        ...     store.commit([("k", row)])
        ...     store.close()
        ...     store = SQLiteStore(Path(folder), node="a")
        ...     print([(e.key, e.state.value) for e in store.load().entries])
        ...     store.close()
        [('k', 3)]

        Cost: O(store size)."""
        try:
            stored = self._load()
        except (sqlite3.DatabaseError, StoreDamaged, DecodeError) as exc:
            what = str(exc) if isinstance(exc, StoreDamaged) else f"{self.path} is damaged: {exc}"
            if not self._repair:
                raise StoreDamaged(what) from exc
            self.repairs.append(f"found: {what}")
            self._db.close()
            self._salvage()
            self._db = self._connect(self.path)
            stored = self._load()
        self._reread_window()
        return stored

    def _load(self) -> Stored:
        return _load(self._db, self.path)

    def commit(
        self,
        rows: Sequence[tuple[str, bytes]],
        answers: Sequence[tuple[bytes, bytes]] = (),
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """One transaction; see ``Store.commit``: durable when it returns,
        CommitFailed (with nothing written) if it cannot be.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = SQLiteStore(Path(folder), node="a")
        ...     store.commit([], [(b"request", b"answer")], {"node": b"a"})
        ...     print(store.load().answers[b"request"])
        ...     store.close()
        b'answer'

        Cost: O(size of what it writes) and the WAL's fsync."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO rows (key, data, digest) VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET data = excluded.data, digest = excluded.digest",
                    ((k, d, _digest(k.encode(), d)) for k, d in rows),
                )
                if answers:
                    db.executemany(
                        "INSERT OR REPLACE INTO answers (request, data, digest) VALUES (?, ?, ?)",
                        ((r, d, _digest(r, d)) for r, d in answers),
                    )
                    # The window moves as if the commit will succeed; if it
                    # does not, it is read back from what the table holds.
                    out = [old for r, d in answers for old in self._window.add(r, len(d))]
                    db.executemany("DELETE FROM answers WHERE request = ?", ((r,) for r in out))
                if meta:
                    db.executemany(
                        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta.items()
                    )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if answers:
                    self._reread_window()
                raise
        except sqlite3.Error as exc:
            raise CommitFailed(f"cannot write {self.path}: {exc}") from exc

    def answer(self, request: bytes) -> bytes | None:
        """The answer kept for ``request``, or None; StoreDamaged if it
        does not verify.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = SQLiteStore(Path(folder), node="a")
        ...     store.commit([], [(b"request", b"answer")])
        ...     print(store.answer(b"request"), store.answer(b"other"))
        ...     store.close()
        b'answer' None

        Cost: O(log answers + its size)."""
        try:
            row = self._db.execute(
                "SELECT data, digest FROM answers WHERE request = ?", (request,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreDamaged(f"{self.path} is damaged: {exc}") from exc
        if row is None:
            return None
        data, digest = row
        if not _verified(digest, request, data):
            raise StoreDamaged(f"{self.path} is damaged: an answer does not verify")
        return bytes(data)

    def _reread_window(self) -> None:
        window = AnswerWindow(self._window.count, self._window.size)
        with contextlib.suppress(sqlite3.Error):
            for request, size in self._db.execute(
                "SELECT request, length(data) FROM answers ORDER BY seq"
            ):
                window.add(request, size)
        self._window = window

    def close(self) -> None:
        """Close the database (checkpointing its log) and release the folder.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     SQLiteStore(Path(folder), node="a").close()
        ...     SQLiteStore(Path(folder), node="b").close()  # free again

        Cost: a checkpoint of the log into the database."""
        if self._lock < 0:
            return
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        os.close(self._lock)
        self._lock = -1

    # -- repair ---------------------------------------------------------------------------

    def _salvage(self) -> None:
        """Copy what verifies into a new database and put it in place of the
        damaged one, which is kept beside it as ``store.db.damaged``."""
        fresh = self.folder / f"{DATABASE}.repair"
        for path in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
            path.unlink(missing_ok=True)
        old = self._read_damaged()
        kept = self._connect(fresh)
        try:
            kept.execute("BEGIN")
            kept.executemany(
                "INSERT INTO rows (key, data, digest) VALUES (?, ?, ?)",
                ((k, d, _digest(k.encode(), d)) for k, d in old.rows.items()),
            )
            kept.executemany(
                "INSERT INTO answers (request, data, digest) VALUES (?, ?, ?)",
                ((r, d, _digest(r, d)) for r, d in old.answers.items()),
            )
            kept.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", old.meta.items()
            )
            kept.execute("COMMIT")
            kept.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            kept.close()
        for suffix in ("", "-wal"):
            damaged = Path(f"{self.path}{suffix}")
            if damaged.exists():
                os.replace(damaged, self.folder / f"{DATABASE}.damaged{suffix}")
        Path(f"{self.path}-shm").unlink(missing_ok=True)
        os.replace(fresh, self.path)
        Path(f"{fresh}-shm").unlink(missing_ok=True)
        _fsync_dir(self.folder)
        self.repairs.append(
            f"kept {len(old.rows)} keys, {len(old.answers)} answers; the damaged files are "
            f"{self.folder / DATABASE}.damaged*"
        )

    def _read_damaged(self) -> _Salvaged:
        out = _Salvaged()
        if not self.path.exists():
            return out
        try:
            # Read-only; SQLite replays the log up to its first bad frame.
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            self.repairs.append(f"dropped everything: {self.path} does not open: {exc}")
            return out
        try:
            for rowid, (key, data, digest) in _rows(db, "rows", "key, data, digest", self.repairs):
                if type(key) is str and type(data) is bytes and _verified(
                    digest, key.encode(), data
                ):
                    try:
                        decode_row(key, data)
                    except DecodeError as exc:
                        self.repairs.append(f"dropped the key {key!r:.60}: {exc}")
                        continue
                    out.rows[key] = data
                else:
                    self.repairs.append(
                        f"dropped the key {key!r:.60} (row {rowid}): it does not verify"
                    )
            for _, (request, data, digest) in _rows(db, "answers", "request, data, digest",
                                                    self.repairs):
                if type(request) is bytes and type(data) is bytes and _verified(
                    digest, request, data
                ):
                    out.answers[request] = data
                else:
                    self.repairs.append("dropped an answer to a request: it does not verify")
            for _, (name, value) in _rows(db, "meta", "name, value", self.repairs):
                if type(name) is str and type(value) is bytes:
                    out.meta[name] = value
        finally:
            db.close()
        return out


class _Salvaged:
    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.answers: OrderedDict[bytes, bytes] = OrderedDict()
        self.meta: dict[str, bytes] = {}


def _rows(
    db: sqlite3.Connection, table: str, columns: str, repairs: list[str]
) -> Iterator[tuple[int, tuple[object, ...]]]:
    """Every row of ``table`` that can be read, by rowid; what cannot is
    reported. A damaged page fails only the lookups that cross it."""
    try:
        last = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.Error as exc:
        repairs.append(f"dropped the table {table}: {exc}")
        return
    unreadable = 0
    for rowid in range(1, last + 1):
        try:
            row = db.execute(
                f"SELECT {columns} FROM {table} WHERE rowid = ?", (rowid,)
            ).fetchone()
        except sqlite3.Error:
            unreadable += 1
            continue
        if row is not None:
            yield rowid, tuple(row)
    if unreadable:
        repairs.append(f"dropped {unreadable} unreadable rows of the table {table}")


def read_store(folder: Path) -> Stored:
    """What the store in ``folder`` holds, verified as :meth:`SQLiteStore.load`
    verifies it, read without the folder's lock (a running node's folder
    too: SQLite's readers do not block its writer) and without writing
    anything. StoreDamaged if it is damaged, StoreError if there is none.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     store = SQLiteStore(Path(folder), node="a")
    ...     store.commit([], [(b"request", b"answer")], {"node": b"a"})
    ...     print(read_store(Path(folder)).meta["node"])   # while it is open
    ...     store.close()
    b'a'

    Cost: O(store size)."""
    path = folder / DATABASE
    if not path.is_file():
        raise StoreError(f"{folder} holds no {DATABASE}: not a node's folder")
    problem = _wal_damage(Path(f"{path}-wal"))
    if problem is not None:
        raise StoreDamaged(f"{path}-wal is damaged: {problem}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        return _load(db, path)
    except (sqlite3.DatabaseError, DecodeError) as exc:
        raise StoreDamaged(f"{path} is damaged: {exc}") from exc
    finally:
        db.close()


def _load(db: sqlite3.Connection, path: Path) -> Stored:
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StoreDamaged(f"{path} is damaged: {'; '.join(problems[:3])}")
    stored = Stored()
    for name, value in db.execute("SELECT name, value FROM meta ORDER BY name"):
        stored.meta[name] = value
    if stored.meta.setdefault("format", _FORMAT) != _FORMAT:
        raise StoreDamaged(f"{path} is not a crdtkit store of a known format")
    for key, data, digest in db.execute("SELECT key, data, digest FROM rows ORDER BY key"):
        where = f"{path} is damaged: the row of {key!r:.60}"
        if not _verified(digest, key.encode(), data):
            raise StoreDamaged(f"{where} does not verify")
        try:
            stored.entries.append(decode_row(key, data))
        except DecodeError as exc:
            raise StoreDamaged(f"{where}: {exc}") from exc
    for request, data, digest in db.execute(
        "SELECT request, data, digest FROM answers ORDER BY seq"
    ):
        if not _verified(digest, request, data):
            raise StoreDamaged(f"{path} is damaged: an answer does not verify")
        stored.answers[request] = data
    return stored


def _take_lock(path: Path, node: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderInUse(f"{path.parent} is in use by {holder}") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} (node {node})\n".encode(), 0)
    return fd


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the write-ahead log's frames (https://www.sqlite.org/fileformat.html) ------------------

_WAL_HEADER = 32
_FRAME_HEADER = 24


def _wal_damage(path: Path) -> str | None:
    """What is wrong with the write-ahead log at ``path``, if frames of
    committed transactions follow one that does not verify; None for a
    sound log or a torn tail (whose frames SQLite drops, and rightly).

    Cost: O(size of the log).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _WAL_HEADER:
        return None  # never got a header: nothing was committed through it
    magic, _, page, _, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:_WAL_HEADER])
    if magic not in (0x377F0682, 0x377F0683) or page < 512 or page & (page - 1):
        return "its header is not a write-ahead log's"
    order = ">" if magic & 1 else "<"
    s = _checksum(order, data[:24], 0, 0)
    if s != (c1, c2):
        return "its header does not verify"
    size = _FRAME_HEADER + page
    at, bad = _WAL_HEADER, None
    while at + size <= len(data):
        _, commit, f1, f2, k1, k2 = struct.unpack(">6I", data[at : at + _FRAME_HEADER])
        if (f1, f2) != (salt1, salt2):
            if bad is None:
                return None  # an older log's frames: the end of this one
            break
        if bad is None:
            s = _checksum(order, data[at : at + 8], *s)
            s = _checksum(order, data[at + _FRAME_HEADER : at + size], *s)
            if s != (k1, k2):
                bad = at
        elif commit:
            return (
                f"a committed transaction at byte {at} follows a frame at byte {bad} "
                "that does not verify"
            )
        at += size
    return None


def _checksum(order: str, data: bytes, s1: int, s2: int) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2
