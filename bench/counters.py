"""Counter merges and increments against plain dicts.

A G-Counter is a dict of replica -> count joined by pointwise max, so its
floor is that loop written by hand::

    for k, v in b.items():
        if v > a.get(k, 0):
            a[k] = v

and its increment's floor is ``d[k] = d.get(k, 0) + n``.
"""

from __future__ import annotations

from random import Random

import cbor2

from bench.harness import Config, Row, Trial, compare
from bench.workloads import counts, replica_ids
from crdts import GCounter, PNCounter
from crdts.codec import encode

Slots = dict[str, int]


def _max_merge(a: Slots, b: Slots) -> None:
    # The floor, exactly as PERFORMANCE.md writes it.
    for k, v in b.items():
        if v > a.get(k, 0):
            a[k] = v


def _gcounter(slots: Slots) -> GCounter:
    counter = GCounter()
    for replica, count in slots.items():
        counter.increment(replica, count)
    return counter


def _pncounter(up: Slots, down: Slots) -> PNCounter:
    counter = PNCounter()
    for replica, count in up.items():
        counter.increment(replica, count)
    for replica, count in down.items():
        counter.decrement(replica, count)
    return counter


def counter_merge(config: Config, rng: Random) -> list[Row]:
    """G-Counter and PN-Counter merges of two ``replicas``-slot states that
    share half their replicas (each side ahead on about half of those), so the
    merge both adds slots and compares them. Target: within 2x of the dict
    floor (two dict floors for the PN-Counter's two halves).

    One merge of 1,000 slots takes tens of microseconds, so each repetition
    merges into ``counter_merges`` fresh copies and reports per merge.
    """
    ids_a, ids_b = replica_ids(rng, config.replicas, config.replicas // 2)
    a, b = counts(rng, ids_a), counts(rng, ids_b)
    a_down, b_down = counts(rng, ids_a), counts(rng, ids_b)
    copies = config.counter_merges

    def dict_copies() -> list[Slots]:
        return [a.copy() for _ in range(copies)]

    def dict_merge(targets: list[Slots]) -> None:
        for target in targets:
            _max_merge(target, b)

    gc_a, gc_b = _gcounter(a), _gcounter(b)

    def gcounter_copies() -> list[GCounter]:
        return [gc_a.copy() for _ in range(copies)]

    def gcounter_merge(targets: list[GCounter]) -> None:
        for target in targets:
            target.merge(gc_b)

    def dict_pair_copies() -> list[tuple[Slots, Slots]]:
        return [(a.copy(), a_down.copy()) for _ in range(copies)]

    def dict_pair_merge(targets: list[tuple[Slots, Slots]]) -> None:
        for up, down in targets:
            _max_merge(up, b)
            _max_merge(down, b_down)

    pn_a, pn_b = _pncounter(a, a_down), _pncounter(b, b_down)

    def pncounter_copies() -> list[PNCounter]:
        return [pn_a.copy() for _ in range(copies)]

    def pncounter_merge(targets: list[PNCounter]) -> None:
        for target in targets:
            target.merge(pn_b)

    # Check the joins once, untimed: the benchmark must measure a right answer.
    joined, plain = gc_a.copy(), a.copy()
    joined.merge(gc_b)
    _max_merge(plain, b)
    if joined.value != sum(plain.values()):
        raise RuntimeError("GCounter.merge gave a wrong result on the benchmark workload")

    g_floor, g_figure = compare(
        Trial(dict_copies, dict_merge, copies),
        Trial(gcounter_copies, gcounter_merge, copies),
        config,
    )
    p_floor, p_figure = compare(
        Trial(dict_pair_copies, dict_pair_merge, copies),
        Trial(pncounter_copies, pncounter_merge, copies),
        config,
    )
    size = f"{config.replicas:,} replicas"
    overlap = f"{config.replicas // 2:,} replicas shared"
    return [
        Row(
            f"GCounter merge, {size}",
            "merge",
            "the max-merge loop on plain dicts",
            g_floor,
            g_figure,
            2.0,
            overlap,
        ),
        Row(
            f"PNCounter merge, {size}",
            "merge",
            "two max-merge loops on plain dicts",
            p_floor,
            p_figure,
            2.0,
            overlap,
        ),
    ]


def increment_ops(config: Config, rng: Random) -> list[tuple[str, int]]:
    """The increment workload: ``increments`` seeded (replica, amount) pairs
    over ``replicas`` replicas (shared with the peers in ``bench.peers``)."""
    ids, _ = replica_ids(rng, config.replicas, 0)
    return [(rng.choice(ids), rng.randint(1, 10)) for _ in range(config.increments)]


def fold_counts(config: Config, rng: Random) -> list[tuple[str, list[int]]]:
    """The fold workload (PERFORMANCE.md): ``fold_replicas`` replicas, each
    making ``fold_increments`` seeded increments of 1-10 on its own slot."""
    ids, _ = replica_ids(rng, config.fold_replicas, 0)
    return [(i, [rng.randint(1, 10) for _ in range(config.fold_increments)]) for i in ids]


def counter_fold(config: Config, rng: Random) -> list[Row]:
    """Fold every replica's G-Counter into one, as a reader gathering all
    replicas does: one merge per replica into a fresh counter, against the
    max-merge loop folding the same one-slot dicts. No target (PERFORMANCE.md
    reports it for the peers)."""
    workload = fold_counts(config, rng)
    plain = [{replica: sum(amounts)} for replica, amounts in workload]
    states = []
    for replica, amounts in workload:
        counter = GCounter()
        for n in amounts:
            counter.increment(replica, n)
        states.append(counter)

    def dict_fold(into: Slots) -> None:
        for slots in plain:
            _max_merge(into, slots)

    def gcounter_fold(into: GCounter) -> None:
        for state in states:
            into.merge(state)

    check = GCounter()
    gcounter_fold(check)
    if check.value != sum(sum(a) for _, a in workload):
        raise RuntimeError("folding GCounters gave a wrong total")
    floor, figure = compare(
        Trial(dict, dict_fold, len(states)), Trial(GCounter, gcounter_fold, len(states)), config
    )
    return [
        Row(
            f"GCounter fold, {len(states):,} replicas x {config.fold_increments:,} increments",
            "merge",
            "the max-merge loop folding one-slot dicts",
            floor,
            figure,
            None,
            "each replica's state merged into one fresh counter; per merge",
        )
    ]


def counter_increment(config: Config, rng: Random) -> list[Row]:
    """G-Counter increments: ``increments`` seeded (replica, amount) pairs over
    ``replicas`` replicas, applied in a loop, against the same loop of
    ``d[k] = d.get(k, 0) + n``. Target: at least a third of the floor's rate,
    i.e. a time ratio of at most 3 (each increment also builds its delta)."""
    ops = increment_ops(config, rng)

    def dict_increments(d: Slots) -> None:
        for k, n in ops:
            d[k] = d.get(k, 0) + n

    def gcounter_increments(counter: GCounter) -> None:
        for k, n in ops:
            counter.increment(k, n)

    floor, figure = compare(
        Trial(dict, dict_increments, len(ops)),
        Trial(GCounter, gcounter_increments, len(ops)),
        config,
    )
    rates = f"{1 / figure.median / 1e6:.2f} M/s vs floor {1 / floor.median / 1e6:.2f} M/s"
    return [
        Row(
            f"GCounter increment, {config.replicas:,} replicas",
            "increment",
            "d[k] = d.get(k, 0) + n on a plain dict",
            floor,
            figure,
            3.0,
            f"rate {rates} (target: at least 1/3 of the floor's rate)",
        )
    ]


def gcounter_encode_order(config: Config, rng: Random) -> list[Row]:
    """G-Counter encode (``codec_size`` replicas, built as ``codec-gcounter``
    builds it: ids arriving in random order) against ``cbor2.dumps`` of the
    same ``{replica: count}`` dict *in replica order*, the order a canonical
    encoding writes: the same str and int objects, walked in that order.

    ``codec-gcounter``'s floor dumps the dict in the order its entries were
    allocated, so it walks memory front to back, which no canonical encoder
    of ids that arrived in another order can do (docs/counters.md measures
    the gap: the same objects in replica order take 2-3x as long). No target:
    reported beside that row as the honest floor for an encoder."""
    ids, _ = replica_ids(rng, config.codec_size, 0)
    slots = counts(rng, ids)
    state = GCounter()
    for replica, count in slots.items():
        state.increment(replica, count)
    ordered = dict(sorted(slots.items()))
    if encode(state) != cbor2.dumps(
        ["GCounter", 1, [x for row in ordered.items() for x in row]], canonical=True
    ):
        raise RuntimeError("the G-Counter's encoding is not its slots in replica order")
    # The other promise of the format, as codec-gcounter checks it: the same
    # state built in another order (ids reversed, counts in two halves).
    other = GCounter()
    for replica, count in reversed(slots.items()):
        other.increment(replica, count // 2)
        other.increment(replica, count - count // 2)
    same = other == state and encode(other) == encode(state)

    def get_ordered() -> dict[str, int]:
        return ordered

    def get_state() -> GCounter:
        return state

    n = len(slots)
    floor, figure = compare(
        Trial(get_ordered, cbor2.dumps, n), Trial(get_state, encode, n), config
    )
    return [
        Row(
            f"codec encode GCounter {n:,} replicas, replica-order floor",
            "element",
            f"cbor2.dumps of the same {{str: int}} in replica order ({n:,} entries)",
            floor,
            figure,
            None,
            "the honest floor for a canonical encoder (see codec-gcounter's row); "
            f"equal states from 2 operation orders give identical bytes: {'yes' if same else 'NO'}",
        )
    ]
