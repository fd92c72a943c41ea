"""The update journal: whole records come back, a torn or damaged tail is
dropped (it was never acknowledged), and reading a record twice is harmless."""

from __future__ import annotations

import random
from pathlib import Path

from crdts import GCounter, ORSet
from replication import Replicator
from replication.messages import Entry
from snapshot import LocalState, restore_replica
from snapshot.journal import Journal, read_journal


def _records(path: Path) -> tuple[Replicator, list[int]]:
    """A replica's three updates, journalled one record each; the file's
    length after each record."""
    r = Replicator("a", [], rng=random.Random(1))
    ends = []
    with Journal(path) as journal:
        for key, mutate in (
            ("hits", lambda c, me: c.increment(me, 2)),
            ("cart", lambda s, me: s.add("milk", me)),
            ("hits", lambda c, me: c.increment(me, 3)),
        ):
            new = GCounter if key == "hits" else ORSet
            observed = r.ops(key)
            delta = r.update(key, new, mutate)
            dot = (r.replica_id, r.clock.vv[r.replica_id])
            journal.append([Entry(key, delta, observed.successor(*dot))])
            journal.sync()
            ends.append(path.stat().st_size)
    return r, ends


def test_records_replay_into_the_state(tmp_path: Path) -> None:
    r, _ = _records(tmp_path / "j")
    entries, torn = read_journal(tmp_path / "j")
    assert torn == 0 and len(entries) == 3
    empty = LocalState("a", "a", ())
    back = restore_replica(empty, [], rng=random.Random(2), arriving=entries)
    assert back.encode_keyspace() == r.encode_keyspace()
    twice = restore_replica(empty, [], rng=random.Random(2), arriving=entries + entries)
    assert twice.encode_keyspace() == r.encode_keyspace()  # idempotent


def test_a_torn_tail_at_every_offset_keeps_the_whole_records(tmp_path: Path) -> None:
    _, ends = _records(tmp_path / "j")
    data = (tmp_path / "j").read_bytes()
    for cut in range(len(data) + 1):
        (tmp_path / "t").write_bytes(data[:cut])
        entries, torn = read_journal(tmp_path / "t")
        whole = sum(1 for end in ends if end <= cut)
        assert len(entries) == whole, cut
        assert torn == cut - ([0, *ends][whole])


def test_a_flipped_bit_stops_the_reading_at_its_record(tmp_path: Path) -> None:
    _, ends = _records(tmp_path / "j")
    data = (tmp_path / "j").read_bytes()
    rng = random.Random(3)
    for _ in range(300):
        at = rng.randrange(len(data))
        damaged = bytearray(data)
        damaged[at] ^= 1 << rng.randrange(8)
        (tmp_path / "d").write_bytes(bytes(damaged))
        entries, torn = read_journal(tmp_path / "d")
        record = sum(1 for end in ends if end <= at)  # the record holding the flip
        assert len(entries) == record and torn == len(data) - [0, *ends][record]


def test_clear_empties_it_and_a_missing_file_is_empty(tmp_path: Path) -> None:
    _records(tmp_path / "j")
    with Journal(tmp_path / "j") as journal:
        journal.clear()
    assert read_journal(tmp_path / "j") == ([], 0)
    assert read_journal(tmp_path / "nothing") == ([], 0)
