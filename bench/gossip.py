"""Gossip: rounds to converge, bytes per round with deltas, and how the
simulation's time grows with replicas and with state size.

Every cluster runs on :class:`replication.simnet.SimulatedNetwork` with no
faults, its replicas made with ``Replicator(node_id, ids, rng=...)`` and the
default fanout of 1; every random choice (replica and network seeds, keys,
churn) comes from the benchmark's seeded ``random.Random``. A cluster has
converged when every replica encodes an identical keyspace
(``Replicator.encode_keyspace``); every run also checks the converged value
against what the workload did, since a fast wrong result is worth nothing.

Rows whose figure is not a time say so in their unit: convergence counts
rounds (the floor is the theory, log3(N) + 3) and the delta row counts bytes
(the floor is full-state gossip on the same cluster in the same rounds).
"""

from __future__ import annotations

import gc
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random
from time import perf_counter

from bench.harness import Config, Row, Timing, Trial, alternate, size
from bench.workloads import keys
from crdts import GCounter, ORSet
from crdts import codec as crdt_codec
from replication import Replicator
from replication.messages import Entry, Push, parse
from replication.simnet import SimulatedNetwork
from replication.transport import Outgoing

#: Seeded clusters per size in the convergence rows (rounds vary with the seed).
CLUSTERS = 3
#: Seeded runs of the ideal push-pull model per size, for the notes.
MODEL_RUNS = 20
#: Replicas of the bytes-per-round and state-size workloads.
BYTES_REPLICAS = 8
STATE_REPLICAS = 4
#: Share of the keyspace updated per round in the bytes-per-round workload.
CHURN = 0.02
#: Safety bound on any run to convergence.
MAX_ROUNDS = 200

Cluster = tuple[list[Replicator], SimulatedNetwork]


def _ids(n: int) -> list[str]:
    width = len(str(n - 1))
    return [f"r{i:0{width}d}" for i in range(n)]


def _cluster(n: int, seed: int) -> Cluster:
    """``n`` replicas that know each other, on a fault-free network, all
    seeded from ``seed``; the network is returned before any node is added."""
    rng = Random(seed)
    ids = _ids(n)
    replicas = [Replicator(node, ids, rng=Random(rng.getrandbits(64))) for node in ids]
    return replicas, SimulatedNetwork(seed=rng.getrandbits(64))


def _converged(replicas: Sequence[Replicator]) -> bool:
    first = replicas[0].encode_keyspace()
    return all(r.encode_keyspace() == first for r in replicas[1:])


def _run_to_convergence(replicas: Sequence[Replicator], net: SimulatedNetwork) -> int:
    rounds = net.run_until(lambda: _converged(replicas), max_rounds=MAX_ROUNDS)
    if rounds is None:
        raise RuntimeError(f"{len(replicas)} replicas did not converge in {MAX_ROUNDS} rounds")
    return rounds


def _increment(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me, 1)


def _adder(element: str) -> Callable[[ORSet[str], str], ORSet[str]]:
    def add(state: ORSet[str], me: str) -> ORSet[str]:
        return state.add(element, me)

    return add


def _theory(n: int) -> float:
    return math.log(n, 3) + 3


def _model_rounds(n: int, rng: Random) -> int:
    """Rounds the ideal synchronous push-pull process takes to spread ``n``
    rumors, one per node (Karp et al.'s model: each round every node calls one
    uniformly random other node and both leave with the union of what they
    knew at the round's start). Knowledge is a bitset per node."""
    everything = (1 << n) - 1
    know = [1 << i for i in range(n)]
    rounds = 0
    while any(k != everything for k in know):
        start = know.copy()
        for i in range(n):
            j = rng.randrange(n - 1)
            j += j >= i
            know[i] |= start[j]
            know[j] |= start[i]
        rounds += 1
    return rounds






# -- 1. rounds to converge ---------------------------------------------------------


