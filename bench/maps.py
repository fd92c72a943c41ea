"""OR-Map merges: two replicas of a map of G-Counters, and one-key deltas.

The floor of a full-state merge is a plain dict of dicts (key -> replica ->
count) joined by the counter floor's loop, key by key, with no keys removed
and no causal bookkeeping::

    for key, theirs in b.items():
        mine = a.get(key)
        if mine is None:
            a[key] = theirs.copy()
        else:
            for r, n in theirs.items():
                if n > mine.get(r, 0):
                    mine[r] = n

A delta merge must cost O(delta): a one-key delta joins a map of
``_BIG`` keys as fast as one of ``_SMALL`` keys (ratio at most 1.5).
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import Any

from bench.harness import Config, Row, Trial, compare
from crdts import GCounter, ORMap

Counters = dict[str, dict[str, int]]
Map = ORMap[str, GCounter]

#: Keys in the merged maps (PERFORMANCE.md: 10,000), and the delta sizes.
_KEYS, _QUICK_KEYS = 10_000, 1_000
_SMALL = 100


def _increment(n: int) -> Callable[[Any, str], object]:
    return lambda counter, me: counter.increment(me, n)


def _diverged(rng: Random, keys: int) -> tuple[Map, Map, Counters, Counters]:
    """Two replicas that shared ``keys`` keys, each then updating half of
    them (a different half): the OR-Maps and the same counts as dicts."""
    names = [f"key-{i:06d}" for i in range(keys)]
    a: Map = ORMap()
    for name in names:
        a.update("a", name, GCounter, _increment(rng.randint(1, 9)))
    b = a.copy()
    for i, name in enumerate(names):
        if i % 2:
            a.update("a", name, GCounter, _increment(rng.randint(1, 9)))
        else:
            b.update("b", name, GCounter, _increment(rng.randint(1, 9)))
    return a, b, _as_dicts(a), _as_dicts(b)


def _as_dicts(m: Map) -> Counters:
    out: Counters = {}
    for key in m:
        value = m.get(key)
        assert value is not None
        out[key] = dict(value._slots)
    return out


def _dict_merge(a: Counters, b: Counters) -> None:
    for key, theirs in b.items():
        mine = a.get(key)
        if mine is None:
            a[key] = theirs.copy()
        else:
            for r, n in theirs.items():
                if n > mine.get(r, 0):
                    mine[r] = n


def full_merge(config: Config, rng: Random) -> list[Row]:
    """Merge one replica's map of ``_KEYS`` G-Counters into the other's, after
    each updated a different half of the keys, and read the merged value of
    every key (the first reads after it: no cost hidden in deferred work).
    Reported beside the dict floor, for information."""
    keys = _QUICK_KEYS if config.quick else _KEYS
    a, b, da, db = _diverged(rng, keys)
    check = a.copy()
    check.merge(b)
    plain = {k: dict(v) for k, v in da.items()}
    _dict_merge(plain, db)
    if {k: v.value for k, v in ((k, check.get(k)) for k in check) if v} != {
        k: sum(v.values()) for k, v in plain.items()
    }:
        raise RuntimeError("the OR-Map merge and the dict floor disagree")

    def floor_copy() -> Counters:
        return {k: v.copy() for k, v in da.items()}

    def floor_run(target: Counters) -> int:
        _dict_merge(target, db)
        return sum(sum(v.values()) for v in target.values())

    def figure_run(target: Map) -> int:
        target.merge(b)
        return sum(target.value.values())  # type: ignore[arg-type]

    floor, figure = compare(Trial(floor_copy, floor_run), Trial(a.copy, figure_run), config)
    return [
        Row(
            f"ormap merge, {keys:,} G-Counter keys",
            "merge + read",
            "dict of dicts, max-merge + sum",
            floor,
            figure,
            None,
            "two replicas that each updated half the keys since they last met",
        )
    ]


def _delta_target(keys: int) -> tuple[Map, list[Map]]:
    """A map of ``keys`` keys and the deltas of another replica's updates of
    its first ``_SMALL`` keys in turn (a key it holds: the delta replaces
    an entry, the steady state of delta gossip)."""
    names = [f"key-{i:06d}" for i in range(keys)]
    target: Map = ORMap()
    for name in names:
        target.update("a", name, GCounter, _increment(1))
    source = target.copy()
    return target, [
        source.update("b", names[i % _SMALL], GCounter, _increment(1)) for i in range(200)
    ]


def delta_merge(config: Config, rng: Random) -> list[Row]:
    """One-key deltas into a map of ``_KEYS`` keys against the same into a
    map of ``_SMALL`` keys, per delta; target ratio 1.5 (O(delta))."""
    keys = _QUICK_KEYS if config.quick else _KEYS
    count = config.deltas
    small, small_deltas = _delta_target(_SMALL)
    big, big_deltas = _delta_target(keys)
    small_deltas, big_deltas = small_deltas[:count], big_deltas[:count]

    def join_all(deltas: list[Map]) -> Callable[[Map], None]:
        def run(state: Map) -> None:
            for delta in deltas:
                state.merge(delta)

        return run

    floor, figure = compare(
        Trial(small.copy, join_all(small_deltas), len(small_deltas)),
        Trial(big.copy, join_all(big_deltas), len(big_deltas)),
        config,
    )
    return [
        Row(
            f"ormap delta, {keys:,} vs {_SMALL} keys",
            "one-key delta",
            f"the same deltas into a {_SMALL}-key map",
            floor,
            figure,
            1.5,
            f"{count} deltas of G-Counter updates per repetition into a fresh copy;"
            " ratio = big / small",
        )
    ]
