"""Replicas in separate processes on loopback: five ``crdtkit node``
processes converge on random operations of every type; one is killed with
SIGKILL and restarted from its snapshot folder under a new incarnation; all
converge again within 10 seconds with nothing acknowledged lost, and a live
Chandy-Lamport snapshot of the running cluster passes the SEC checker.

Every process listens on 127.0.0.1 only, and every wait is bounded."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

from crdtkit.client import Client, live_snapshot
from crdtkit.cluster import LocalCluster, converge, problems
from replication.history import History, random_operation
from snapshot import read_checkpoint
from snapshot.sec import check


async def _operations(
    clients: dict[str, Client], history: History, rng: random.Random, count: int
) -> None:
    nodes = sorted(clients)
    for _ in range(count):
        key, type_name, kind, args = random_operation(rng)
        op = await clients[rng.choice(nodes)].update(key, type_name, kind, *args)
        history.operations.append(op)


def test_five_processes_survive_a_sigkill_and_a_live_snapshot_passes(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> None:
        rng, history = random.Random(5), History()
        clients = await cluster.clients()
        await _operations(clients, history, rng, 150)
        assert await converge(clients) is not None
        # A live snapshot while updates go on.
        updating = asyncio.create_task(_operations(clients, history, rng, 50))
        cut = await live_snapshot(clients, initiator=clients["n3"])
        await updating
        report = check(cut, history)
        assert report.passed, str(report)
        assert sorted(cut.states) == cluster.ids

        clients.pop("n2").close()
        cluster.kill("n2")  # no last checkpoint, no goodbye
        await _operations(clients, history, rng, 50)  # the others go on
        cluster.start("n2")
        clients["n2"] = await cluster.client("n2")
        took = await converge(clients, timeout=10.0)
        assert took is not None, "no convergence within 10 s of the restart"
        for node, client in clients.items():
            assert await problems(client, history) == [], node
        for client in clients.values():
            client.close()

    with LocalCluster(5, tmp_path, interval=0.05) as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 120))
        codes = cluster.stop()
    assert codes == dict.fromkeys(cluster.ids, 0)  # SIGTERM: a clean exit
    restored = read_checkpoint(tmp_path / "n2" / "checkpoint.snap")
    assert restored.replica.startswith("n2~")  # a new incarnation
    assert "restored" in cluster.log("n2")


def test_sigterm_writes_a_last_checkpoint(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> History:
        history = History()
        clients = await cluster.clients()
        await _operations(clients, history, random.Random(1), 20)
        for client in clients.values():
            client.close()
        return history

    with LocalCluster(1, tmp_path) as cluster:
        history = asyncio.run(asyncio.wait_for(test(cluster), 60))
    local = read_checkpoint(tmp_path / "n0" / "checkpoint.snap")
    assert all(local.clock.contains(op.key, *op.dot) for op in history.operations)
    assert "stopped; 20 updates" in cluster.log("n0")


def test_crdtkit_node_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "bad.key"
    key.write_text("not hex\n")
    cases = [
        (["--id", "a", "--listen", "nowhere", "--key-file", str(key), "--folder", "f"],
         "expected HOST:PORT"),
        (["--id", "a", "--listen", "127.0.0.1:0", "--key-file", str(key), "--folder",
          str(tmp_path)], "key file"),
        (["--id", "a", "--listen", "127.0.0.1:0", "--peer", "b", "--key-file", str(key),
          "--folder", str(tmp_path)], "expected ID=HOST:PORT"),
    ]
    for args, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "crdtkit", "node", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_acknowledged_updates_survive_a_sigkill_before_any_checkpoint(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> list[str]:
        history = History()
        clients = await cluster.clients()
        await _operations(clients, history, random.Random(2), 30)
        clients["n0"].close()
        cluster.kill("n0")  # at once: the updates are only in the journal
        cluster.start("n0")
        client = await cluster.client("n0")
        wrong = await problems(client, history)
        client.close()
        return wrong

    with LocalCluster(1, tmp_path) as cluster:
        assert asyncio.run(asyncio.wait_for(test(cluster), 60)) == []
    assert "updates from its journal" in cluster.log("n0")
