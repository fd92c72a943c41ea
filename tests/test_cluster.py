"""Replicas in separate processes on loopback: five ``crdtkit node``
processes converge on random operations of every type; one is killed with
SIGKILL and restarted from its folder's store under a new incarnation; all
converge again within 10 seconds with nothing acknowledged lost, and a live
Chandy-Lamport snapshot of the running cluster passes the SEC checker.

Every process listens on 127.0.0.1 only, and every wait is bounded."""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from crdtkit.cli import main
from crdtkit.client import Client, live_snapshot
from crdtkit.cluster import LocalCluster, converge, problems
from replication.history import History, random_operation
from replication.sqlite import SQLiteStore
from replication.store import Stored
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
    assert _stored(tmp_path / "n2").meta["replica"].startswith(b"n2~")  # a new incarnation
    assert "restored" in cluster.log("n2")


def _stored(folder: Path) -> Stored:
    store = SQLiteStore(folder, node=folder.name)
    try:
        return store.load()
    finally:
        store.close()


def test_sigterm_writes_everything_down(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> History:
        history = History()
        clients = await cluster.clients()
        await _operations(clients, history, random.Random(1), 20)
        for client in clients.values():
            client.close()
        return history

    with LocalCluster(1, tmp_path) as cluster:
        history = asyncio.run(asyncio.wait_for(test(cluster), 60))
    stored = _stored(tmp_path / "n0")
    held = {e.key: e.dots for e in stored.entries}
    assert all(held[op.key].contains(*op.dot) for op in history.operations)
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
        (["--id", "a", "--listen", "127.0.0.1:0", "--seed", "b", "--key-file", str(key),
          "--folder", str(tmp_path)], "expected HOST:PORT"),
    ]
    for args, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "crdtkit", "node", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_acknowledged_updates_survive_a_sigkill_before_any_flush(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> list[str]:
        history = History()
        clients = await cluster.clients()
        await _operations(clients, history, random.Random(2), 30)
        clients["n0"].close()
        cluster.kill("n0")  # at once: before the node's flush interval
        cluster.start("n0")
        client = await cluster.client("n0")
        wrong = await problems(client, history)
        client.close()
        return wrong

    with LocalCluster(1, tmp_path) as cluster:
        assert asyncio.run(asyncio.wait_for(test(cluster), 60)) == []
    assert "restored" in cluster.log("n0")


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


def test_a_node_joins_through_a_seed_and_once_killed_and_downed_is_removed(
    tmp_path: Path,
) -> None:
    async def views(clients: dict[str, Client]) -> dict[str, list[tuple[str, str, bool]]]:
        return {
            node: [(m.node, m.status, m.unreachable) for m in await client.members()]
            for node, client in clients.items()
        }

    async def test(cluster: LocalCluster) -> None:
        rng, history = random.Random(7), History()
        clients = await cluster.clients()
        await _operations(clients, history, rng, 20)
        cluster.join("n3", ["n0"])  # it knows one seed, and no peer
        clients["n3"] = await cluster.client("n3")
        await _operations(clients, history, rng, 20)
        assert await converge(clients, timeout=15.0) is not None
        up = [(node, "up", False) for node in cluster.ids]

        async def all_up() -> bool:
            return all(v == up for v in (await views(clients)).values())

        await _until(all_up, 10.0, "every node sees four members up")
        n3 = next(m.member for m in await clients["n0"].members() if m.node == "n3")

        clients.pop("n3").close()
        cluster.kill("n3")  # SIGKILL: no goodbye

        async def unreachable() -> bool:
            return all(("n3", "up", True) in v for v in (await views(clients)).values())

        await _until(unreachable, 15.0, "n3 unreachable everywhere")
        said = io.StringIO()  # the operator's command, beside the client call
        args = ["down", "n3", "--node", f"127.0.0.1:{cluster.addresses['n1'][1]}",
                "--key-file", str(cluster.key_file)]
        assert await asyncio.to_thread(main, args, said, said) == 0, said.getvalue()
        assert f"downed {n3}" in said.getvalue()

        async def removed() -> bool:
            seen = await asyncio.gather(*(c.members() for c in clients.values()))
            return all(
                [(m.node, m.status, m.unreachable) for m in v if m.status != "removed"]
                == up[:3] and any(m.member == n3 and m.status == "removed" for m in v)
                for v in seen
            )

        await _until(removed, 10.0, "n3 removed everywhere")
        stats = await asyncio.gather(*(c.stats() for c in clients.values()))
        assert all(s["unreachable"] == 0 and s["members"] == 3 for s in stats)
        for node, client in clients.items():
            assert await problems(client, history) == [], node

        # A graceful leave: n4 joins through n2, writes, leaves, and stops by
        # itself once removed; what it wrote lives on.
        cluster.join("n4", ["n2"])
        n4 = await cluster.client("n4")
        op = await n4.update("left-behind", "GCounter", "increment", 5)
        assert await n4.leave() == "leaving"
        n4.close()
        assert await asyncio.to_thread(cluster.processes["n4"].wait, 15) == 0

        async def left() -> bool:
            return all(
                any(m.node == "n4" and m.status == "removed" for m in v)
                and not any(m.node == "n4" and m.status != "removed" for m in v)
                for v in await asyncio.gather(*(c.members() for c in clients.values()))
            )

        await _until(left, 10.0, "n4 removed everywhere")
        for client in clients.values():
            held = await client.entry("left-behind")
            assert held is not None and held.dots.contains(*op.dot)
            client.close()

    options = ["--acceptable-pause", "0.5"]
    with LocalCluster(3, tmp_path, interval=0.05, options=options) as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 90))
        codes = cluster.stop()
    assert codes == {"n0": 0, "n1": 0, "n2": 0, "n4": 0}
    assert "member n3" in cluster.log("n0") and "is unreachable" in cluster.log("n2")


def test_a_killed_node_once_downed_is_pruned_and_its_updates_kept(tmp_path: Path) -> None:
    async def test(cluster: LocalCluster) -> None:
        clients = await cluster.clients()
        for n, (_, client) in enumerate(sorted(clients.items())):
            await client.update("hits", "GCounter", "increment", n + 1)
        assert await converge(clients, timeout=15.0) is not None
        gone = next(m.member for m in await clients["n0"].members() if m.node == "n2")
        clients.pop("n2").close()
        cluster.kill("n2")
        survivors = list(clients.values())

        async def unreachable() -> bool:
            views = await asyncio.gather(*(c.members() for c in survivors))
            return all(any(m.node == "n2" and m.unreachable for m in v) for v in views)

        await _until(unreachable, 15.0, "n2 unreachable")
        assert await clients["n0"].down("n2") == [gone]

        async def pruned() -> bool:
            entries = await asyncio.gather(*(c.entry("hits") for c in survivors))
            return all(e is not None and gone not in e.dots.origins() for e in entries)

        await _until(pruned, 20.0, f"{gone} pruned everywhere")
        # Folded into a live member, not lost, not counted twice.
        states = await asyncio.gather(*(c.get("hits") for c in survivors))
        assert [getattr(s, "value", None) for s in states] == [6, 6]
        for client in survivors:
            client.close()

    options = ["--acceptable-pause", "0.5", "--prune-after", "0.5"]
    with LocalCluster(3, tmp_path, interval=0.05, options=options) as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 60))
        cluster.stop()
