"""The ``crdtkit`` command: the demo, check and inspect, and one clear line
with exit status 2 for every bad argument or file."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from crdtkit.cli import main
from crdtkit.demo import DemoConfig, run_demo
from crdts import GCounter
from replication import Replicator
from replication.history import History
from replication.sqlite import DATABASE, SQLiteStore
from replication.store import encode_row
from snapshot import (
    GlobalSnapshot,
    LocalState,
    SnapshotId,
    SnapshotNode,
    write_checkpoint,
    write_snapshot,
)
from snapshot.files import write_atomic

SMALL = ["--nodes", "4", "--operations", "80", "--keys", "3", "--seed", "5"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_demo_takes_a_snapshot_mid_run_and_every_verdict_passes(tmp_path: Path) -> None:
    path = tmp_path / "cut.snap"
    status, out, err = run("demo", *SMALL, "--snapshot-file", str(path), "--no-progress")
    assert status == 0, out + err
    assert err == ""
    assert out.splitlines()[-1] == "verdict: PASS"
    for line in ("SEC on the mid-run cut:", "SEC on the final cut:", "byte-identical"):
        assert line in out
    assert out.count("join equals specification .. ok") == 2
    status, out, _ = run("check", str(path))
    assert status == 0
    assert "consistent cut ............. ok" in out
    assert "not checked (no operation log)" in out
    status, out, _ = run("inspect", str(path))
    assert status == 0
    assert "4 replicas:" in out and "joined over the cut" in out


def test_check_with_the_operation_log_gives_every_verdict(tmp_path: Path) -> None:
    cut, log = tmp_path / "cut.snap", tmp_path / "ops.log"
    status, out, _ = run("demo", *SMALL, "--snapshot-file", str(cut), "--log-file", str(log))
    assert status == 0, out
    status, out, _ = run("check", str(cut), "--log", str(log))
    assert status == 0, out
    assert "join equals specification .. ok" in out
    status, _, err = run("check", str(cut), "--log", str(cut))  # a snapshot is not a log
    assert status == 2
    assert err.count("\n") == 1 and "not a valid log" in err


def test_a_checkpoint_is_checked_and_inspected_as_a_cut_of_one(tmp_path: Path) -> None:
    node = SnapshotNode(Replicator("a", [], rng=random.Random(1)))
    history = History()
    history.apply(node.replica, "hits", "GCounter", "increment", 3)
    write_checkpoint(tmp_path / "a.ckpt", node.checkpoint())
    write_atomic(tmp_path / "ops.log", history.to_bytes())
    status, out, _ = run("check", str(tmp_path / "a.ckpt"), "--log", str(tmp_path / "ops.log"))
    assert status == 0
    assert out.startswith(f"SEC on the checkpoint of a (a) in {tmp_path / 'a.ckpt'}:")
    assert "join equals specification .. ok" in out
    status, out, _ = run("inspect", str(tmp_path / "a.ckpt"))
    assert status == 0
    assert "hits (GCounter, " in out and "): 3" in out


def test_demo_shows_progress_when_asked() -> None:
    status, _, err = run("demo", *SMALL, "--progress")
    assert status == 0
    assert "80/80 operations" in err and "initiated" in err


def test_the_demo_is_deterministic_for_its_seed() -> None:
    config = DemoConfig(nodes=3, operations=40, keys=2, seed=9)
    first, second = run_demo(config), run_demo(config)
    assert first.mid_run == second.mid_run
    assert first.network == second.network


def test_check_fails_an_inconsistent_cut(tmp_path: Path) -> None:
    a = Replicator("a", ["b"], rng=random.Random(1))
    b = Replicator("b", ["a"], rng=random.Random(2))
    early_a = LocalState.capture(a)  # a's state is recorded, then a updates ...
    delta = a.update("hits", GCounter, lambda c, me: c.increment(me))
    b_entries = (LocalState.capture(a).entries[0],)  # ... and b holds the update
    late_b = LocalState("b", b.replica_id, b_entries)
    path = tmp_path / "bad.snap"
    write_snapshot(path, GlobalSnapshot(SnapshotId("a", 1), {"a": early_a, "b": late_b}))
    status, out, _ = run("check", str(path))
    assert delta.value == 1
    assert status == 1
    assert "consistent cut ............. FAILED: b holds 1 operation of a" in out


_NODE = ["node", "--id", "a", "--listen", "127.0.0.1:1", "--key-file", "k", "--folder", "f"]


def test_the_node_takes_its_connection_limits_and_its_help_states_the_defaults() -> None:
    from crdtkit.cli import LIMIT_OPTIONS, _parser
    from crdtkit.serve import limits_of
    from replication.tcp import Limits

    default = Limits()
    assert limits_of(_parser().parse_args(_NODE)) == default
    args = _parser().parse_args([*_NODE, "--max-clients", "4", "--max-peers", "2",
                                 "--startups", "2:50:8", "--handshake-timeout", "0.5"])
    assert limits_of(args) == Limits(max_clients=4, max_peers=2, startups=(2, 50, 8),
                                     handshake_timeout=0.5)
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    node = commands["node"]
    helps = {a.option_strings[0]: a.help or "" for a in node._actions if a.option_strings}
    start, rate, full = default.startups
    stated = {"--max-clients": f"({default.max_clients})", "--max-peers": f"({default.max_peers})",
              "--startups": f"({start}:{rate}:{full})",
              "--handshake-timeout": f"({default.handshake_timeout:g} s)"}
    assert set(stated) == set(LIMIT_OPTIONS)
    for option, text in stated.items():
        assert helps[option].endswith(text), (option, helps[option])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["dance"], "invalid choice: 'dance'"),
        (["demo", "--nodes", "1"], "--nodes: must be between 2 and 1,024, got 1"),
        (["demo", "--nodes", "many"], "--nodes: not a whole number: 'many'"),
        (["demo", "--loss", "1.5"], "--loss: a probability is between 0 and 1, got 1.5"),
        (["demo", "--duplication", "nan%"], "--duplication: not a number: 'nan%'"),
        (["demo", "--operations", "-3"], "--operations: must be between 0 and 1,000,000"),
        (["demo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["check"], "the following arguments are required: FILE"),
        (["check", "a", "b"], "unrecognized arguments: b"),
        ([*_NODE, "--startups", "10:30"], "--startups: expected START:RATE:FULL, got '10:30'"),
        ([*_NODE, "--startups", "9:30:8"], "START:RATE:FULL needs 1 <= START <= FULL"),
        ([*_NODE, "--max-clients", "0"], "--max-clients: must be between 1 and 65,536, got 0"),
        (["node", "--id", "a", "--nats", "nats://127.0.0.1:1", "--cluster", "c", "--key-file",
          "k", "--folder", "f", "--max-peers", "3"], "--max-peers is for the TCP runtime"),
    ],
)
def test_a_bad_argument_gets_one_line(argv: list[str], message: str) -> None:
    status, out, err = run(*argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err, err


def test_a_bad_file_gets_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.snap"
    garbage.write_bytes(b"CRDTSNAP but then nonsense")
    write_atomic(tmp_path / "ops.log", History().to_bytes())
    cases = {
        str(tmp_path / "missing.snap"): "cannot read",
        str(tmp_path): "cannot read",  # a folder
        str(garbage): "snapshot file",
        str(tmp_path / "ops.log"): "not a valid snapshot or checkpoint",
    }
    for path, expected in cases.items():
        for command in ("check", "inspect"):
            message = expected
            if command == "inspect" and path == str(tmp_path):
                message = "holds no store.db: not a node's folder"
            status, out, err = run(command, path)
            assert status == 2, (command, path)
            assert out == ""
            assert err.count("\n") == 1 and message in err, err


def test_the_installed_command_never_prints_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crdtkit", "check", str(tmp_path / "nothing.snap")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("crdtkit: cannot read") and "Traceback" not in done.stderr


def test_inspect_reads_a_node_folder_even_while_the_node_holds_it(tmp_path: Path) -> None:
    replica = Replicator("n0", [], rng=random.Random(1))
    History().apply(replica, "hits", "GCounter", "increment", 3)
    store = SQLiteStore(tmp_path, node="n0")
    try:
        entry = replica.entry("hits")
        assert entry is not None
        rows = [("hits", encode_row(entry))]
        store.commit(rows, [(b"request", b"answer")], {"node": b"n0", "replica": b"n0~7"})
        status, out, err = run("inspect", str(tmp_path))  # the lock is held
    finally:
        store.close()
    assert (status, err) == (0, "")
    assert "the store of node n0 (last started as n0~7)" in out
    assert "1 answers kept" in out and "hits (GCounter, " in out and "): 3" in out


def test_inspect_refuses_a_damaged_node_folder_in_one_line(tmp_path: Path) -> None:
    (tmp_path / DATABASE).write_bytes(bytes(range(256)) * 20)
    status, out, err = run("inspect", str(tmp_path))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and "is damaged" in err
