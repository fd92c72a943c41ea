"""Bounded state: a replica's causal bookkeeping after many updates.

DESIGN.md asks that a key's bookkeeping be O(replicas that wrote it), not
O(operations), and the log and per-peer state O(keys). The workload is the one
of issue 9 (observation 7): increments round-robin over ``BOUNDED_KEYS``
G-Counter keys at replica ``a``, so each key's dots are sparse (a:1, a:11,
a:21, ...). ``a`` gossips with ``b`` over a perfect channel every
``EXCHANGE_EVERY`` updates (so the log, the acks and ``b``'s merges run too)
and has a third peer ``c`` that never answers.

Two figures, each after ``n`` updates against the same after the smallest
``n`` (the floor), target 1.5x:

- *saved bytes*: every key of ``a`` encoded as an entry, as a catch-up or a
  store row carries it (``replication.messages.encode_entries``);
- *memory*: what ``tracemalloc`` sees allocated after the run, ``a`` and
  ``b`` together (garbage collected first).

Nothing is timed: a row's floor and figure are byte counts.
"""

from __future__ import annotations

from random import Random

from bench.harness import Config, Row, Timing, size, traced
from crdts import GCounter, codec
from replication.messages import Entry, encode_entries
from replication.replicator import Replicator

BOUNDED_KEYS = 10
EXCHANGE_EVERY = 1_000


def _increment(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me)


def _exchange(a: Replicator, b: Replicator) -> None:
    nodes = {"a": a, "b": b}
    frames = [("a", out) for out in a.tick(0.0)]
    while frames:
        source, (dest, frame) = frames.pop(0)
        if dest in nodes:  # c never answers
            frames += [(dest, out) for out in nodes[dest].receive(0.0, source, frame)]


def saved_bytes(replica: Replicator) -> int:
    """The keyspace with its bookkeeping, encoded as entries (catch-up/store form)."""
    entries = (
        Entry(k, state, replica.ops(k))
        for k in replica.keys()  # noqa: SIM118  (a Replicator is not a dict)
        if (state := replica.get(k)) is not None
    )
    return len(codec.encode_plain(encode_entries(entries)))


def run(updates: int, rng: Random, keys: int = BOUNDED_KEYS) -> tuple[int, int]:
    """``(saved bytes of a, traced memory of a and b)`` after ``updates``
    round-robin increments on ``keys`` keys. Cost: O(updates), slowed down by
    tracemalloc."""
    def build() -> tuple[Replicator, Replicator]:
        a = Replicator("a", ["b", "c"], rng=Random(rng.getrandbits(64)))
        b = Replicator("b", ["a"], rng=Random(rng.getrandbits(64)))
        names = [f"key-{i}" for i in range(keys)]
        for i in range(updates):
            a.update(names[i % keys], GCounter, _increment)
            if i % EXCHANGE_EVERY == EXCHANGE_EVERY - 1:
                _exchange(a, b)
        return a, b

    (a, _), memory = traced(build)
    return saved_bytes(a), memory


def bounded_state(config: Config, rng: Random) -> list[Row]:
    """The two rows: saved bytes and memory, most updates against fewest."""
    low, high = config.bookkeeping_updates
    seed = rng.getrandbits(64)
    floor_bytes, floor_memory = run(low, Random(seed))
    bytes_, memory = run(high, Random(seed))
    what = f"{high:,} updates round-robin on {BOUNDED_KEYS} G-Counter keys"
    floor_is = f"the same after {low:,} updates"
    return [
        Row(
            f"bounded state: saved bytes, {what}",
            "keyspace",
            floor_is,
            Timing.constant(floor_bytes),
            Timing.constant(bytes_),
            1.5,
            f"every key's entry as encode_entries writes it: {size(floor_bytes)} -> {size(bytes_)}",
            unit="B",
        ),
        Row(
            f"bounded state: memory, {what}",
            "run",
            floor_is,
            Timing.constant(floor_memory),
            Timing.constant(memory),
            1.5,
            f"tracemalloc, the writer and its peer: {size(floor_memory)} -> {size(memory)}",
            unit="B",
        ),
    ]
