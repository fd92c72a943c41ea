"""Durable snapshot files: written atomically, read back only if they verify.

A file is a fixed header, then the body::

    magic     8 bytes   b"CRDTSNAP"
    version   u16, big-endian   (FILE_FORMAT_VERSION, 1)
    length    u64, big-endian   the body's size in bytes
    sha256    32 bytes  SHA-256 of the body
    body      length bytes; for a snapshot, GlobalSnapshot.to_bytes()

Writing (:func:`write_atomic`) follows the usual recipe for crash safety: the
file goes to a temporary name in the same folder, is flushed and fsynced, is
renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and
then the folder is fsynced so the rename itself survives a power loss. A crash
at any point leaves either the previous file or the new one at ``path``, never
a mix; a failure before the rename removes the temporary file. A crash may
still leave a stray ``.<name>.*.tmp`` beside it, which readers never look at.

Reading (:func:`read_verified`) treats the file as hostile: the size is
checked against ``max_size`` before anything is read, then the magic, the
version, the declared length against the actual size (so truncation and
trailing bytes are both caught) and the digest. Anything wrong raises
:class:`~snapshot.errors.SnapshotCorrupt` naming the file, and nothing of the
file is returned. A missing or unreadable file is not corruption: the
``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) propagates as is.
The digest catches accidents (torn writes, bit rot), not forgery: anyone who
can write the file can write a matching digest.

>>> import os, tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     path = os.path.join(folder, "cut.snap")
...     write_atomic(path, b"state")
...     with open(path, "rb") as f:
...         raw = f.read()
...     read_verified(path), len(raw) - HEADER_SIZE, raw[:8]
(b'state', 5, b'CRDTSNAP')

Cost: writing and reading are O(body size) plus two fsyncs when writing; the
SHA-256 runs at C speed (several hundred MB/s).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
import tempfile
from collections.abc import Callable
from typing import TypeVar

from crdts.errors import DecodeError
from snapshot.cut import GlobalSnapshot, LocalState
from snapshot.errors import SnapshotCorrupt

__all__ = [
    "DEFAULT_MAX_SIZE",
    "FILE_FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "read_checkpoint",
    "read_snapshot",
    "read_verified",
    "write_atomic",
    "write_checkpoint",
    "write_snapshot",
]

T = TypeVar("T")

#: The first eight bytes of every snapshot file.
MAGIC = b"CRDTSNAP"
#: The header layout version; a reader refuses any other.
FILE_FORMAT_VERSION = 1
#: The largest body a reader accepts unless told otherwise: 1 GiB.
DEFAULT_MAX_SIZE = 1 << 30

_HEADER = struct.Struct(">8sHQ32s")
#: Bytes before the body: magic, version, length, SHA-256 (50).
HEADER_SIZE = _HEADER.size

_PathLike = str | os.PathLike[str]


def write_atomic(path: _PathLike, body: bytes) -> None:
    """Write ``body`` under a verified header to ``path``, atomically and
    durably: afterwards ``path`` holds the new file, or, if this raised
    before the rename, still the previous one, untouched.

    The file is created with ``tempfile.mkstemp``'s mode (0600: owner only),
    whatever the mode of the file it replaces. If ``path`` is a symbolic link,
    the link itself is replaced.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "blob")
    ...     write_atomic(path, b"old")
    ...     write_atomic(path, b"new")
    ...     read_verified(path), sorted(os.listdir(folder))
    (b'new', ['blob'])

    Cost: O(len(body)) to hash and write, plus an fsync of the file and one
    of its folder.
    """
    target = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(target))
    header = _HEADER.pack(MAGIC, FILE_FORMAT_VERSION, len(body), hashlib.sha256(body).digest())
    # Same folder as the target: os.replace is only atomic within a file system.
    fd, temp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Without this the rename may still sit in the folder's unwritten metadata
    # after a power loss, and the old file would come back.
    if os.name == "nt":
        # Windows cannot open a folder with os.open (PermissionError); NTFS
        # journals the rename's metadata itself.
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_verified(path: _PathLike, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The body of the file at ``path`` written by :func:`write_atomic`, after
    checking its header and digest; SnapshotCorrupt if anything is off.

    A file whose size is over ``max_size`` plus the header is refused before
    any of it is read. A missing or unreadable file raises the ``OSError``
    that ``open`` raises (``FileNotFoundError``, ...), not SnapshotCorrupt.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "blob")
    ...     write_atomic(path, b"payload")
    ...     with open(path, "ab") as f:
    ...         _ = f.write(b"!")
    ...     read_verified(path)
    Traceback (most recent call last):
    ...
    snapshot.errors.SnapshotCorrupt: snapshot file '...blob': 58 bytes, but the header declares 57

    Cost: O(file size), refused in O(1) above ``max_size``.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > HEADER_SIZE + max_size:
            raise _corrupt(
                name,
                f"{size} bytes, over the limit of {max_size} plus a {HEADER_SIZE}-byte "
                "header; not read",
            )
        header = f.read(HEADER_SIZE)
        if not header.startswith(MAGIC) and not MAGIC.startswith(header):
            raise _corrupt(name, "not a snapshot file (wrong magic)")
        if len(header) < HEADER_SIZE:
            raise _corrupt(name, f"truncated: {len(header)} bytes, shorter than the header")
        _, version, length, digest = _HEADER.unpack(header)
        if version != FILE_FORMAT_VERSION:
            raise _corrupt(name, f"unsupported format version {version}")
        if size != HEADER_SIZE + length:
            raise _corrupt(name, f"{size} bytes, but the header declares {HEADER_SIZE + length}")
        body = f.read(length)
    if len(body) != length:  # the file shrank after fstat
        raise _corrupt(name, f"truncated: the body has {len(body)} of {length} bytes")
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise _corrupt(name, "SHA-256 mismatch: the body is damaged")
    return body


def write_snapshot(path: _PathLike, snapshot: GlobalSnapshot) -> None:
    """Write ``snapshot`` to ``path`` atomically (see :func:`write_atomic`).

    >>> import os, tempfile
    >>> from snapshot.cut import SnapshotId
    >>> cut = GlobalSnapshot(SnapshotId("a", 1), {})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_snapshot(os.path.join(folder, "a-1.snap"), cut)
    ...     read_snapshot(os.path.join(folder, "a-1.snap")) == cut
    True

    Cost: O(snapshot size) to encode and write, plus two fsyncs.
    """
    write_atomic(path, snapshot.to_bytes())


def read_snapshot(path: _PathLike, *, max_size: int = DEFAULT_MAX_SIZE) -> GlobalSnapshot:
    """The snapshot in the file at ``path``: SnapshotCorrupt if the file does
    not verify (see :func:`read_verified`) or its body is not a valid snapshot;
    ``FileNotFoundError`` if there is no file.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "blob")
    ...     write_atomic(path, b"\\xa0")  # verifies, but is an empty CBOR map
    ...     read_snapshot(path)
    Traceback (most recent call last):
    ...
    snapshot.errors.SnapshotCorrupt: snapshot file '...blob': not a valid snapshot: ...

    Cost: O(file size), refused in O(1) above ``max_size``.
    """
    return _read(path, GlobalSnapshot.from_bytes, "snapshot", max_size)


def write_checkpoint(path: _PathLike, local: LocalState) -> None:
    """Write one node's state (a checkpoint to restart from) to ``path``
    atomically, in the same file format as a snapshot.

    >>> import os, tempfile
    >>> from random import Random
    >>> from replication import Replicator
    >>> local = LocalState.capture(Replicator("a", [], rng=Random(1)))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_checkpoint(os.path.join(folder, "a.ckpt"), local)
    ...     read_checkpoint(os.path.join(folder, "a.ckpt")) == local
    True

    Cost: O(state size) to encode and write, plus two fsyncs.
    """
    write_atomic(path, local.to_bytes())


def read_checkpoint(path: _PathLike, *, max_size: int = DEFAULT_MAX_SIZE) -> LocalState:
    """The checkpoint in the file at ``path``, checked as :func:`read_snapshot`
    checks a snapshot: SnapshotCorrupt unless it verifies and parses (see
    :func:`write_checkpoint` for an example).

    >>> import os, tempfile
    >>> from snapshot.cut import SnapshotId
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "cut.snap")
    ...     write_snapshot(path, GlobalSnapshot(SnapshotId("a", 1), {}))
    ...     read_checkpoint(path)                # a snapshot, not a checkpoint
    Traceback (most recent call last):
    ...
    snapshot.errors.SnapshotCorrupt: snapshot file '...cut.snap': not a valid checkpoint: ...

    Cost: O(file size), refused in O(1) above ``max_size``.
    """
    return _read(path, LocalState.from_bytes, "checkpoint", max_size)


def _read(path: _PathLike, parse: Callable[..., T], what: str, max_size: int) -> T:
    body = read_verified(path, max_size=max_size)
    try:
        return parse(body, max_size=max_size)
    except DecodeError as exc:
        raise _corrupt(os.fspath(path), f"not a valid {what}: {exc}") from exc

def _corrupt(name: str, what: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"snapshot file {name!r}: {what}")
