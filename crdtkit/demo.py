"""The main job: a simulated cluster under faults, a Chandy-Lamport snapshot
taken mid-run, convergence, and the SEC verdicts.

:func:`run_demo` does the work and returns a :class:`DemoReport`; it prints
nothing (the CLI renders the report), and every random choice comes from the
seed, so the same configuration gives the same report on every machine.

The run: ``nodes`` replicas (each a :class:`~snapshot.marker.SnapshotNode`)
on a :class:`~replication.simnet.SimulatedNetwork` with the configured faults.
Each round, a batch of 10 to 50 random operations over every built-in type
(``keys`` keys of each) lands on random replicas, logged in a :class:`~replication.history.History`;
partitions into 2 to 4 groups come and go. Halfway through the operations a
random replica initiates a snapshot; it completes while the run goes on. After
the last operation the network heals and gossips until every replica holds the
same bytes; then a second snapshot is taken of the quiet cluster. Both cuts go
through the SEC checker with the operation log.

Delta savings compare the bytes the nodes sent with full-state push-pull over
the same rounds: each round, every live node sending its whole keyspace and
receiving one of the same size.

The full-state size of a replica is kept per key as its keys change
(:class:`~replication.keyspacesize.KeyspaceSize`): a round costs one encoding
of each key that changed, not of every keyspace.

The run holds the cyclic garbage collector off (:func:`_no_cycle_collection`):
what it keeps grows with the operations (the log of every one, the
replicas' states) and lives to the end, so each full collection re-scanned
more of it for nothing: 9-13% of the CPU at 20,000 operations, 3% at 1,000.
It makes little cyclic garbage (about 36,000 objects over 20,000 operations,
freed once the collector is back on), and reference counting frees the rest
as usual.

Cost: dominated by the gossip itself (O(rounds x nodes) frames, each costing
what it carries); the full-state estimate adds O(nodes) per round plus one
encoding of each key a round changed.
"""

from __future__ import annotations

import copy
import gc
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from replication.history import History, converged, random_operation
from replication.keyspacesize import EntrySizes, KeyspaceSize
from replication.replicator import Replicator
from replication.simnet import Faults, NetworkStats, SimulatedNetwork
from snapshot.cut import GlobalSnapshot
from snapshot.marker import SnapshotNode, gather, take_snapshot
from snapshot.sec import SECReport, check