@dataclass(frozen=True)
class _Convergence:
    rounds: int
    messages: int
    sent: int
    seconds: float


def _converge_shared_counter(n: int, seed: int) -> _Convergence:
    replicas, net = _cluster(n, seed)
    # Karp et al.'s setting: one rumor, started at one replica.
    replicas[0].update("hits", GCounter, _increment)
    for replica in replicas:
        net.add(replica)
    gc.collect()
    start = perf_counter()
    rounds = _run_to_convergence(replicas, net)
    seconds = perf_counter() - start
    state = replicas[0].get("hits")
    if not isinstance(state, GCounter) or state.value != 1:
        raise RuntimeError(f"the shared counter converged to the wrong value on {n} replicas")
    return _Convergence(rounds, net.stats.sent, net.stats.bytes_sent, seconds)


def convergence(config: Config, rng: Random) -> list[Row]:
    """Rounds until every replica holds the same keyspace, with no faults:
    one replica increments a GCounter key once (one rumor, Karp et al.'s
    setting), then the cluster gossips (push-pull, fanout 1). ``CLUSTERS``
    seeded clusters per N; the floor is the theory log3(N) + 3 rounds (Karp
    et al. 2000), target: at or under it (ratio <= 1). The notes add the ideal
    synchronous push-pull process with one rumor per node, a harder workload
    that needs a round or two more."""
    rows = []
    for n in config.gossip_replicas:
        seeds = [rng.getrandbits(64) for _ in range(CLUSTERS)]
        runs = [_converge_shared_counter(n, seed) for seed in seeds]
        model_rng = Random(rng.getrandbits(64))
        model = [_model_rounds(n, model_rng) for _ in range(MODEL_RUNS)]
        theory = _theory(n)
        note = (
            f"{CLUSTERS} seeded clusters, rounds {'/'.join(str(r.rounds) for r in runs)}; "
            "workload: one replica increments one GCounter key once; "
            f"per run (median): {statistics.median(r.messages for r in runs):,.0f} messages, "
            f"{size(statistics.median(r.sent for r in runs))} sent, "
            f"{statistics.median(r.seconds for r in runs):.3g} s of simulation; "
            f"ideal synchronous push-pull with one rumor per node (Karp's model, "
            f"{MODEL_RUNS} seeded runs): mean {statistics.mean(model):.3g} rounds "
            f"[{min(model)}-{max(model)}]"
        )
        rows.append(
            Row(
                f"gossip rounds to converge, {n:,} replicas",
                "run",
                f"theory log3({n:,}) + 3 = {theory:.2f} rounds",
                Timing.constant(theory),
                Timing.of([r.rounds for r in runs]),
                1.0,
                note,
                unit="rounds",
            )
        )
    return rows


# -- 2. bytes per round: delta gossip against full-state gossip ----------------------


@dataclass
class _Tally:
    """What the tapped replicas sent, by message kind, and how much of the
    entries they received carried nothing new to the receiver."""

    on: bool = False
    bytes_by_kind: Counter[str] = field(default_factory=Counter)
    frames_by_kind: Counter[str] = field(default_factory=Counter)
    entry_bytes: Counter[str] = field(default_factory=Counter)  # "new" / "held"
    entries: Counter[str] = field(default_factory=Counter)

    def sent(self, out: list[Outgoing]) -> None:
        if not self.on:
            return
        for _, frame in out:
            kind = type(parse(frame)).__name__
            self.bytes_by_kind[kind] += len(frame)
            self.frames_by_kind[kind] += 1

    def received(self, receiver: Replicator, frame: bytes) -> None:
        if not self.on:
            return
        message = parse(frame)
        if not isinstance(message, Push):
            return
        for entry in message.entries:
            held = "held" if entry.dots.issubset(receiver.ops(entry.key)) else "new"
            self.entries[held] += 1
            self.entry_bytes[held] += _entry_size(entry)


