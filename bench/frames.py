"""Parsing gossip frames, against ``cbor2.loads`` of the same bytes.

The frames come from a real replicator workload: 16 replicas on a simulated
network with 30% loss (so that some peers fall behind and get catch-ups),
random operations of every type with a generator (each type's own
``OPERATIONS.random``) on a few hundred keys, gossiping round by round. Every
frame a replica receives is kept, and three kinds are timed:

- a *delta push*: a push of an interval of the sender's log (``start`` >= 0)
  with entries, the first with nearest 25 entries (about 2 kB);
- a *catch-up*: a push of whole keys (``start`` -1), the first with the most
  entries;
- a *round opener*: an empty push asking for the peer's (the sender's clock
  alone), the first with the most ids;
- a *catch-up of a whole keyspace*: the first frame a replica of a smaller
  cluster (4 replicas, 2,000 keys) sends a peer that holds nothing, over
  64 KiB, so that the decoder's cost walk runs (frames up to 64 KiB are
  decoded without it).

The figure is :func:`replication.messages.parse` (what a replica does with a
frame before it merges anything: size cap, canonical-form and cost checks,
every state decoded and validated); the floor is ``cbor2.loads`` of the same
bytes, which builds the plain structure and checks nothing. PERFORMANCE.md's
target: at most 3x.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

import cbor2

from bench.harness import Config, Row, Trial, compare, size
from crdts import GCounter, LWWRegister, MVRegister, ORSet, PNCounter
from crdts.base import CRDT
from crdts.operations import Operations
from replication import Replicator
from replication.messages import Push, Reply, encode_entry, encode_interval, parse
from replication.simnet import Faults, SimulatedNetwork
from replication.transport import Outgoing

#: The workload: replicas, keys per type, operations, and the loss rate.
REPLICAS = 16
KEYS_PER_TYPE = 50
OPERATIONS = 2_000
LOSS = 0.3
#: Keys per type of the whole-keyspace catch-up (its own, smaller cluster).
BIG_KEYS_PER_TYPE = 400
#: The delta push timed is the first whose number of entries is nearest this
#: (about 2 kB).
DELTA_ENTRIES = 25
TYPES: tuple[type[CRDT], ...] = (GCounter, PNCounter, ORSet, LWWRegister, MVRegister)


class _Recorder:
    """A replica that keeps every frame it receives."""

    def __init__(self, replica: Replicator, frames: list[bytes]) -> None:
        self.replica = replica
        self.node_id = replica.node_id
        self.frames = frames

    @property
    def refusals(self) -> int:
        return self.replica.refusals

    def tick(self, now: float) -> list[Outgoing]:
        return self.replica.tick(now)

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        self.frames.append(frame)
        return self.replica.receive(now, sender, frame)


def _applying(
    table: Operations, name: str, args: tuple[object, ...]
) -> Callable[[CRDT, str], CRDT]:
    return lambda state, me: table.apply(state, me, name, args)


def workload(
    rng: Random,
    operations: int = OPERATIONS,
    *,
    replicas: int = REPLICAS,
    keys_per_type: int = KEYS_PER_TYPE,
) -> tuple[list[bytes], list[Replicator]]:
    """Every frame received in a seeded run of the workload above, and the
    replicas at its end."""
    ids = [f"r{i:02d}" for i in range(replicas)]
    frames: list[bytes] = []
    net = SimulatedNetwork(seed=rng.getrandbits(64), faults=Faults(loss=LOSS))
    nodes = []
    for node in ids:
        replica = Replicator(node, ids, rng=Random(rng.getrandbits(64)))
        nodes.append(replica)
        net.add(_Recorder(replica, frames))
    keys = [(cls, f"{cls.TYPE_TAG}-{i}") for cls in TYPES for i in range(keys_per_type)]
    per_round = max(1, operations // 40)
    for done in range(operations):
        cls, key = rng.choice(keys)
        table = cls.OPERATIONS  # type: ignore[attr-defined]
        name, args = table.random(rng)
        replica = rng.choice(nodes)
        replica.update(key, cls, _applying(table, name, args))
        if done % per_round == per_round - 1:
            net.run_round()
    net.faults = Faults()
    net.run_rounds(10)
    return frames, nodes


def workload_frames(rng: Random, operations: int = OPERATIONS) -> list[bytes]:
    """Every frame received in a seeded run of the workload above."""
    return workload(rng, operations)[0]


def whole_catch_up(replica: Replicator, to: str) -> bytes:
    """The first frame of the catch-up ``replica`` sends a peer that holds
    nothing (a new or wiped one): its whole keyspace, as the replicator
    packs it (``encode_interval``, frames of up to ``DEFAULT_FRAME`` bytes)."""
    held = replica.keys()  # a list (sorted), not a dict view
    entries = [entry for key in held if (entry := replica.entry(key)) is not None]
    template = Push(replica.replica_id, to, -1, replica.head, 0, 1, Reply.PUSH, replica.context, ())
    return encode_interval(template, [encode_entry(e) for e in entries])[0]


def pick(frames: list[bytes]) -> dict[str, bytes]:
    """The delta push, catch-up and round opener timed (see the module
    docstring), chosen by what they carry rather than by their size, so that
    two wire formats of the same run pick the same frames."""
    deltas, catchups, openers = [], [], []
    for frame in frames:
        message = parse(frame)
        if not isinstance(message, Push):
            continue
        if message.start == -1 and message.entries:
            catchups.append((len(message.entries), frame))
        elif message.entries:
            deltas.append((abs(len(message.entries) - DELTA_ENTRIES), frame))
        elif message.reply == Reply.PUSH_AND_ASK:
            openers.append((len(message.context.vv), frame))
    # The first of the nearest (or largest): a stable choice.
    return {
        "delta push": min(deltas, key=lambda d: d[0])[1],
        "catch-up": max(catchups, key=lambda c: c[0])[1],
        "round opener": max(openers, key=lambda o: o[0])[1],
    }


def frame_parse(config: Config, rng: Random) -> list[Row]:
    """``messages.parse`` of a delta push, a catch-up and a round opener,
    each against ``cbor2.loads`` of the same bytes."""
    chosen = pick(workload_frames(rng, OPERATIONS // 4 if config.quick else OPERATIONS))
    # A fresh peer's catch-up of a larger keyspace: over 64 KiB, so walked
    # by the decoder's cost pre-pass (smaller frames are not).
    _, big = workload(
        rng, OPERATIONS // 4 if config.quick else 2 * OPERATIONS, replicas=4,
        keys_per_type=BIG_KEYS_PER_TYPE // (4 if config.quick else 1),
    )
    chosen["catch-up of a whole keyspace"] = whole_catch_up(big[0], "r99")
    rows = []
    for what, frame in chosen.items():
        message = parse(frame)
        assert isinstance(message, Push)

        def get(frame: bytes = frame) -> bytes:
            return frame

        # Enough parses per timing that a frame of any size takes ~1 ms or more.
        n = max(5, min(1000, 400_000 // len(frame)))

        def floor_run(data: bytes, reps: range = range(n)) -> None:
            for _ in reps:
                cbor2.loads(data)

        def figure_run(data: bytes, reps: range = range(n)) -> None:
            for _ in reps:
                parse(data)

        floor, figure = compare(Trial(get, floor_run, n), Trial(get, figure_run, n), config)
        rows.append(
            Row(
                f"frame parse, {what}",
                "frame",
                "cbor2.loads of the same bytes",
                floor,
                figure,
                3.0,
                f"{size(len(frame))}, {len(message.entries)} entries, "
                f"a clock of {len(message.context.vv)} ids",
            )
        )
    return rows
