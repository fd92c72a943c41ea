"""Consistency levels between processes (docs/consistency.md): the time of an
update and of a read at ``majority`` and ``all`` through one node of a
5-process loopback cluster, beside the same request at ``local`` on the same
node in the same run (the floor: a commit, or a read of the node's replica);
then the same with 2 of the 5 nodes stopped, where ``majority`` must still
succeed (``all`` would wait out its timeout, so it is not timed).

Requests go one at a time, alternating between the floor and the figure
request by request, so a shared machine's slow moments hit both. Every
process is stopped when the rows are done, whatever happens, and every wait
is bounded. Reported only: no target.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from random import Random
from time import perf_counter

from bench.harness import Config, Row, Timing
from crdtkit.client import Client, Written
from crdtkit.cluster import LocalCluster
from replication.consistency import Level

#: Nodes in the cluster, and those stopped for the second half.
NODES = 5
STOPPED = ("n3", "n4")
#: Seconds between gossip rounds (``crdtkit node --interval``).
INTERVAL = 0.2
#: Seconds a request waits for its level; bounds on a cluster's start.
TIMEOUT = 5.0
UP_TIMEOUT = 30.0


async def _all_up(cluster: LocalCluster) -> None:
    clients = await cluster.clients()
    try:
        for _ in range(int(UP_TIMEOUT / 0.1)):
            views = [await c.members() for c in clients.values()]
            if all(sum(m.status == "up" for m in view) == NODES for view in views):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the {NODES} nodes were not all up after {UP_TIMEOUT} s")
    finally:
        for client in clients.values():
            client.close()


async def _timed(
    client: Client, level: Level, count: int, warmup: int, rng: Random, *, read: bool
) -> tuple[list[float], list[float]]:
    """``count`` requests at ``local`` and at ``level``, alternating: their
    times, the warm-up left out."""
    local: list[float] = []
    figure: list[float] = []
    for i in range(count + warmup):
        key = f"levels-{rng.randrange(10)}"
        for at, into in (("local", local), (level, figure)):
            start = perf_counter()
            if read:
                if at == "local":
                    await client.get(key)
                else:
                    await client.get(key, level=level, timeout=TIMEOUT)
            elif at == "local":
                await client.update(key, "GCounter", "increment", 1)
            else:
                done = await client.update(key, "GCounter", "increment", 1, level=level,
                                           timeout=TIMEOUT)
                if not isinstance(done, Written) or not done.reached.ok:
                    raise RuntimeError(f"{done} on a cluster that should reach {level}")
            if i >= warmup:
                into.append(perf_counter() - start)
    return local, figure


def _row(name: str, per: str, floor_is: str, samples: tuple[list[float], list[float]],
         note: str) -> Row:
    floor, figure = samples
    return Row(name, per, floor_is, Timing.of(floor), Timing.of(figure), None, note)


async def _measure(cluster: LocalCluster, count: int, warmup: int, rng: Random,
                   stop: bool) -> list[Row]:
    client = await cluster.client("n0")
    try:
        where = f"{NODES - len(STOPPED)} of {NODES} running" if stop else f"{NODES} processes"
        levels: tuple[Level, ...] = ("majority",) if stop else ("majority", "all")
        rows = []
        for level in levels:
            rows.append(_row(
                f"levels: update at {level}, {where}", "update", "update at local",
                await _timed(client, level, count, warmup, rng, read=False),
                "pushed to the members at once, acknowledged by enough of them",
            ))
            rows.append(_row(
                f"levels: read at {level}, {where}", "read", "read at local",
                await _timed(client, level, count, warmup, rng, read=True),
                "gathered from the members and merged",
            ))
        return rows
    finally:
        client.close()


def levels(config: Config, rng: Random) -> list[Row]:
    """Updates and reads at ``majority`` and ``all`` through one node of a
    5-process cluster, beside ``local`` (see the module docstring)."""
    count = 10 if config.quick else 200
    warmup = 2 if config.quick else 20
    with tempfile.TemporaryDirectory(prefix="crdtkit-levels-") as folder:
        cluster = LocalCluster(NODES, Path(folder), interval=INTERVAL)
        try:
            cluster.start()
            asyncio.run(asyncio.wait_for(_all_up(cluster), UP_TIMEOUT + 10))
            rows = asyncio.run(_measure(cluster, count, warmup, rng, stop=False))
            for node in STOPPED:
                cluster.kill(node)
            rows += asyncio.run(_measure(cluster, count, warmup, rng, stop=True))
        finally:
            cluster.stop()
    return rows
