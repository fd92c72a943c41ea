"""``crdtkit node`` processes on NATS, through a real ``nats-server`` on
loopback (the ``nats_server`` fixture): five converge on random operations of
every type and a live snapshot of them passes the SEC checker; one is killed
with SIGKILL and restarted with nothing acknowledged lost; a sixth joins
through a seed named by its node id and then leaves, by the client commands
over NATS. Every wait is bounded and every process stopped."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path
from typing import Any

from crdtkit.cli import main
from crdtkit.client import Client, live_snapshot
from crdtkit.cluster import LocalCluster, converge, problems
from replication.history import History, random_operation
from snapshot.sec import check
from tests.test_cluster import _until


async def _operations(
    clients: dict[str, Client], history: History, rng: random.Random, count: int
) -> None:
    nodes = sorted(clients)
    for _ in range(count):
        key, type_name, kind, args = random_operation(rng)
        op = await clients[rng.choice(nodes)].update(key, type_name, kind, *args)
        history.operations.append(op)


def test_nats_processes_converge_pass_sec_survive_a_sigkill_join_and_leave(
    nats_server: Any, tmp_path: Path
) -> None:
    # One cluster for every case: a process start costs about a second.
    async def test(cluster: LocalCluster) -> None:
        rng, history = random.Random(12), History()
        clients = await cluster.clients()
        await _operations(clients, history, rng, 60)
        assert await converge(clients, timeout=15.0) is not None
        updating = asyncio.create_task(_operations(clients, history, rng, 30))
        cut = await live_snapshot(clients, initiator=clients["n4"])
        await updating
        report = check(cut, history)
        assert report.passed, str(report)
        assert sorted(cut.states) == cluster.ids

        clients.pop("n2").close()
        cluster.kill("n2")  # no last checkpoint, no goodbye
        await _operations(clients, history, rng, 30)
        cluster.start("n2")
        cluster.join("n5", ["n0"])  # knows one seed, by node id, and no peer
        clients["n2"] = await cluster.client("n2")
        clients["n5"] = await cluster.client("n5")
        op = await clients["n5"].update("joined", "GCounter", "increment", 3)
        history.operations.append(op)
        assert await converge(clients, timeout=15.0) is not None, "no convergence after restart"
        for node, client in clients.items():
            assert await problems(client, history) == [], node
        stats = await clients["n0"].stats()
        assert stats["requests_refused"] == 0 and stats["frames_refused_by_transport"] == 0

        six = sorted((node, "up") for node in cluster.ids)

        async def all_up() -> bool:
            views = await asyncio.gather(*(c.members() for c in clients.values()))
            return all(sorted((m.node, m.status) for m in v if m.status != "removed") == six
                       for v in views)

        await _until(all_up, 15.0, "every node sees six members up")
        nats = ["--nats", nats_server.url, "--cluster", cluster.cluster,
                "--key-file", str(cluster.key_file)]
        said = io.StringIO()
        assert await asyncio.to_thread(main, ["members", "--node", "n1", *nats], said, said) == 0
        assert "crdtkit.five.requests.n5" in said.getvalue(), said.getvalue()
        # Consistency levels over NATS: a majority write, then a majority read elsewhere.
        said = io.StringIO()
        ask = ["ask", "--node", "n1", *nats, "update", "levels", "GCounter", "increment", "2",
               "--write", "majority"]
        assert await asyncio.to_thread(main, ask, said, said) == 0, said.getvalue()
        said = io.StringIO()
        ask = ["ask", "--node", "n3", *nats, "get", "levels", "--read", "majority"]
        assert await asyncio.to_thread(main, ask, said, said) == 0, said.getvalue()
        assert "levels = 2" in said.getvalue(), said.getvalue()
        said = io.StringIO()
        assert await asyncio.to_thread(main, ["leave", "--node", "n5", *nats], said, said) == 0, \
            said.getvalue()
        assert "is leaving" in said.getvalue()
        clients.pop("n5").close()
        assert await asyncio.to_thread(cluster.processes["n5"].wait, 20) == 0

        async def left() -> bool:
            views = await asyncio.gather(*(c.members() for c in clients.values()))
            return all(any(m.node == "n5" and m.status == "removed" for m in v) for v in views)

        await _until(left, 10.0, "n5 removed everywhere")
        for client in clients.values():
            held = await client.entry("joined")
            assert held is not None and held.dots.contains(*op.dot)  # what it wrote lives on
            client.close()

    with LocalCluster(5, tmp_path, interval=0.05, nats_url=nats_server.url,
                      cluster="five") as cluster:
        asyncio.run(asyncio.wait_for(test(cluster), 120))
        codes = cluster.stop()
    assert codes == dict.fromkeys(cluster.ids, 0)  # SIGTERM or a leave: a clean exit
    assert "restored" in cluster.log("n2")
