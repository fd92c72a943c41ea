"""The yardstick of TESTING.md: 16 replicas, 1,000 random operations over every
type, 30% loss, 5% duplication, reordering, random partitions healed, and
replicas crashing and restarting from their stores (``MemoryStore``: the
node's restart path), whose last write may be older than what they had sent
since. Within 30
rounds of the last heal every replica must encode to identical bytes, every
value must equal the sequential specification, and no operation another
replica had acknowledged may be lost.

20 seeds run by default; more with ``CRDTKIT_SOAK_SEEDS=500 pytest tests/test_soak.py``.
"""

from __future__ import annotations

import os
import random

import pytest

from replication import Replicator
from replication.simnet import Faults, SimulatedNetwork
from replication.store import MemoryStore, WriteBehind, restore
from replication.testing import History, converged, random_operation

SEEDS = int(os.environ.get("CRDTKIT_SOAK_SEEDS", "20"))
CHAOS = Faults(loss=0.3, duplication=0.05, reorder=True, long_delay=0.01)


def soak(seed: int, size: int = 16, operations: int = 1000) -> tuple[int | None, list[str]]:
    rng = random.Random(seed)
    net = SimulatedNetwork(seed=rng.getrandbits(32), faults=CHAOS)
    ids = [f"r{i:02d}" for i in range(size)]
    replicas = [Replicator(i, ids, rng=random.Random(rng.getrandbits(32))) for i in ids]
    stores = [MemoryStore() for _ in ids]
    changes = [WriteBehind(replica) for replica in replicas]
    for replica in replicas:
        net.add(replica)
    history = History()
    must_survive: set[tuple[str, int]] = set()
    saved: set[int] = set()
    partitioned = False
    done = 0
    while done < operations:
        for _ in range(min(rng.randint(10, 50), operations - done)):
            key, type_name, kind, args = random_operation(rng)
            history.apply(rng.choice(replicas), key, type_name, kind, *args)
            done += 1
        if not partitioned and rng.random() < 0.2:
            shuffled = rng.sample(ids, len(ids))
            cuts = sorted(rng.sample(range(1, size), rng.randint(1, 3)))
            groups = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
            net.partition(groups)
            partitioned = True
        elif partitioned and rng.random() < 0.3:
            net.heal()
            partitioned = False
        if rng.random() < 0.2:  # a replica writes its changed keys ...
            i = rng.randrange(size)
            changes[i].flush(stores[i])
            saved.add(i)
        elif saved and rng.random() < 0.15:  # ... and later crashes back to its store
            i = rng.choice(sorted(saved))
            # What the others hold now must outlive this crash; what only a
            # replica that crashed earlier held could go with its old state.
            must_survive = history.acknowledged(replicas, by_others_of=ids[i])
            net.crash(ids[i])
            restart_rng = random.Random(rng.getrandbits(32))
            saved.discard(i)
            replicas[i] = restore(stores[i].load(), ids[i], ids, rng=restart_rng)
            changes[i] = WriteBehind(replicas[i])
            net.restart(replicas[i])
        net.run_round()
    net.heal()
    rounds = net.run_until(lambda: converged(replicas), 30)
    return rounds, history.problems(replicas, must_survive)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_soak_converges_to_the_specification(seed: int) -> None:
    rounds, problems = soak(seed)
    assert rounds is not None, "no convergence within 30 rounds of the last heal"
    assert problems == []