def _entry_size(entry: Entry) -> int:
    # As replication.messages writes an entry inside a frame.
    payload = [entry.key, crdt_codec.encode(entry.state), entry.dots.to_payload()]
    return len(crdt_codec.encode_plain(payload))


class _Tap:
    """A :class:`~replication.transport.Node` that forwards to a replicator,
    remembers the peer its last tick picked, and feeds a :class:`_Tally`."""

    def __init__(self, replica: Replicator, tally: _Tally) -> None:
        self.node_id = replica.node_id
        self.replica = replica
        self.tally = tally
        self.peer: str | None = None

    @property
    def refusals(self) -> int:
        return self.replica.refusals

    def tick(self, now: float) -> list[Outgoing]:
        out = self.replica.tick(now)
        self.peer = out[0][0] if out else None
        self.tally.sent(out)
        return out

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        self.tally.received(self.replica, frame)
        out = self.replica.receive(now, sender, frame)
        self.tally.sent(out)
        return out


def delta_bytes(config: Config, rng: Random) -> list[Row]:
    """Steady-state bytes sent per round at 2% churn, delta gossip (the
    replicator as it is) against full-state gossip on the same exchanges.

    ``gossip_keys`` GCounter keys, each created by one increment at a random
    replica, on ``BYTES_REPLICAS`` replicas; the cluster converges (the
    initial catch-ups), then every round 2% of the keys, drawn at random, are
    incremented once each at a random replica before the round runs. Warm-up
    rounds run until every replica has sent its first-contact catch-ups and
    none sent one for 5 rounds; then ``gossip_rounds`` rounds are measured.

    The floor, full-state push-pull, is computed from the same rounds: in each
    exchange the replica that ticked would ship its whole keyspace and its
    peer would ship its own back, so a round costs, over the replicas that
    ticked, len(encode_keyspace()) of the replica plus that of the peer it
    picked (both taken at the start of the round). That counts the states
    alone, without the operation dots or the framing the replicator also
    sends, so it favours full-state gossip: the ratio is if anything too high.
    """
    n, k = BYTES_REPLICAS, config.gossip_keys
    churn = max(1, round(k * CHURN))
    replicas, net = _cluster(n, rng.getrandbits(64))
    tally = _Tally()
    taps = {r.node_id: _Tap(r, tally) for r in replicas}
    names = keys(rng, k, "key-")
    for name in names:
        rng.choice(replicas).update(name, GCounter, _increment)
    for tap in taps.values():
        net.add(tap)
    initial_rounds = _run_to_convergence(replicas, net)
    increments = k

    def update_some() -> None:
        nonlocal increments
        for name in rng.sample(names, churn):
            rng.choice(replicas).update(name, GCounter, _increment)
        increments += churn

    def catch_ups() -> int:
        return sum(r.stats.catch_ups for r in replicas)

    warmup, quiet, last = 0, 0, catch_ups()
    while warmup < MAX_ROUNDS and (quiet < 5 or any(r.stats.catch_ups < n - 1 for r in replicas)):
        update_some()
        net.run_round()
        warmup += 1
        quiet = 0 if catch_ups() != last else quiet + 1
        last = catch_ups()

    catch_ups_before = catch_ups()
    merged_before = sum(r.stats.merged for r in replicas)
    redundant_before = sum(r.stats.redundant for r in replicas)
    full: list[float] = []
    tally.on = True
    for _ in range(config.gossip_rounds):
        update_some()
        sizes = {node: len(tap.replica.encode_keyspace()) for node, tap in taps.items()}
        net.run_round()
        full.append(
            float(sum(sizes[node] + sizes[tap.peer] for node, tap in taps.items() if tap.peer))
        )
    tally.on = False
    delta = [float(b) for b in net.stats.bytes_sent_per_round[-config.gossip_rounds :]]
    window_catch_ups = catch_ups() - catch_ups_before
    merged = sum(r.stats.merged for r in replicas) - merged_before
    redundant = sum(r.stats.redundant for r in replicas) - redundant_before
    if sum(tally.bytes_by_kind.values()) != sum(delta):
        raise RuntimeError("the tapped frames do not add up to the network's bytes sent")

    # The check: everything converges, and the counters sum to every increment made.
    _run_to_convergence(replicas, net)
    total = 0
    for name in names:
        state = replicas[0].get(name)
        assert isinstance(state, GCounter)
        total += state.value
    if total != increments:
        raise RuntimeError(f"the keyspace counts {total} increments, not {increments}")

    sent = sum(delta)
    kinds = ", ".join(
        f"{kind} {tally.bytes_by_kind[kind] / sent:.1%} ({tally.frames_by_kind[kind]:,} frames)"
        for kind, _ in tally.bytes_by_kind.most_common()
    )
    entry_total = tally.entry_bytes["new"] + tally.entry_bytes["held"]
    note = (
        f"{k:,} GCounter keys, {churn} updated per round at random replicas; "
        f"initial catch-up {initial_rounds} rounds, then {warmup} warm-up rounds, then "
        f"{config.gossip_rounds} measured; mean {size(statistics.mean(delta))} vs "
        f"{size(statistics.mean(full))} per round ({sum(delta) / sum(full):.2%}); "
        f"catch-ups while measuring: {window_catch_ups}. Where the bytes go: {kinds}; "
        f"of the entries received, {tally.entries['held']:,} carried only operations the "
        f"receiver already held ({tally.entry_bytes['held'] / max(1, entry_total):.0%} of "
        f"entry bytes) and {tally.entries['new']:,} brought news; sending only those would "
        f"cost {size(tally.entry_bytes['new'] / len(delta))} per round "
        f"({tally.entry_bytes['new'] / sum(full):.2%} of full state); replicator stats: "
        f"{merged:,} merged, {redundant:,} redundant"
    )
    return [
        Row(
            f"gossip bytes per round, {k:,} keys, 2% churn, {n} replicas",
            "round",
            "full-state push-pull on the same exchanges: both keyspaces (encode_keyspace)",
            Timing.of(full),
            Timing.of(delta),
            0.03,
            note,
            unit="B",
        )
    ]


