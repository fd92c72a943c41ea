"""``crdtkit node`` processes on NATS, through a real ``nats-server`` on
loopback (the ``nats_server`` fixture): five converge on random operations of
every type and a live snapshot of them passes the SEC checker; one is killed
with SIGKILL and restarted with nothing acknowledged lost; a node joins
through a seed named by its node id and another leaves, by the client
commands over NATS. Every wait is bounded and every process stopped."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crdtkit.cli import main
from crdtkit.client import Client, live_snapshot
from crdtkit.cluster import LocalCluster, converge, problems
from replication.history import History, random_operation
from snapshot.sec import check


async def _operations(
    clients: dict[str, Client], history: History, rng: random.Random, count: int
) -> None:
    nodes = sorted(clients)
    for _ in range(count):
        key, type_name, kind, args = random_operation(rng)
        op = await clients[rng.choice(nodes)].update(key, type_name, kind, *args)
        history.operations.append(op)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


def test_five_nats_processes_converge_pass_sec_and_survive_a_sigkill(
    nats_server: Any, tmp_path: Path
) -> None:
    async def test(cluster: LocalCluster) -> None:
        rng, history = random.Random(12), History()
        clients = await cluster.clients()
        await _operations(clients, history, rng, 100)
        assert await converge(clients, timeout=15.0) is not None
        updating = asyncio.create_task(_operations(clients, history, rng, 40))
        cut = await live_snapshot(clients, initiator=clients["n4"])
        await updating
        report = check(cut, history)
        assert report.passed, str(report)
        assert sorted(cut.states) == cluster.ids

        clients.pop("n2").close()
        cluster.kill("n2")  # no last checkpoint, no goodbye
        await _operations(clients, history, rng, 40)
        cluster.start("n2")
        clients["n2"] = await cluster.client("n2")
        assert await converge(clients, timeout=15.0) is not None, "no convergence after restart"
        for node, client in clients.items():
            assert await problems(client, history) == [], node
        stats = await clients["n0"].stats()
        assert stats["requests_refused"] == 0 and stats["frames_refused_by_transport"] == 0
        for client in clients.values():
            client.close()

    with LocalCluster(5, tmp_path, interval=0.05, nats_url=nats_server.url,
                      cluster="five") as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 90))
        codes = cluster.stop()
    assert codes == dict.fromkeys(cluster.ids, 0)  # SIGTERM: a clean exit
    assert "restored" in cluster.log("n2")


def test_a_nats_node_joins_by_node_id_and_another_leaves_by_command(
    nats_server: Any, tmp_path: Path
) -> None:
    async def test(cluster: LocalCluster) -> None:
        clients = await cluster.clients()
        cluster.join("n2", ["n0"])  # knows one seed, by node id, and no peer
        clients["n2"] = await cluster.client("n2")
        op = await clients["n2"].update("joined", "GCounter", "increment", 3)

        async def all_up() -> bool:
            views = await asyncio.gather(*(c.members() for c in clients.values()))
            return all(sorted((m.node, m.status) for m in v) ==
                       [("n0", "up"), ("n1", "up"), ("n2", "up")] for v in views)

        await _until(all_up, 15.0, "every node sees three members up")
        nats = ["--nats", nats_server.url, "--cluster", cluster.cluster,
                "--key-file", str(cluster.key_file)]
        said = io.StringIO()
        assert await asyncio.to_thread(main, ["members", "--node", "n1", *nats], said, said) == 0
        assert "n2" in said.getvalue() and "crdtkit.join.requests.n2" in said.getvalue()
        said = io.StringIO()
        assert await asyncio.to_thread(main, ["leave", "--node", "n2", *nats], said, said) == 0, \
            said.getvalue()
        assert "is leaving" in said.getvalue()
        clients.pop("n2").close()
        assert await asyncio.to_thread(cluster.processes["n2"].wait, 20) == 0

        async def left() -> bool:
            views = await asyncio.gather(*(c.members() for c in clients.values()))
            return all(any(m.node == "n2" and m.status == "removed" for m in v) for v in views)

        await _until(left, 10.0, "n2 removed everywhere")
        for client in clients.values():
            held = await client.entry("joined")
            assert held is not None and held.ops.contains(*op.dot)  # what it wrote lives on
            client.close()

    with LocalCluster(2, tmp_path, interval=0.05, nats_url=nats_server.url,
                      cluster="join") as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 60))
        codes = cluster.stop()
    assert codes == {"n0": 0, "n1": 0, "n2": 0}
