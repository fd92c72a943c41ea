"""Durable snapshot files: round trips, atomic replacement under simulated
crashes, and hostile files (truncated at every offset, bit flips, trailing
bytes, wrong magic or version, oversize, valid digest over an invalid body),
which must raise SnapshotCorrupt and nothing else."""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path
from typing import NoReturn

import pytest

from crdts import GCounter, ORSet, codec
from crdts.errors import DecodeError
from replication import Replicator
from replication.messages import Ack, Push, Reply, encode
from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId
from snapshot.errors import SnapshotCorrupt
from snapshot.files import (
    DEFAULT_MAX_SIZE,
    FILE_FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    read_snapshot,
    read_verified,
    write_atomic,
    write_snapshot,
)

NODES = ("a", "b", "c")


def make_snapshot(seed: int, number: int = 1) -> GlobalSnapshot:
    """A three-node cut with counters and sets, a push and an ack in flight."""
    rng = random.Random(seed)
    replicas = [
        Replicator(n, [p for p in NODES if p != n], rng=random.Random(rng.getrandbits(32)))
        for n in NODES
    ]
    for replica in replicas:
        for _ in range(rng.randrange(1, 4)):
            replica.update("hits", GCounter, lambda c, me: c.increment(me, 2))
        replica.update("tags", ORSet, lambda s, me: s.add("x", me))
        replica.update(f"only-{replica.node_id}", ORSet, lambda s, me: s.add(me, me))
    states = {r.node_id: LocalState.capture(r) for r in replicas}
    a = states["a"]
    push = Push("a", "b", 0, 1, 0, 1, Reply.NOTHING, replicas[0].context, a.entries)
    channels = {("a", "b"): (encode(push),), ("c", "a"): (encode(Ack("c", 3)),)}
    return GlobalSnapshot(SnapshotId("a", number), states, channels)


def corrupt_message(path: Path, excinfo: pytest.ExceptionInfo[SnapshotCorrupt]) -> str:
    message = str(excinfo.value)
    assert repr(os.fspath(path)) in message, "every message names the file"
    return message


def test_round_trip(tmp_path: Path) -> None:
    cut = make_snapshot(1)
    path = tmp_path / "a-1.snap"
    write_snapshot(path, cut)
    back = read_snapshot(path)
    assert back == cut
    assert list(back.in_flight()) == list(cut.in_flight()) != []
    raw = path.read_bytes()
    body = cut.to_bytes()
    assert raw[:8] == MAGIC == b"CRDTSNAP"
    assert struct.unpack(">HQ", raw[8:18]) == (FILE_FORMAT_VERSION, len(body))
    assert raw[18:HEADER_SIZE] == hashlib.sha256(body).digest()
    assert raw[HEADER_SIZE:] == body
    assert sorted(os.listdir(tmp_path)) == ["a-1.snap"]


def test_str_path_and_generic_body(tmp_path: Path) -> None:
    path = str(tmp_path / "blob")
    write_atomic(path, b"")
    assert read_verified(path) == b""
    write_atomic(path, bytes(range(256)))
    assert read_verified(path) == bytes(range(256))


