"""OR-Set merges: full states (disjoint, then interleaved) and one-element deltas.

The floor of a full-state merge is ``x |= y`` on plain sets holding the same
elements: no join can do less than a set union. Merges run both ways
(``a.merge(b)`` and ``b.merge(a)``, each into a copy made outside the clock)
and are reported per merge.
"""

from __future__ import annotations

from random import Random

from bench.harness import Config, Row, Trial, compare
from bench.workloads import disjoint_workloads, interleaved_replicas, keys
from crdts import ORSet

Sets = tuple[set[str], set[str]]
States = tuple[ORSet[str], ORSet[str]]


def _check_merge(a: ORSet[str], b: ORSet[str], disjoint: bool) -> None:
    """A fast wrong merge is worth nothing: check the result once, untimed.
    Both ways must agree and ``len`` must count the value; with no element in
    common (so no remove on one side touches the other's adds), the value must
    also be the plain union."""
    ab, ba = a.copy(), b.copy()
    ab.merge(b)
    ba.merge(a)
    wrong = ab != ba or len(ab) != len(ab.value)
    if wrong or (disjoint and ab.value != a.value | b.value):
        raise RuntimeError("ORSet.merge gave a wrong result on the benchmark workload")


def _full_state_rows(
    name: str,
    a: ORSet[str],
    b: ORSet[str],
    *,
    target: float,
    config: Config,
    note: str,
    disjoint: bool,
) -> list[Row]:
    """Time a full-state merge both ways against ``x |= y``, then again with
    the first reads after it (``len`` and one ``in``), as ORSet defers its
    count to the first ``len`` after a full-state merge."""
    _check_merge(a, b, disjoint)
    x, y = set(a.value), set(b.value)
    # Probe for an element that only the other side held before the merge.
    probe_a, probe_b = next(iter(x - y)), next(iter(y - x))

    def plain_copies() -> Sets:
        return x.copy(), y.copy()

    def crdt_copies() -> States:
        return a.copy(), b.copy()

    def union(pair: Sets) -> None:
        ab, ba = pair
        ab |= y
        ba |= x

    def merge(pair: States) -> None:
        ab, ba = pair
        ab.merge(b)
        ba.merge(a)

    def union_then_read(pair: Sets) -> tuple[int, bool, int, bool]:
        ab, ba = pair
        ab |= y
        ba |= x
        return len(ab), probe_b in ab, len(ba), probe_a in ba

    def merge_then_read(pair: States) -> tuple[int, bool, int, bool]:
        ab, ba = pair
        ab.merge(b)
        ba.merge(a)
        return len(ab), probe_b in ab, len(ba), probe_a in ba

    floor, figure = compare(Trial(plain_copies, union, 2), Trial(crdt_copies, merge, 2), config)
    floor_r, figure_r = compare(
        Trial(plain_copies, union_then_read, 2), Trial(crdt_copies, merge_then_read, 2), config
    )
    floor_is = f"x |= y on plain sets of {len(x):,} and {len(y):,} strings"
    return [
        Row(name, "merge", floor_is, floor, figure, target, note),
        Row(
            f"{name} + first reads",
            "merge",
            f"{floor_is}, then len and in",
            floor_r,
            figure_r,
            target,
            "merge, then len(s) and one `in`",
        ),
    ]


def disjoint_merge(config: Config, rng: Random) -> list[Row]:
    """PERFORMANCE.md's OR-Set workload: two replicas each add ``set_size``
    distinct strings of their own and remove 10% of them, then merge full
    states. Target: within 3x of the set union."""
    a, b = (h.replay() for h in disjoint_workloads(rng, config.set_size, 0.1))
    name = f"ORSet merge, 2 x {config.set_size:,} disjoint"
    return _full_state_rows(
        name,
        a,
        b,
        target=3.0,
        config=config,
        note="peers: the 'peer ...' rows, when installed (pip install -e '.[peers]')",
        disjoint=True,
    )