# -- 3. scale ----------------------------------------------------------------------------


def _scale_row(
    name: str,
    per: str,
    sizes: Sequence[int],
    trial: Callable[[int], Trial[Cluster]],
    config: Config,
) -> Row:
    """Time a run at each size, in turn repetition by repetition, per unit
    (replica or element); the row sets the largest size against the smallest."""
    timings = alternate([trial(size) for size in sizes], config)
    per_unit = "; ".join(
        f"{size:,}: {t.median * 1e6:.3g} us/{per}" for size, t in zip(sizes, timings, strict=True)
    )
    return Row(
        name,
        per,
        f"the same run at {sizes[0]:,}, per {per}",
        timings[0],
        timings[-1],
        2.0,
        f"ratio = per-{per} time at {sizes[-1]:,} / at {sizes[0]:,}; medians {per_unit}",
    )


def scale_replicas(config: Config, rng: Random) -> list[Row]:
    """Simulation time (``run_until`` to convergence) per replica as the
    cluster grows: one replica increments one GCounter key once and the
    update spreads to every replica (a single rumor, so every replica's state
    and every exchange stay O(1) whatever N, and the work is N replicas times
    the rounds). Building the replicas is not timed. Target: linear growth,
    per-replica time at the largest N within 2x of the smallest."""
    sizes = config.gossip_replicas
    trials, rounds = _replica_trials(config, rng)
    row = _scale_row(
        f"gossip scale replicas, {sizes[-1]:,} vs {sizes[0]:,}, one update",
        "replica",
        sizes,
        trials,
        config,
    )
    spread = ", ".join(f"{n:,}: {rounds[n]}" for n in sizes)
    per_round = row.ratio * rounds[sizes[0]] / rounds[sizes[-1]]
    note = (
        f"{row.note}; rounds {spread} (they grow as log N); "
        f"per replica-round the ratio is {per_round:.2f}"
    )
    return [Row(row.name, row.per, row.floor_is, row.floor, row.figure, row.target, note)]