def test_missing_file_is_not_corruption(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_snapshot(tmp_path / "absent.snap")


def test_truncated_at_every_offset(tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    write_snapshot(good, make_snapshot(2))
    raw = good.read_bytes()
    path = tmp_path / "torn.snap"
    for cut_at in range(len(raw)):
        path.write_bytes(raw[:cut_at])
        with pytest.raises(SnapshotCorrupt) as excinfo:
            read_snapshot(path)
        corrupt_message(path, excinfo)


def test_single_bit_flips(tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    write_snapshot(good, make_snapshot(3))
    raw = good.read_bytes()
    rng = random.Random(20240603)
    path = tmp_path / "flipped.snap"
    for _ in range(1000):
        bit = rng.randrange(len(raw) * 8)
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(flipped)
        with pytest.raises(SnapshotCorrupt) as excinfo:
            read_snapshot(path)
        corrupt_message(path, excinfo)


def test_trailing_garbage(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write_snapshot(path, make_snapshot(4))
    with path.open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_snapshot(path)
    assert "but the header declares" in corrupt_message(path, excinfo)


@pytest.mark.parametrize("content", [b"", b"CRDT", MAGIC, MAGIC + b"\x00\x01"])
def test_shorter_than_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "short.snap"
    path.write_bytes(content)
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_verified(path)
    assert "truncated" in corrupt_message(path, excinfo)


@pytest.mark.parametrize("content", [b"hello", b"PK\x03\x04" + bytes(100)])
def test_wrong_magic(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.snap"
    path.write_bytes(content)
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_snapshot(path)
    assert "not a snapshot file (wrong magic)" in corrupt_message(path, excinfo)


def test_unknown_version(tmp_path: Path) -> None:
    body = make_snapshot(5).to_bytes()
    header = struct.pack(">8sHQ32s", MAGIC, 2, len(body), hashlib.sha256(body).digest())
    path = tmp_path / "future.snap"
    path.write_bytes(header + body)
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_snapshot(path)
    assert "unsupported format version 2" in corrupt_message(path, excinfo)


def test_oversize_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.snap"
    write_atomic(path, bytes(100))
    assert read_verified(path, max_size=100) == bytes(100)
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_verified(path, max_size=99)
    message = corrupt_message(path, excinfo)
    assert f"{HEADER_SIZE + 100} bytes, over the limit of 99" in message
    assert "not read" in message


def test_oversize_sparse_file_is_not_read(tmp_path: Path) -> None:
    # A sparse file just over the default limit costs no disk; reading it
    # would take seconds and a gigabyte, so a fast refusal shows the size
    # was checked first.
    path = tmp_path / "huge.snap"
    with path.open("wb") as f:
        f.write(MAGIC)
        f.truncate(HEADER_SIZE + DEFAULT_MAX_SIZE + 1)
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_snapshot(path)
    assert "not read" in corrupt_message(path, excinfo)


def boom(*args: object) -> NoReturn:
    raise OSError("simulated crash")


@pytest.mark.parametrize("step", ["replace", "fsync"])
def test_crash_before_rename_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "a.snap"
    old = make_snapshot(6, number=1)
    write_snapshot(path, old)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(f"snapshot.files.os.{step}", boom)
        with pytest.raises(OSError, match="simulated crash"):
            write_snapshot(path, make_snapshot(7, number=2))
    assert path.read_bytes() == before
    assert read_snapshot(path) == old
    assert sorted(os.listdir(tmp_path)) == ["a.snap"], "the temp file was removed"


def test_stray_temp_file_does_not_disturb_reading(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    old = make_snapshot(8, number=1)
    write_snapshot(path, old)
    # What a crash between writing and renaming leaves: half a new file.
    new = make_snapshot(9, number=2)
    half = tmp_path / ".a.snap.k3j9x0q1.tmp"
    write_snapshot(half, new)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    assert read_snapshot(path) == old
    write_snapshot(path, new)
    assert read_snapshot(path) == new
    with pytest.raises(SnapshotCorrupt):
        read_snapshot(half)


def test_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    old, new = make_snapshot(10, number=1), make_snapshot(11, number=2)
    assert old != new
    write_snapshot(path, old)
    write_snapshot(path, new)
    assert read_snapshot(path) == new
    assert sorted(os.listdir(tmp_path)) == ["a.snap"]


def random_plain(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(5 if depth < 3 else 4)
    if kind == 0:
        return rng.randrange(-(2**40), 2**40)
    if kind == 1:
        return "".join(rng.choice("abc~-") for _ in range(rng.randrange(4)))
    if kind == 2:
        return rng.randbytes(rng.randrange(6))
    if kind == 3:
        return None
    return [random_plain(rng, depth + 1) for _ in range(rng.randrange(7))]


def invalid_bodies() -> list[bytes]:
    good = make_snapshot(12).to_bytes()
    rng = random.Random(99)
    return [
        b"\xa0",  # an empty map
        b"",
        b"\x18\x01",  # 1, not in its shortest form
        good[:-1],
        good + b"\x00",
        codec.encode_plain(["crdtkit-snapshot", 4, "a", 1, [], []]),  # a future version
        codec.encode_plain(["crdtkit-snapshot", 1, "a", 1, [], []]),  # dot sets: refused
        codec.encode_plain(["crdtkit-snapshot", 2, "a", 0, [], []]),
        codec.encode_plain(["crdtkit-snapshot", 3, "a", 0, [], []]),
        *(codec.encode_plain(random_plain(rng)) for _ in range(20)),
        *(rng.randbytes(rng.randrange(1, 40)) for _ in range(20)),
    ]


@pytest.mark.parametrize("body", invalid_bodies())
def test_valid_digest_invalid_body(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "odd.snap"
    write_atomic(path, body)
    assert read_verified(path) == body
    with pytest.raises(SnapshotCorrupt) as excinfo:
        read_snapshot(path)
    assert isinstance(excinfo.value.__cause__, DecodeError)
    assert "not a valid snapshot" in corrupt_message(path, excinfo)
