"""The benchmark suite runs end to end in quick mode and writes every row.

Nothing here is about speed: the numbers of a quick run mean nothing, and
timing assertions on a shared machine only flake. It checks the plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import main
from tests.conftest import nats_server_binary

#: Every row the issue asks for, by the start of its name.
EXPECTED = [
    "ORSet merge, 2 x",
    "ORSet merge, 8 replicas",
    "ORSet add-delta",
    "ORSet remove-delta",
    "ORSet add, 1",
    "ORSet remove, 1",
    "ORSet in, 1",
    "ORSet add then len, 1",
    "ORSet add-delta merge + len, 1",
    "MVRegister assign, 1",
    "MVRegister assign-delta merge, 1",
    "GCounter merge",
    "PNCounter merge",
    "GCounter increment",
    "ormap merge, 1,000 G-Counter keys",
    "ormap delta, 1,000 vs 100 keys",
    "codec encode ORSet",
    "codec decode ORSet",
    "codec encode GCounter",
    "codec decode GCounter",
    "decode hostile CBOR, empty arrays",
    "gossip rounds to converge, 16 replicas",
    "gossip rounds to converge, 64 replicas",
    "gossip bytes per round",
    "gossip scale replicas",
    "gossip scale state",
    "tcp updates through one node, 3 processes",
    "tcp updates through one node, 8 concurrent clients",
    "tcp updates/s target, 8 concurrent clients",
    "tcp updates through one node, 1 client pipelining",
    "tcp node CPU per update, 8 concurrent clients",
    "tcp node CPU per update, 1 client pipelining",
    "store flush 50 changed of 5,000 keys",
    "tcp convergence after a burst, 3 processes",
    "tcp convergence after a burst, 5 processes",
    "tcp bytes on the wire per operation",
    "bounded state: saved bytes",
    "bounded state: memory",
    "snapshot round cost after 16 finished",
    "snapshot round cost during one",
    "snapshot bytes per round after 16 finished",
    "snapshot bytes per round during one",
    "snapshot frames per snapshot, 16 nodes",
    "pruning: opening frame",
    "levels: update at majority, 5 processes",
    "levels: read at all, 5 processes",
    "levels: update at majority, 3 of 5 running",
    "replicator memory: G-Counter keys",
    "replicator memory: OR-Set keys",
    "replicator memory: OR-Set of",
    "replicator memory: change log",
]
if nats_server_binary() is not None:  # else left out, with a line on stderr
    EXPECTED.append("nats frames through an endpoint")
    EXPECTED += [
        "nats updates through one node, 3 processes",
        "nats convergence after a burst, 3 processes",
        "nats convergence after a burst, 5 processes",
        "nats bytes on the wire per operation, 3 processes",
        "nats bytes on the wire per operation, 5 processes",
    ]

#: What the floor and figure of a row count, by the start of its name; every
#: other row times seconds per operation.
UNITS = {
    "gossip rounds": "rounds",
    "gossip bytes": "B",
    "tcp bytes": "B",
    "nats bytes": "B",
    "bounded state": "B",
    "snapshot bytes": "B",
    "snapshot frames": "frames",
    "pruning": "B",
    "replicator memory": "B",
}


def test_quick_run_writes_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = report["rows"]
    names = [row["name"] for row in rows]
    for prefix in EXPECTED:
        assert any(name.startswith(prefix) for name in names), prefix
    # The full-state merges are reported with and without the first reads.
    assert sum(name.endswith("+ first reads") for name in names) == 2
    for row in rows:
        unit = next((u for p, u in UNITS.items() if row["name"].startswith(p)), "s")
        assert row["unit"] == unit, row["name"]
        suffix = "_s" if unit == "s" else ""
        for side in ("floor", "figure"):
            timing = row[side]
            low, median, high = (timing[k + suffix] for k in ("min", "median", "max"))
            assert 0 < low <= median <= high, row["name"]
        assert row["ratio"] > 0
        assert row["met"] in (True, False, None)
    assert all("identical bytes: yes" in row["note"] for row in rows if "codec" in row["name"])
    assert report["meta"]["quick"] is True
    printed = capsys.readouterr().out
    assert all(name in printed for name in names)