def replica_points(config: Config, rng: Random) -> tuple[list[Timing], dict[int, int]]:
    """The runs of :func:`scale_replicas` without the row (for ``bench.charts``):
    the time per replica at each of ``config.gossip_replicas``, and the rounds."""
    trials, rounds = _replica_trials(config, rng)
    return alternate([trials(n) for n in config.gossip_replicas], config), rounds


def _replica_trials(
    config: Config, rng: Random
) -> tuple[Callable[[int], Trial[Cluster]], dict[int, int]]:
    sizes = config.gossip_replicas
    seeds = {n: rng.getrandbits(64) for n in sizes}
    rounds: dict[int, int] = {}

    def trial(n: int) -> Trial[Cluster]:
        def setup() -> Cluster:
            replicas, net = _cluster(n, seeds[n])
            replicas[0].update("hits", GCounter, _increment)
            for replica in replicas:
                net.add(replica)
            return replicas, net

        def run(cluster: Cluster) -> None:
            replicas, net = cluster
            rounds[n] = _run_to_convergence(replicas, net)
            state = replicas[-1].get("hits")
            if not isinstance(state, GCounter) or state.value != 1:
                raise RuntimeError("the update did not reach every replica")

        return Trial(setup, run, n)

    return trial, rounds


def scale_state(config: Config, rng: Random) -> list[Row]:
    """Simulation time (``run_until`` to convergence) per element as the state
    grows: one replica adds ``m`` elements to one ORSet key (``m`` updates),
    then the key converges across ``STATE_REPLICAS`` replicas. The adds are
    not timed. Target: linear growth, per-element time at the largest size
    within 2x of the smallest."""
    sizes = config.gossip_elements
    trials, sent = _state_trials(config, rng)
    row = _scale_row(
        f"gossip scale state, ORSet {sizes[-1]:,} vs {sizes[0]:,} elements, "
        f"{STATE_REPLICAS} replicas",
        "element",
        sizes,
        trials,
        config,
    )
    per_element = ", ".join(f"{m:,}: {sent[m] / m:.1f} B" for m in sizes)
    note = f"{row.note}; bytes sent per element {per_element}"
    return [Row(row.name, row.per, row.floor_is, row.floor, row.figure, row.target, note)]


def state_points(config: Config, rng: Random) -> tuple[list[Timing], dict[int, int]]:
    """The runs of :func:`scale_state` without the row (for ``bench.charts``):
    the time per element at each of ``config.gossip_elements``, and bytes sent."""
    trials, sent = _state_trials(config, rng)
    return alternate([trials(m) for m in config.gossip_elements], config), sent


def _state_trials(
    config: Config, rng: Random
) -> tuple[Callable[[int], Trial[Cluster]], dict[int, int]]:
    sizes = config.gossip_elements
    seeds = {m: rng.getrandbits(64) for m in sizes}
    elements = {m: keys(rng, m, "e-") for m in sizes}
    sent: dict[int, int] = {}

    def trial(m: int) -> Trial[Cluster]:
        def setup() -> Cluster:
            replicas, net = _cluster(STATE_REPLICAS, seeds[m])
            origin = replicas[0]
            for element in elements[m]:
                origin.update("set", ORSet, _adder(element))
            for replica in replicas:
                net.add(replica)
            return replicas, net

        def run(cluster: Cluster) -> None:
            replicas, net = cluster
            _run_to_convergence(replicas, net)
            sent[m] = net.stats.bytes_sent
            state = replicas[-1].get("set")
            if not isinstance(state, ORSet) or len(state) != m:
                raise RuntimeError("the set did not converge to every element")

        return Trial(setup, run, m)

    return trial, sent