def interleaved_merge(config: Config, rng: Random) -> list[Row]:
    """The worst case: eight replicas interleave adds and removes over one
    ``pool_size`` element pool with periodic gossip (see
    :func:`bench.workloads.interleaved_replicas`); then two of them merge full
    states. Target: within 15x of the set union on sets of the same sizes."""
    states = interleaved_replicas(rng, 8, config.pool_size, config.rounds, config.ops_per_round)
    a, b = states[0], states[1]
    name = f"ORSet merge, 8 replicas interleaved ({config.pool_size:,} pool)"
    note = f"merging r0 ({len(a):,} elements) and r1 ({len(b):,} elements)"
    return _full_state_rows(name, a, b, target=15.0, config=config, note=note, disjoint=False)


def _delta_target(rng: Random, n: int) -> ORSet[str]:
    """``n`` elements, mostly added by replica "a"; replica "b" added every
    hundredth, so deltas from "b" join an origin the target already holds
    (the steady state of delta gossip, not a first contact)."""
    state: ORSet[str] = ORSet()
    for i, element in enumerate(keys(rng, n, "e-")):
        state.add(element, "b" if i % 100 == 0 else "a")
    return state


Deltas = list[ORSet[str]]


def _deltas(rng: Random, target: ORSet[str], news: list[str], k: int) -> tuple[Deltas, Deltas]:
    """``k`` add deltas (of the ``news``, all new) and ``k`` remove deltas (of
    live elements) that replica "b" issues from its copy of ``target``."""
    producer = target.copy()
    adds = [producer.add(element, "b") for element in news]
    removes = [producer.remove(element) for element in rng.sample(sorted(target.value), k)]
    # Untimed check: the deltas joined into the target give the producer's state.
    joined = target.copy()
    for delta in adds + removes:
        joined.merge(delta)
    if joined != producer:
        raise RuntimeError("joining ORSet deltas did not reproduce their source state")
    return adds, removes


def _time_deltas(
    name: str, small: tuple[ORSet[str], Deltas], big: tuple[ORSet[str], Deltas], config: Config
) -> Row:
    """Joins of ``small``'s deltas into fresh copies of its target (the floor)
    against ``big``'s, per delta."""

    def fresh(target: ORSet[str], deltas: Deltas) -> Trial[ORSet[str]]:
        def join_all(state: ORSet[str]) -> None:
            for delta in deltas:
                state.merge(delta)

        return Trial(target.copy, join_all, len(deltas))

    floor, figure = compare(fresh(*small), fresh(*big), config)
    return Row(
        name,
        "delta",
        f"the same kind of delta into a {len(small[0]):,}-element set",
        floor,
        figure,
        1.5,
        f"{len(small[1])} distinct deltas per repetition into a fresh copy; ratio = big / small",
    )


def delta_merge(config: Config, rng: Random) -> list[Row]:
    """A delta merge must cost O(delta): a one-element delta, the return value
    of ``ORSet.add`` of a new element and, separately, of ``ORSet.remove``,
    joins a ``delta_big`` set as fast as a ``delta_small`` one (ratio <= 1.5).

    Each repetition joins ``deltas`` distinct deltas into a fresh copy of the
    target, copied outside the clock, so the time is the joins alone.
    """
    small, big = _delta_target(rng, config.delta_small), _delta_target(rng, config.delta_big)
    news = keys(rng, config.deltas, "new-")
    small_adds, small_removes = _deltas(rng, small, news, config.deltas)
    big_adds, big_removes = _deltas(rng, big, news, config.deltas)
    size = f"{config.delta_big:,} vs {config.delta_small:,}"
    return [
        _time_deltas(f"ORSet add-delta into {size}", (small, small_adds), (big, big_adds), config),
        _time_deltas(
            f"ORSet remove-delta into {size}", (small, small_removes), (big, big_removes), config
        ),
    ]
