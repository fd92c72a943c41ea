"""Seeded workloads, the same for a figure, its floor and any peer.

Every generator takes its ``random.Random``; nothing touches the global
random state, so a seed names a workload exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

from crdts import ORSet

#: Share of updates that are adds in the interleaved workload: the sets settle
#: at about 70% of the element pool, so most removes hit a live element.
ADD_SHARE = 0.7


def keys(rng: Random, n: int, prefix: str) -> list[str]:
    """``n`` distinct short keys (``prefix`` + 10 hex digits) in random order."""
    return [f"{prefix}{k:010x}" for k in rng.sample(range(1 << 40), n)]


@dataclass(frozen=True)
class SetWorkload:
    """What one replica did to a set: it added ``added`` in order, then removed
    ``removed`` (a subset of its own adds)."""

    replica: str
    added: list[str]
    removed: list[str]

    def live(self) -> set[str]:
        """The elements still in the set afterwards (computed on each call)."""
        return set(self.added).difference(self.removed)

    def replay(self) -> ORSet[str]:
        """The replica's OR-Set after this workload."""
        state: ORSet[str] = ORSet()
        for element in self.added:
            state.add(element, self.replica)
        for element in self.removed:
            state.remove(element)
        return state


def disjoint_workloads(
    rng: Random, n: int, remove_fraction: float, replicas: tuple[str, ...] = ("a", "b")
) -> list[SetWorkload]:
    """Each replica adds ``n`` distinct strings of its own and removes a
    ``remove_fraction`` of them: the workload peers were measured on."""
    out = []
    for replica in replicas:
        added = keys(rng, n, f"{replica}-")
        out.append(SetWorkload(replica, added, rng.sample(added, int(n * remove_fraction))))
    return out


def interleaved_replicas(
    rng: Random, replicas: int, pool_size: int, rounds: int, ops_per_round: int
) -> list[ORSet[str]]:
    """The worst case for a full-state merge: replicas add and remove over one
    shared element pool and pull one peer's full state after each round but
    the last, so their states overlap, elements carry dots of many origins and
    the replicas still differ in many places."""
    pool = keys(rng, pool_size, "k-")
    names = [f"r{i}" for i in range(replicas)]
    states: list[ORSet[str]] = [ORSet() for _ in names]
    for round_ in range(rounds):
        for name, state in zip(names, states, strict=True):
            for _ in range(ops_per_round):
                element = pool[rng.randrange(pool_size)]
                if rng.random() < ADD_SHARE:
                    state.add(element, name)
                else:
                    state.remove(element)
        if round_ < rounds - 1:
            # The partner shifts every round, so knowledge spreads unevenly.
            shift = 1 + round_ % (replicas - 1)
            for i, state in enumerate(states):
                state.merge(states[(i + shift) % replicas])
    return states


def replica_ids(rng: Random, replicas: int, shared: int) -> tuple[list[str], list[str]]:
    """Two sets of ``replicas`` replica ids that have ``shared`` ids in common."""
    ids = keys(rng, 2 * replicas - shared, "node-")
    return ids[:replicas], ids[replicas - shared :]


def counts(rng: Random, ids: list[str]) -> dict[str, int]:
    """A positive count for each replica id."""
    return {replica: rng.randint(1, 1_000_000) for replica in ids}