__all__ = ["DemoConfig", "DemoReport", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What to simulate.

    >>> DemoConfig(nodes=1)
    Traceback (most recent call last):
    ...
    ValueError: nodes must be between 2 and 1024, got 1
    """

    nodes: int = 16
    operations: int = 1000
    seed: int = 1
    loss: float = 0.3
    duplication: float = 0.05
    reorder: bool = True
    partitions: bool = True
    keys: int = 50  # per type
    max_rounds: int = 300  # to converge after the last operation

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("nodes", self.nodes, 2, 1024),
            ("operations", self.operations, 0, 1_000_000),
            ("keys", self.keys, 1, 100_000),
            ("max_rounds", self.max_rounds, 1, 100_000),
        ):
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        Faults(loss=self.loss, duplication=self.duplication)  # checks the probabilities


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What :func:`run_demo` saw."""

    config: DemoConfig
    rounds: int  # every round run
    rounds_to_converge: int | None  # after the last operation and heal; None: did not
    network: NetworkStats
    full_state_bytes: int  # full-state push-pull over the same rounds
    partitions: int
    specification_problems: list[str]  # [] when every value equals the specification
    mid_run: GlobalSnapshot | None  # None: it did not complete
    mid_run_started: int  # the round it was initiated in
    mid_run_completed: int  # the round it completed in
    mid_run_report: SECReport | None
    final: GlobalSnapshot | None
    final_report: SECReport | None
    markers: int
    history: History  # every operation made

    @property
    def passed(self) -> bool:
        """Converged, matching the specification, and both cuts pass SEC."""
        return (
            self.rounds_to_converge is not None
            and not self.specification_problems
            and self.mid_run_report is not None
            and self.mid_run_report.passed
            and self.final_report is not None
            and self.final_report.passed
        )


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector off inside, as it was after.

    CPython's collector runs a full pass over every tracked object once the
    objects that outlived two young passes reach a quarter of the old
    ones. The demo churns through such objects (frames in flight, log
    records, deltas) beside a heap that only grows (the operation log and
    the replicas' states), so its full passes grew with the operations:
    48 of them at 20,000 operations, 3.4 s of CPU, against 3 at 1,000.
    Reference counting still frees everything that is not in a cycle.

    >>> was = gc.isenabled()
    >>> with _no_cycle_collection():
    ...     gc.isenabled()
    False
    >>> gc.isenabled() == was
    True
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run_demo(config: DemoConfig, progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo; ``progress`` receives a line now and then on long runs.

    >>> report = run_demo(DemoConfig(nodes=4, operations=60, seed=2))
    >>> report.passed, report.mid_run is not None
    (True, True)

    Cost: see the module docstring. The cyclic garbage collector is off
    while it runs (see :func:`_no_cycle_collection`).
    """
    with _no_cycle_collection():
        return _run(config, progress)


def _run(config: DemoConfig, progress: Callable[[str], None] | None) -> DemoReport:
    say = progress or (lambda line: None)
    rng = random.Random(config.seed)
    faults = Faults(
        loss=config.loss,
        duplication=config.duplication,
        reorder=config.reorder,
        long_delay=0.01 if config.reorder else 0.0,
    )
    net = SimulatedNetwork(seed=rng.getrandbits(32), faults=faults)
    ids = [f"r{i:0{len(str(config.nodes - 1))}d}" for i in range(config.nodes)]
    for node_id in ids:
        net.add(SnapshotNode(Replicator(node_id, ids, rng=random.Random(rng.getrandbits(32)))))

    def node(node_id: str) -> SnapshotNode:
        found = net.node(node_id)
        assert isinstance(found, SnapshotNode)
        return found

    nodes = [node(i) for i in ids]
    replicas = [n.replica for n in nodes]
    history = History()
    full = 0
    # Each replica's encoded size, kept per key as gossip changes it: encoding
    # every keyspace every round cost a quarter to a half of the demo's CPU.
    # One EntrySizes for all: a state that reaches every replica is encoded
    # once, not once per replica.
    shared = EntrySizes()
    sizes = [KeyspaceSize(r, shared) for r in replicas]

    def gossip() -> None:
        nonlocal full
        full += 2 * sum(size.nbytes for size in sizes)
        net.run_round()

    done, partitioned, partitions = 0, False, 0
    mid_id, mid, started, completed = None, None, 0, 0
    milestone = max(1, config.operations // 10)
    while done < config.operations:
        for _ in range(min(rng.randint(10, 50), config.operations - done)):
            key, type_name, kind, args = random_operation(rng, config.keys)
            history.apply(rng.choice(replicas), key, type_name, kind, *args)
            done += 1
            if done % milestone == 0:
                say(f"{done:,}/{config.operations:,} operations, round {net.stats.rounds}")
        if mid_id is None and done >= config.operations // 2:
            mid_id, started = rng.choice(nodes).initiate(), net.stats.rounds
            say(f"snapshot {mid_id} initiated in round {started}")
        if config.partitions and not partitioned and rng.random() < 0.2:
            shuffled = rng.sample(ids, len(ids))
            cuts = sorted(rng.sample(range(1, len(ids)), rng.randint(1, min(3, len(ids) - 1))))
            bounds = zip([0, *cuts], [*cuts, len(ids)], strict=True)
            net.partition([shuffled[a:b] for a, b in bounds])
            partitioned, partitions = True, partitions + 1
        elif partitioned and rng.random() < 0.3:
            net.heal()
            partitioned = False
        gossip()
        if mid_id is not None and mid is None:
            mid = gather(nodes, mid_id)
            completed = net.stats.rounds
    if mid_id is None:  # no operations at all: take it now
        mid_id, started = rng.choice(nodes).initiate(), net.stats.rounds
    net.heal()
    say(f"all {config.operations:,} operations made; healed, gossiping to convergence")
    first = net.stats.rounds
    converged_at = None
    for _ in range(config.max_rounds):
        if mid is None:
            mid = gather(nodes, mid_id)
            completed = net.stats.rounds
        if mid is not None and converged(replicas):
            converged_at = net.stats.rounds - first
            break
        gossip()
    problems = history.problems(replicas)
    stats = copy.deepcopy(net.stats)  # the final snapshot's rounds are not the run's
    for size in sizes:
        size.close()
    final = None
    if converged_at is not None:
        final = take_snapshot(net, rng.choice(ids), max_rounds=config.max_rounds)
    return DemoReport(
        config=config,
        rounds=net.stats.rounds,
        rounds_to_converge=converged_at,
        network=stats,
        full_state_bytes=full,
        partitions=partitions,
        specification_problems=problems,
        mid_run=mid,
        mid_run_started=started,
        mid_run_completed=completed,
        mid_run_report=None if mid is None else check(mid, history),
        final=final,
        final_report=None if final is None else check(final, history),
        markers=sum(n.stats.markers for n in nodes),
        history=history,
    )
