"""Nodes in separate processes: updates per second through one node (one
client, and ``CLIENTS`` concurrent ones), convergence time after a burst,
and bytes on the wire per operation with deltas against full-state gossip.

Every cluster is a :class:`crdtkit.cluster.LocalCluster` of ``python -m
crdtkit node`` processes on 127.0.0.1, gossiping every ``INTERVAL`` seconds,
in a temporary folder; every process is stopped (SIGTERM, then SIGKILL) when
its rows are done, whatever happens, and every wait is bounded. The workload
(``replication.history.random_operation``: random updates of every built-in
type) is seeded from the benchmark's ``random.Random``; the nodes' own choices
(gossip peers, incarnations) are not, so figures vary from run to run more
than the simulated ones do. Every run checks its result: all the updates a
node acknowledged are in the converged keyspace, with the values the
sequential specification gives (``crdtkit.cluster.problems``).

First a 1-process cluster for the ``CLIENTS`` concurrent clients (a node
once took at most 8 connections from one address, peers included; the row
keeps its own node so that its figures compare); then one
cluster per size in ``BURST_CLUSTERS``, started fresh: on the
``THROUGH``-process one the sequential updates run first, then the preload
and the bursts; on the others only the preload and the bursts.

Unlike the in-process rows, these measure a whole system (processes, the
event loop, TCP on loopback, MACs, fsyncs) on a shared machine: read the
ratios as orders of magnitude.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import statistics
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from time import perf_counter, process_time
from typing import Any, TypeVar

from bench.harness import Config, Row, Timing, size
from crdtkit.client import Client
from crdtkit.cluster import LocalCluster, converge, problems
from crdtkit.node import MAX_IN_FLIGHT
from crdts.base import CRDT
from replication import Replicator
from replication.dotranges import DotRanges
from replication.history import TYPES, History, Operation, random_operation
from replication.replicator import Staged
from replication.sqlite import SQLiteStore
from replication.store import encode_row

T = TypeVar("T")

#: Seconds between a node's gossip rounds (``crdtkit node --interval``).
INTERVAL = 0.05
#: Cluster sizes of the burst rows; the sequential updates go through the
#: first node of the ``THROUGH``-process one, before its bursts.
BURST_CLUSTERS = (3, 5)
THROUGH = 3
#: Keys per type of the sequential updates (``random_operation``'s default).
THROUGH_KEYS = 3
#: Connections of the concurrent-clients row, each to the same node. That row
#: runs on a node of its own (as when a node took at most 8 connections from
#: one address, peers included; now clients count against ``Limits.max_clients``).
CLIENTS = 8
#: The issue's target for ``CLIENTS`` concurrent clients, updates per second.
TARGET_RATE = 10_000
#: Updates one pipelining client keeps in flight on its one connection
#: (``crdtkit.node.MAX_IN_FLIGHT``, what a node serves at once per connection).
PIPELINE = MAX_IN_FLIGHT
#: Bounds: on one convergence, and on all the work with one cluster.
CONVERGE_TIMEOUT = 20.0
DEADLINE = 600.0

#: An update as ``random_operation`` gives it: (key, type name, kind, args).
Op = tuple[str, str, str, tuple[Any, ...]]


@dataclass(frozen=True)
class _Sizes:
    ops: int  # sequential updates per timed repetition through one node
    burst: int  # updates per burst, spread over the nodes
    burst_keys: int  # keys per type of a burst (fresh names each burst)
    preload: int  # updates spread over the nodes before the bursts
    preload_keys: int  # keys per type of the preload
    concurrent: int  # updates per timed repetition over the ``CLIENTS`` connections
    pipelined: int  # updates per timed repetition of the pipelining client


_FULL = _Sizes(
    ops=300, burst=100, burst_keys=5, preload=1_000, preload_keys=100, concurrent=2_000,
    pipelined=10_000,
)
_QUICK = _Sizes(ops=20, burst=20, burst_keys=3, preload=30, preload_keys=10, concurrent=128,
                pipelined=256)


def _run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(work, DEADLINE))


def _ops(rng: Random, count: int, keys: int, prefix: str = "") -> list[Op]:
    out: list[Op] = []
    for _ in range(count):
        key, type_name, kind, args = random_operation(rng, keys)
        out.append((prefix + key, type_name, kind, args))
    return out




def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"






class _Cluster:
    """A started :class:`LocalCluster` that is stopped on leaving, even when
    a node failed to start (``LocalCluster.__enter__`` would leave the nodes
    it started running)."""

    def __init__(self, size: int, folder: Path) -> None:
        self.cluster = LocalCluster(size, folder, interval=INTERVAL)

    def __enter__(self) -> LocalCluster:
        try:
            self.cluster.start()
        except BaseException:
            self.cluster.stop()
            raise
        return self.cluster

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()


async def _check(client: Client, history: History) -> None:
    wrong = await problems(client, history)
    if wrong:
        raise RuntimeError(f"the cluster lost or garbled updates: {wrong[:3]}")


# -- 1. sequential updates through one node ------------------------------------------


@dataclass(frozen=True)
class _Through:
    floor: Timing
    figure: Timing
    trip: Timing


async def _through_one_node(
    clients: Mapping[str, Client], folder: Path, config: Config, sizes: _Sizes, rng: Random
) -> _Through:
    client = clients["n0"]
    replica = Replicator("n0", sorted(set(clients) - {"n0"}), rng=Random(rng.getrandbits(64)))
    store = SQLiteStore(folder / "floor", node="n0")
    floor_history, figure_history = History(), History()
    floor: list[float] = []
    figure: list[float] = []
    trip: list[float] = []
    for i in range(config.warmup + config.repeat):
        ops = _ops(rng, sizes.ops, THROUGH_KEYS)
        gc.collect()
        start = perf_counter()
        for key, type_name, kind, args in ops:
            _commit_one(replica, store, floor_history, (key, type_name, kind, args))
        floor_s = (perf_counter() - start) / len(ops)
        gc.collect()
        start = perf_counter()
        for key, type_name, kind, args in ops:
            figure_history.operations.append(await client.update(key, type_name, kind, *args))
        figure_s = (perf_counter() - start) / len(ops)
        gc.collect()
        start = perf_counter()
        for _ in ops:
            await client.keyspace()
        trip_s = (perf_counter() - start) / len(ops)
        if i >= config.warmup:
            floor.append(floor_s)
            figure.append(figure_s)
            trip.append(trip_s)
    store.close()
    await _check(client, figure_history)
    if floor_history.problems([replica]):
        raise RuntimeError("the in-process floor replica does not match its updates")
    return _Through(Timing.of(floor), Timing.of(figure), Timing.of(trip))


def _commit_one(replica: Replicator, store: SQLiteStore, history: History, op: Op) -> None:
    """One update as the node makes it durable: staged, its key's row and its
    answer committed, then applied."""
    _commit_batch(replica, store, history, [op])


def _commit_batch(
    replica: Replicator, store: SQLiteStore, history: History, ops: Sequence[Op]
) -> None:
    """Updates as the node makes a group of them durable: all staged, their
    keys' rows (each once, as staged last) and their answers committed in one
    transaction, then applied."""
    batch = replica.stage()
    rows: dict[str, bytes] = {}
    answers: list[tuple[bytes, bytes]] = []
    done: list[Operation] = []
    for key, type_name, kind, args in ops:
        delta, dot, observed = _stage(batch, history, (key, type_name, kind, args))
        rows[key] = encode_row(batch.entry(key))
        request = len(history.operations) + len(done)
        answers.append((request.to_bytes(16, "big"), b"answer"))
        done.append(Operation(key, type_name, kind, args, dot, observed, delta))
    store.commit(sorted(rows.items()), answers)
    replica.apply(batch)
    history.operations += done


def _stage(batch: Staged, history: History, op: Op) -> tuple[CRDT, tuple[str, int], DotRanges]:
    key, type_name, kind, args = op
    spec = history.spec(type_name)
    return batch.update(key, spec.new, lambda s, me: spec.mutate(s, me, kind, args))


def _through_row(config: Config, sizes: _Sizes, result: _Through) -> Row:
    note = (
        f"figure = seconds per update (median {1 / result.figure.median:,.0f} updates/s): "
        f"one client sends {sizes.ops:,} updates (random_operation over every type, "
        f"{THROUGH_KEYS} keys per type) one after the other to one node of a {THROUGH}-process "
        f"cluster gossiping every {INTERVAL * 1e3:g} ms, each awaited until the node "
        "acknowledges it durable (its own SQLite commit, as the client waits alone); "
        f"{config.repeat} timed repetitions after {config.warmup} warm-up, alternating with "
        "the floor; the floor does the node's durable work without the process, the "
        "network and the protocol, so the ratio is what they cost on top. A keyspace() "
        f"round trip to the same node (no write) takes {result.trip.median * 1e3:.3g} ms "
        f"[{result.trip.low * 1e3:.3g}-{result.trip.high * 1e3:.3g}] "
        f"(an update takes {result.figure.median / result.trip.median:.1f}x that). "
        "Target (the issue): within 2x of the floor"
    )
    return Row(
        f"tcp updates through one node, {THROUGH} processes",
        "op",
        "the same updates staged on a Replicator in-process, each key's row and the "
        "answer committed to a SQLiteStore (one commit per update), then applied, as "
        "the node does, same folder",
        result.floor,
        result.figure,
        2.0,
        note,
    )


# -- 1b. concurrent clients through one node -------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system) that the live threads of process ``pid``
    ran so far, in nanoseconds' resolution (Linux's schedstat: the clock
    ticks of /proc/PID/stat are too coarse for a quick run)."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9


@dataclass(frozen=True)
class _Measured:
    floor: Timing  # seconds per update, in-process groups
    figure: Timing  # seconds per update, through the node
    floor_cpu: Timing  # CPU seconds per update of the in-process floor
    node_cpu: Timing  # CPU seconds per update of the node process
    client_cpu: Timing  # CPU seconds per update of this process, the clients
    load: tuple[float, float]  # the machine's 1-minute load average, before and after


async def _concurrent(
    clients: Sequence[Client],
    folder: Path,
    config: Config,
    sizes: _Sizes,
    rng: Random,
    *,
    node: int,
    prefix: str,
) -> _Measured:
    """Seconds per update, and CPU seconds per update (which a shared
    machine disturbs far less). Each repetition's updates are dealt
    round-robin over ``clients`` (connections to the node of process id
    ``node``, or the same one several times: then its calls are pipelined),
    each sending its share one at a time, all at once; the floor commits the
    same updates in-process in groups of ``len(clients)``."""
    width = len(clients)
    replica = Replicator("n0", [], rng=Random(rng.getrandbits(64)))
    store = SQLiteStore(folder, node="n0")
    floor_history, figure_history = History(), History()
    floor: list[float] = []
    figure: list[float] = []
    floor_cpu: list[float] = []
    node_cpu: list[float] = []
    client_cpu: list[float] = []
    load_before = os.getloadavg()[0]

    async def send(client: Client, share: Sequence[Op]) -> None:
        for key, type_name, kind, args in share:
            figure_history.operations.append(await client.update(key, type_name, kind, *args))

    try:
        for i in range(config.warmup + config.repeat):
            count = sizes.concurrent if width <= CLIENTS else sizes.pipelined
            ops = _ops(rng, count, THROUGH_KEYS, f"{prefix}{i}-")
            gc.collect()
            start, cpu = perf_counter(), process_time()
            for at in range(0, len(ops), width):
                _commit_batch(replica, store, floor_history, ops[at : at + width])
            floor_s = (perf_counter() - start) / len(ops)
            floor_cpu_s = (process_time() - cpu) / len(ops)
            gc.collect()
            start, cpu, mine = perf_counter(), _cpu_seconds(node), process_time()
            await asyncio.gather(
                *(send(client, ops[j::width]) for j, client in enumerate(clients))
            )
            figure_s = (perf_counter() - start) / len(ops)
            node_cpu_s = (_cpu_seconds(node) - cpu) / len(ops)
            client_cpu_s = (process_time() - mine) / len(ops)
            if i >= config.warmup:
                floor.append(floor_s)
                figure.append(figure_s)
                floor_cpu.append(floor_cpu_s)
                node_cpu.append(node_cpu_s)
                client_cpu.append(client_cpu_s)
    finally:
        store.close()
    await _check(clients[0], figure_history)
    if floor_history.problems([replica]):
        raise RuntimeError("the in-process floor replica does not match its updates")
    return _Measured(Timing.of(floor), Timing.of(figure), Timing.of(floor_cpu),
                     Timing.of(node_cpu), Timing.of(client_cpu),
                     (load_before, os.getloadavg()[0]))


async def _on_node(
    cluster: LocalCluster, config: Config, sizes: _Sizes, rng: Random
) -> tuple[_Measured, _Measured]:
    """``CLIENTS`` concurrent clients, then one client pipelining
    ``PIPELINE`` updates on its one connection."""
    clients = [await cluster.client("n0") for _ in range(CLIENTS)]
    node = cluster.processes["n0"].pid
    try:
        folder = cluster.folder
        concurrent = await _concurrent(
            clients, folder / "floor-c", config, sizes, rng, node=node, prefix="c"
        )
        pipelined = await _concurrent(
            [clients[0]] * PIPELINE, folder / "floor-p", config, sizes, rng, node=node, prefix="p"
        )
        return concurrent, pipelined
    finally:
        for client in clients:
            client.close()


def _concurrent_rows(config: Config, sizes: _Sizes, floor: Timing, figure: Timing
                     ) -> tuple[Row, Row]:
    rate, floor_rate = 1 / figure.median, 1 / floor.median
    workload = (
        f"{CLIENTS} connections to one node (a 1-process cluster, as when a node took at "
        "most 8 connections per IP address), each sending its "
        f"share of {sizes.concurrent:,} updates (random_operation over every type, "
        f"{THROUGH_KEYS} fresh keys per type per repetition, dealt round-robin) one at a "
        "time, each awaited until the node acknowledges it durable, all connections at once "
        f"(asyncio.gather); {config.repeat} timed repetitions after {config.warmup} warm-up, "
        "alternating with the floor; median "
        f"{rate:,.0f} updates/s [{1 / figure.high:,.0f}-{1 / figure.low:,.0f}], floor "
        f"{floor_rate:,.0f} updates/s"
    )
    measured = Row(
        f"tcp updates through one node, {CLIENTS} concurrent clients",
        "op",
        "the same updates staged on a Replicator in-process, committed to a SQLiteStore "
        f"in groups of {CLIENTS} (stage {CLIENTS}, their rows and answers in one commit, "
        "apply), as the node's group commit does at best, same file system",
        floor,
        figure,
        None,
        f"figure = seconds per update over all the connections: {workload}. The ratio is "
        "what the process, the network, the protocol and the batching as it happens cost "
        f"on top of ideal groups of {CLIENTS}; the floor is itself a bound on this figure, "
        f"since {CLIENTS} clients that each wait for their answer put at most {CLIENTS} "
        f"updates into one commit. Target: see the next row",
    )
    target = Row(
        f"tcp updates/s target, {CLIENTS} concurrent clients",
        "op",
        f"the issue's target, {TARGET_RATE:,} acknowledged durable updates/s "
        f"({1e6 / TARGET_RATE:g} us per update)",
        Timing.constant(1 / TARGET_RATE),
        figure,
        1.0,
        f"figure = the previous row's ({rate:,.0f} updates/s, "
        f"{'met' if rate >= TARGET_RATE else f'{TARGET_RATE / rate:.1f}x short'}); "
        f"its in-process floor of groups of {CLIENTS} reaches {floor_rate:,.0f} updates/s "
        f"here ({'above' if floor_rate >= TARGET_RATE else 'below'} the target)",
    )
    return measured, target


def _cpu_row(config: Config, measured: _Measured, what: str) -> Row:
    both = measured.node_cpu.median + measured.client_cpu.median
    cores = os.cpu_count() or 1
    return Row(
        f"tcp node CPU per update, {what}",
        "op",
        "CPU time (user + system) of the same updates committed in-process, in the same "
        "groups as the floor of the row above (time.process_time)",
        measured.floor_cpu,
        measured.node_cpu,
        None,
        "figure = CPU time (user + system, /proc/PID/task/*/schedstat) the node process "
        "spent per update during the row above's timed repetitions: its event loop, the "
        "client protocol, MACs, staging, its commit thread's share of SQLite. Unlike "
        "seconds per update it hardly moves when other work shares the machine; its "
        "inverse is the rate the node "
        f"could serve with a core of its own ({1 / measured.node_cpu.median:,.0f} updates/s "
        f"here). The clients (this process: encoding, MACs, parsing each answer into an "
        f"Operation, whose delta and observed ranges decode when read) spent "
        f"{measured.client_cpu.median * 1e6:.0f} us per update "
        f"[{measured.client_cpu.low * 1e6:.0f}-{measured.client_cpu.high * 1e6:.0f}], so "
        f"node and clients together need {both * 1e6:.0f} us of CPU per update: on this "
        f"machine's {cores} cores, with nothing else running, at most "
        f"{cores / both:,.0f} updates/s if they never waited for each other. The machine's "
        f"load average (1 minute) read {measured.load[0]:.1f} before these repetitions "
        f"and {measured.load[1]:.1f} after: above {cores} other work was taking cores from "
        "both",
    )


def _pipelined_row(config: Config, sizes: _Sizes, floor: Timing, figure: Timing) -> Row:
    rate, floor_rate = 1 / figure.median, 1 / floor.median
    return Row(
        f"tcp updates through one node, 1 client pipelining {PIPELINE}",
        "op",
        "the same updates staged on a Replicator in-process, committed to a SQLiteStore "
        f"in groups of {PIPELINE} (stage, one commit, apply), same file system",
        floor,
        figure,
        None,
        f"figure = seconds per update: one Client (one connection) to the node of the "
        f"previous rows, {PIPELINE} of its update() calls in flight at once (asyncio.gather "
        f"of {PIPELINE} senders, each sending its share of {sizes.pipelined:,} updates one "
        "at a time): the node serves a connection's requests concurrently (up to "
        f"crdtkit.node.MAX_IN_FLIGHT = {MAX_IN_FLIGHT}) and each waits for its commit, so "
        "they share commits; same workload and repetitions as the previous rows; median "
        f"{rate:,.0f} updates/s [{1 / figure.high:,.0f}-{1 / figure.low:,.0f}], floor "
        f"{floor_rate:,.0f} updates/s. The issue's target of {TARGET_RATE:,} updates/s "
        "with 8 concurrent or pipelining clients: "
        + ("met" if rate >= TARGET_RATE else f"{TARGET_RATE / rate:.1f}x short"),
    )


# -- 2. and 3. bursts: convergence time, bytes on the wire -----------------------------


@dataclass(frozen=True)
class _Burst:
    converged: float  # seconds from the last acknowledgement to equal keyspaces
    sending: float  # seconds from the first update sent to the last acknowledgement
    window: float  # seconds between the two stats readings
    sent: int  # bytes_sent, summed over the nodes, in the window
    frames: int  # frames_sent, likewise
    catch_ups: int
    keyspace: float  # mean of the summed keyspace sizes before and after
    full: float  # full-state push-pull over the window, estimated


async def _spread(clients: Mapping[str, Client], ops: Sequence[Op], history: History) -> None:
    """``ops`` dealt round-robin over the nodes; each node's share is sent in
    order by its own client, the nodes concurrently."""
    nodes = sorted(clients)

    async def send(client: Client, share: Sequence[Op]) -> None:
        for key, type_name, kind, args in share:
            history.operations.append(await client.update(key, type_name, kind, *args))

    await asyncio.gather(
        *(send(clients[node], ops[i :: len(nodes)]) for i, node in enumerate(nodes))
    )


async def _stats(clients: Mapping[str, Client]) -> dict[str, int]:
    total: dict[str, int] = {}
    for client in clients.values():
        for name, count in (await client.stats()).items():
            total[name] = total.get(name, 0) + count
    return total


async def _keyspaces(clients: Mapping[str, Client]) -> int:
    return sum([len(await client.keyspace()) for client in clients.values()])


async def _converge(clients: Mapping[str, Client]) -> float:
    took = await converge(clients, CONVERGE_TIMEOUT)
    if took is None:
        raise RuntimeError(f"{len(clients)} processes did not converge in {CONVERGE_TIMEOUT} s")
    return took


async def _bursts(
    clients: Mapping[str, Client], config: Config, sizes: _Sizes, rng: Random
) -> tuple[list[_Burst], int]:
    """``config.warmup`` untimed and ``config.repeat`` measured bursts on one
    cluster, after a preload; returns the bursts and the keyspace's size
    (one node's) after the preload."""
    loop = asyncio.get_running_loop()
    nodes = sorted(clients)
    history = History()
    await _spread(clients, _ops(rng, sizes.preload, sizes.preload_keys, "pre-"), history)
    await _converge(clients)
    preloaded = len(await clients[nodes[0]].keyspace())
    runs: list[_Burst] = []
    for i in range(config.warmup + config.repeat):
        ops = _ops(rng, sizes.burst, sizes.burst_keys, f"burst{i}-")
        held_before = await _keyspaces(clients)
        gc.collect()
        before = await _stats(clients)
        start = loop.time()
        await _spread(clients, ops, history)
        acked = loop.time()
        converged = await _converge(clients)
        after = await _stats(clients)
        end = loop.time()
        held = (held_before + await _keyspaces(clients)) / 2
        # Full-state push-pull: every interval each node sends its whole
        # keyspace to one peer and the peer sends its own back, so a round
        # ships twice the keyspaces summed over the nodes.
        full = (end - start) / INTERVAL * 2 * held
        if i >= config.warmup:
            runs.append(
                _Burst(
                    converged,
                    acked - start,
                    end - start,
                    after["bytes_sent"] - before["bytes_sent"],
                    after["frames_sent"] - before["frames_sent"],
                    after["catch_ups"] - before["catch_ups"],
                    held / len(clients),
                    full,
                )
            )
    await _check(clients[nodes[-1]], history)
    return runs, preloaded


async def _on_cluster(
    cluster: LocalCluster, config: Config, sizes: _Sizes, rng: Random
) -> tuple[_Through | None, list[_Burst], int]:
    """The sequential updates (on a ``THROUGH``-process cluster), then the
    bursts, through one client per node."""
    clients = await cluster.clients()
    try:
        through = None
        if len(clients) == THROUGH:
            through = await _through_one_node(clients, cluster.folder, config, sizes, rng)
        runs, preloaded = await _bursts(clients, config, sizes, rng)
        return through, runs, preloaded
    finally:
        for client in clients.values():
            client.close()


def _theory(n: int) -> float:
    return math.log(n, 3) + 3


def _burst_rows(
    n: int, config: Config, sizes: _Sizes, runs: Sequence[_Burst], preloaded: int
) -> tuple[Row, Row]:
    after = " (after the sequential-update row's updates)" if n == THROUGH else ""
    workload = (
        f"{n} processes gossiping every {INTERVAL * 1e3:g} ms, preloaded{after} with "
        f"{sizes.preload:,} updates on up to {len(TYPES) * sizes.preload_keys:,} keys "
        f"({size(preloaded)} keyspace); each burst: {sizes.burst} updates "
        "(random_operation over every type, "
        f"{sizes.burst_keys} fresh keys per type) dealt over the nodes, one client per node "
        "sending its share in order, the nodes concurrently (asyncio.gather); "
        f"{config.repeat} measured bursts after {config.warmup} warm-up on the same cluster"
    )
    theory = _theory(n)
    seconds = [r.converged for r in runs]
    sending = statistics.median([r.sending for r in runs])
    convergence = Row(
        f"tcp convergence after a burst, {n} processes",
        "run",
        f"one gossip interval ({INTERVAL * 1e3:g} ms): the ratio is the time in gossip rounds",
        Timing.constant(INTERVAL),
        Timing.of(seconds),
        None,
        f"figure = seconds from the last acknowledgement of a burst until every node's "
        f"keyspace() is equal (crdtkit.cluster.converge, polling every 20 ms, so it can "
        f"read up to ~20 ms late); rounds {min(seconds) / INTERVAL:.2g}-"
        f"{max(seconds) / INTERVAL:.2g}, beside the simulated rows' theory for one rumor, "
        f"log3({n}) + 3 = {theory:.2f} rounds ({INTERVAL * theory * 1e3:.3g} ms here); a "
        "burst's earlier updates spread while later ones are still being sent, so only "
        f"its last ones remain at its last acknowledgement. {workload}; sending a burst "
        f"took {_duration(sending)} (median; {sizes.burst / sending:,.0f} updates/s over "
        f"the nodes, {_duration(sending * n / sizes.burst)} per update at a node, where each "
        "acknowledged update waits for its SQLite commit, shared with the "
        "updates that arrived with it). "
        "No target: PERFORMANCE.md sets none for processes",
    )
    sent, full = sum(r.sent for r in runs), sum(r.full for r in runs)
    window = statistics.median([r.window for r in runs])
    wire = Row(
        f"tcp bytes on the wire per operation, {n} processes",
        "op",
        "full-state push-pull over the same window, estimated: (window / interval) x "
        "2 x keyspace bytes summed over the nodes (mean of before and after the burst)",
        Timing.of([r.full / sizes.burst for r in runs]),
        Timing.of([r.sent / sizes.burst for r in runs]),
        None,
        f"figure = bytes_sent (Client.stats) summed over the nodes from just before a "
        f"burst until it converged, divided by its {sizes.burst} updates; they count every "
        "peer frame as sent (length prefix, sequence number and MAC, snapshot-layer "
        "header, acks, and the clock exchanges every round makes even when idle), but not "
        "connection handshakes or client traffic; the floor counts the keyspace encodings "
        "alone (no framing, dots, MACs), a round every interval exactly, and is an "
        "estimate, not measured. "
        f"{workload}; window median {_duration(window)} "
        f"(~{window / INTERVAL:.2g} intervals), node keyspace mean "
        f"{size(statistics.median([r.keyspace for r in runs]))}; in all: {size(sent)} sent vs "
        f"{size(full)} full-state ({sent / full:.2%}), "
        f"{sum(r.frames for r in runs):,} frames, {sum(r.catch_ups for r in runs)} "
        "catch-ups. No target: PERFORMANCE.md's 3% is for the simulated steady state at "
        "2% churn, not a burst",
        unit="B",
    )
    return convergence, wire


# -- the benchmark -------------------------------------------------------------------------


def processes(config: Config, rng: Random) -> list[Row]:
    """Local multi-process clusters (see the module docstring): durable
    updates through one node, from one client and from ``CLIENTS`` concurrent
    ones, beside the same updates committed in-process (one commit per
    update; one per group of ``CLIENTS``); per cluster size in
    ``BURST_CLUSTERS``, the time from a burst's last acknowledgement to
    convergence beside one gossip interval, and the bytes the nodes sent per
    update beside an estimate of full-state gossip over the same time.
    Targets (the issue): one client within 2x of its floor; ``CLIENTS``
    clients at least ``TARGET_RATE`` updates/s; the rest reported only."""
    sizes = _QUICK if config.quick else _FULL
    through: _Through | None = None
    convergence: list[Row] = []
    wire: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="crdtkit-bench-") as folder:
        with _Cluster(1, Path(folder) / "cluster-1") as cluster:
            measured, pipelined = _run(_on_node(cluster, config, sizes, rng))
        concurrent = [
            *_concurrent_rows(config, sizes, measured.floor, measured.figure),
            _cpu_row(config, measured, f"{CLIENTS} concurrent clients"),
            _pipelined_row(config, sizes, pipelined.floor, pipelined.figure),
            _cpu_row(config, pipelined, f"1 client pipelining {PIPELINE}"),
        ]
        for n in BURST_CLUSTERS:
            with _Cluster(n, Path(folder) / f"cluster-{n}") as cluster:
                done, runs, preloaded = _run(_on_cluster(cluster, config, sizes, rng))
            through = through or done
            rows = _burst_rows(n, config, sizes, runs, preloaded)
            convergence.append(rows[0])
            wire.append(rows[1])
    if through is None:
        raise RuntimeError(f"no cluster of {THROUGH} processes in {BURST_CLUSTERS}")
    return [_through_row(config, sizes, through), *concurrent, *convergence, *wire]
