"""Replicator memory: bytes per key against a plain dict of the same values.

PERFORMANCE.md asks that a replicator key cost at most 3x a plain dict entry
of the same value (issue 13, item 4). Nothing is timed: every figure and
every floor is a byte count from ``tracemalloc`` after ``gc.collect()``, in
the same process.

- *G-Counter keys*: ``WRITERS`` replicas (ids ``r0``, ``r1``, ...) each
  increment each of ``n`` keys (as the demo's writers do) and gossip until
  they agree and every log position is acknowledged; the figure is what one
  replica keeps, per key. The floor is ``dict[str, dict[str, int]]``, ``{key:
  {replica: count}}``, holding the same counts: its key strings and inner
  dicts are counted, the replica ids (shared by every key) and the small
  counts (cached by CPython) are not, and the same holds for the replica.
- *OR-Set keys*: the same with each writer adding ``ELEMENTS`` strings of its
  own to each key; the floor is ``dict[str, set[str]]``, ``{key: {element}}``,
  element strings counted in both.
- *OR-Set elements*: one OR-Set of ``n`` elements added by one replica (10%
  then removed: the disjoint workload of ``bench.sets``), per live element,
  against a plain ``set`` of the live strings (the strings not counted in
  either): the type's own layout, with no replicator around it.
- *change log after a catch-up*: a node that joins a cluster holding ``n``
  keys (half G-Counters, half OR-Sets, written by ``WRITERS`` replicas) and
  takes the catch-up of one member; the figure is the node's memory, the
  floor the same node once its change log is emptied, so the ratio is 1 plus
  the log's share of the rest.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Sequence
from random import Random

from bench.harness import Config, Row, Timing, size, traced
from bench.workloads import disjoint_workloads
from crdts import GCounter, ORSet
from replication.replicator import Replicator

WRITERS = 3
ELEMENTS = 2
AMOUNT = 3
#: Exchanges after the keyspaces agree, so every acknowledgement lands.
SETTLE = 2


def _round(nodes: dict[str, Replicator], opener: str) -> None:
    """``opener`` opens a round (with a peer its rng picks) over a perfect
    channel; every frame sent is delivered (to ``nodes``) until none is left."""
    frames = [(opener, out) for out in nodes[opener].tick(0.0)]
    while frames:
        source, (dest, frame) = frames.pop(0)
        if dest in nodes:
            frames += [(dest, out) for out in nodes[dest].receive(0.0, source, frame)]


def _settle(replicas: Sequence[Replicator]) -> None:
    """Rounds of every replica until all keyspaces agree, then ``SETTLE``
    rounds per peer more, so every log position is acknowledged."""
    nodes = {r.node_id: r for r in replicas}
    calm = 0
    while calm < SETTLE * len(replicas):
        for replica in replicas:
            _round(nodes, replica.node_id)
        agreed = len({r.encode_keyspace() for r in replicas}) == 1
        calm = calm + 1 if agreed else 0


def _ids() -> list[str]:
    return [f"r{i}" for i in range(WRITERS)]


def _cluster(counters: Sequence[str], sets: Sequence[str]) -> list[Replicator]:
    """``WRITERS`` replicas, each incrementing every key of ``counters`` and
    adding ``ELEMENTS`` strings of its own to every key of ``sets``, settled."""
    ids = _ids()
    replicas = [Replicator(i, ids, rng=Random(n)) for n, i in enumerate(ids)]
    for replica in replicas:
        for key in counters:
            replica.update(key, GCounter, lambda c, me: c.increment(me, AMOUNT))
        for key in sets:
            for j in range(ELEMENTS):
                replica.update(key, ORSet, _adder(f"{key}/{replica.replica_id}/{j}"))
    _settle(replicas)
    return replicas


def _adder(element: str) -> Callable[[ORSet[str], str], ORSet[str]]:
    return lambda s, me: s.add(element, me)


def _counters(names: Sequence[str]) -> list[Replicator]:
    return _cluster(names, ())


def _sets(names: Sequence[str]) -> list[Replicator]:
    return _cluster((), names)


def _one_replica(build: Callable[[list[str]], list[Replicator]], n: int) -> Replicator:
    # Build the cluster, keep the first replica only: the others' objects
    # are freed before tracemalloc counts.
    replicas = build([f"key-{i}" for i in range(n)])
    return replicas[0]


def _counter_floor(n: int) -> dict[str, dict[str, int]]:
    ids = _ids()
    return {f"key-{i}": dict.fromkeys(ids, AMOUNT) for i in range(n)}


def _set_floor(n: int) -> dict[str, set[str]]:
    ids = _ids()
    out: dict[str, set[str]] = {}
    for i in range(n):
        key = f"key-{i}"
        out[key] = {f"{key}/{w}/{j}" for w in ids for j in range(ELEMENTS)}
    return out


def key_memory(kind: str, n: int) -> tuple[int, int]:
    """``(floor, figure)``: bytes per key (rounded) of the plain dict and of
    one replica holding ``n`` keys of ``kind``, "GCounter" or "ORSet"."""
    build, floor = {"GCounter": (_counters, _counter_floor), "ORSet": (_sets, _set_floor)}[kind]
    _, floor_bytes = traced(lambda: floor(n))
    _, figure_bytes = traced(lambda: _one_replica(build, n))
    return round(floor_bytes / n), round(figure_bytes / n)


def element_memory(n: int, rng: Random) -> tuple[float, float]:
    """Bytes per live element: a plain set of the live strings, and the
    OR-Set of the disjoint workload (strings counted in neither)."""
    (workload,) = disjoint_workloads(rng, n, 0.1, ("a",))
    live = len(workload.live())
    _, floor = traced(workload.live)
    _, figure = traced(workload.replay)
    return floor / live, figure / live


def catch_up_log(n: int) -> tuple[int, int]:
    """``(node bytes, log bytes)`` of a node that joined a cluster of
    ``WRITERS`` replicas holding ``n`` keys and took one member's catch-up."""
    members = _cluster([f"key-{i}" for i in range(n // 2)], [f"set-{i}" for i in range(n - n // 2)])
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        node = Replicator("joiner", [members[0].node_id], rng=Random(99))
        _round({"joiner": node, members[0].node_id: members[0]}, "joiner")
        assert len(node.keys()) == n
        gc.collect()
        total = tracemalloc.get_traced_memory()[0] - base
        node._log.clear()  # what the log alone holds: its records and deltas
        gc.collect()
        log = total - (tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    return total, log


def replicator_memory(config: Config, rng: Random) -> list[Row]:
    """Bytes per key (G-Counter, OR-Set), per OR-Set element, and the log's
    share of a node after a catch-up, each beside its floor."""
    n = 200 if config.quick else 10_000
    elements = 2_000 if config.quick else 100_000
    g_floor, g_figure = key_memory("GCounter", n)
    s_floor, s_figure = key_memory("ORSet", n)
    e_floor, e_figure = element_memory(elements, Random(rng.getrandbits(64)))
    node, log = catch_up_log(n)
    by = f"{WRITERS} writers"
    return [
        Row(
            f"replicator memory: G-Counter keys, {n:,} keys x {by}",
            "key",
            "dict[str, dict[str, int]] of the same counts ({key: {replica: count}})",
            Timing.constant(g_floor),
            Timing.constant(g_figure),
            3.0,
            f"tracemalloc, one replica after gossip settled: {g_floor} B -> {g_figure} B per key",
            unit="B",
        ),
        Row(
            f"replicator memory: OR-Set keys, {n:,} keys x {by} x {ELEMENTS} elements",
            "key",
            "dict[str, set[str]] of the same elements ({key: {element}})",
            Timing.constant(s_floor),
            Timing.constant(s_figure),
            None,
            f"tracemalloc, element strings counted in both: {s_floor} B -> {s_figure} B per key",
            unit="B",
        ),
        Row(
            f"replicator memory: OR-Set of {elements:,} elements (10% removed), per element",
            "element",
            "set[str] of the live elements (strings counted in neither)",
            Timing.constant(e_floor),
            Timing.constant(e_figure),
            None,
            f"the type's own layout: {e_floor:.0f} B -> {e_figure:.0f} B per live element",
            unit="B",
        ),
        Row(
            f"replicator memory: change log of a node after a catch-up of {n:,} keys",
            "node",
            "the same node with its change log emptied",
            Timing.constant(node - log),
            Timing.constant(node),
            None,
            f"half G-Counters, half OR-Sets: the log holds {size(max(log, 0))} of {size(node)}",
            unit="B",
        ),
    ]
