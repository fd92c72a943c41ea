"""Pruning: the bytes of a round's opening frame, whatever the replica ids seen.

Every round opens with the opener's prefix clock (docs/bounded-state.md).
Without pruning it names every replica id that ever wrote (issue 10,
observation 3: 21 KB at 1,000 ids, 210 KB at 10,000). The workload: node
``a`` restarted ``n - 2`` times, each earlier incarnation having written one
increment to a G-Counter key that ``a`` and ``b`` both hold; ``a`` (the
authority on its own incarnations) prunes them all into its current one, and
the markers expire. The figure is the opener ``a`` sends then, beside the
same with 16 ids (the floor); the note gives the opener before pruning and
the rounds it took. Target 1.5x: bounded. Nothing is timed.
"""

from __future__ import annotations

from random import Random

from bench.harness import Config, Row, Timing, size
from crdts import GCounter
from replication.dotranges import DotRanges
from replication.messages import Entry
from replication.replicator import Replicator
from replication.simnet import SimulatedNetwork


def opener_bytes(ids: int, seed: int) -> tuple[int, int, int]:
    """(opener bytes before pruning, after, rounds taken) with ``ids`` replica
    ids ever seen: ``ids - 2`` earlier incarnations of ``a``, ``a`` and ``b``."""
    old = [f"a~{i}" for i in range(1, ids - 1)]
    counter = GCounter()
    for writer in old:
        _ = counter.increment(writer, 1)
    ops = DotRanges.whole({w: (1, 1) for w in old})
    options = {"prune_after": 0.0, "marker_ttl": 2.0}
    a = Replicator.from_entries(
        "a", [Entry("k", counter, ops)], ["b"], rng=Random(seed), incarnation=ids, **options
    )
    b = Replicator.from_entries(
        "b", [Entry("k", counter.copy(), ops.copy())], ["a"], rng=Random(seed + 1),
        incarnation=1, **options,
    )
    before = len(a.tick(0.0)[0][1])
    net = SimulatedNetwork(seed=seed)
    net.add(a)
    net.add(b)
    rounds = net.run_until(
        lambda: not (a.retired or a.ops("k").pruned or b.ops("k").pruned), 10 + ids // 100
    )
    pruned = a.get("k")
    if rounds is None or not isinstance(pruned, GCounter) or pruned.value != ids - 2:
        raise RuntimeError(f"pruning {ids} ids did not finish")
    return before, len(a.tick(net.now)[0][1]), rounds


def opener(config: Config, rng: Random) -> list[Row]:
    """One row per number of ids ever seen, beside 16 ids."""
    seed = rng.getrandbits(32)
    floor_before, floor, _ = opener_bytes(16, seed)
    rows = []
    for ids in (1_000,) if config.quick else (1_000, 10_000):
        before, after, rounds = opener_bytes(ids, seed)
        rows.append(
            Row(
                f"pruning: opening frame, {ids:,} replica ids ever seen",
                "opener",
                "the same with 16 ids",
                Timing.constant(floor),
                Timing.constant(after),
                1.5,
                f"before pruning {size(before)} (16 ids: {size(floor_before)});"
                f" pruned in {rounds} rounds",
                unit="B",
            )
        )
    return rows
