"""Golden vectors for the snapshot layer: a snapshot file, a checkpoint file
and the snapshot-layer frames, pinned byte for byte (as ``test_golden`` pins
the types). Rebuild with ``python -m tests.test_golden_snapshot --write`` and
review the diff: changing a vector means a new format version."""

from __future__ import annotations

import json
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from crdts import GCounter, ORSet
from replication import Replicator
from replication.messages import Ack, encode
from snapshot import (
    GlobalSnapshot,
    LocalState,
    SnapshotId,
    SnapshotNode,
    read_checkpoint,
    read_snapshot,
    write_checkpoint,
    write_snapshot,
)

VECTORS = Path(__file__).parent / "golden" / "snapshot.json"
#: Files of format version 2 (per-initiator epochs where version 3 has one
#: colour), as this module's builders wrote them then: read and upgraded, never
#: rewritten.
VERSION_2 = json.loads((VECTORS.parent / "snapshot-v2.json").read_text())


def _replicas() -> tuple[SnapshotNode, SnapshotNode]:
    a = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)))
    b = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2), incarnation=3))
    a.replica.update("hits", GCounter, lambda c, me: c.increment(me, 3))
    b.replica.update("cart", ORSet, lambda s, me: s.add("milk", me))
    return a, b


def _file(write: Callable[[Path], None]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vector"
        write(path)
        return path.read_bytes()


def snapshot_file() -> bytes:
    a, b = _replicas()
    a.initiate()
    states = {"a": a.checkpoint(), "b": b.checkpoint()}
    cut = GlobalSnapshot(SnapshotId("a", 1), states, {("b", "a"): (encode(Ack("b~3", 4)),)})
    return _file(lambda path: write_snapshot(path, cut))


def checkpoint_file() -> bytes:
    _, b = _replicas()
    return _file(lambda path: write_checkpoint(path, b.checkpoint()))


def marker_frame() -> bytes:
    a, _ = _replicas()
    a.initiate()
    return [frame for _, frame in a.tick(0.0)][-1]


def data_frame() -> bytes:
    a, b = _replicas()
    b.initiate()
    return b.receive(0.0, "a", a.tick(0.0)[0][1])[0][1]


BUILDERS: dict[str, Callable[[], bytes]] = {
    "snapshot file": snapshot_file,
    "checkpoint file": checkpoint_file,
    "marker frame": marker_frame,
    "data frame": data_frame,
}


def render() -> str:
    return json.dumps({name: build().hex() for name, build in BUILDERS.items()}, indent=1) + "\n"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_golden_vector(name: str, tmp_path: Path) -> None:
    pinned = bytes.fromhex(json.loads(VECTORS.read_text())[name])
    assert BUILDERS[name]() == pinned
    path = tmp_path / "vector"
    path.write_bytes(pinned)
    if name == "snapshot file":
        assert read_snapshot(path).to_bytes() == pinned[50:]
    elif name == "checkpoint file":
        local = read_checkpoint(path)
        assert isinstance(local, LocalState) and local.replica == "b~3"


def test_version_2_files_are_read_with_their_epochs_as_a_colour(tmp_path: Path) -> None:
    path = tmp_path / "vector"
    path.write_bytes(bytes.fromhex(VERSION_2["snapshot file"]))
    cut = read_snapshot(path)
    assert cut.id == SnapshotId("a", 1)
    assert cut.states["a"].colour == 1  # epochs {"a": 1}: snapshot 1 is recorded
    assert cut.states["b"].colour == 0
    assert cut.states["a"].state("hits").value == 3  # type: ignore[union-attr]
    path.write_bytes(bytes.fromhex(VERSION_2["checkpoint file"]))
    local = read_checkpoint(path)
    assert isinstance(local, LocalState) and local.replica == "b~3" and local.colour == 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        VECTORS.write_text(render())
    else:
        sys.stdout.write(render())
