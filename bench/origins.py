"""OR-Set and MV-Register operations against the number of origins.

Issue 10 measured an OR-Set whose live elements came from 1,000 origins at 76
us per add and 29 us per ``in`` (3.3 us and 0.09 us with one origin): every
operation walked the per-origin maps. An origin is a replica id that added a
live element, and a cluster whose nodes restart under fresh incarnations
collects them without bound, so these costs must not depend on it.

Each row times one operation on a set of 10,000 live elements added
round-robin by r origins (1,000, then 10,000: one element each), beside the
same operation on a set of the same elements added by one origin (the floor,
measured in the same run); the target is a ratio of at most 1.5. Updates run
on fresh copies made outside the clock. The MV-Register rows do the same for
a register whose context has seen r writers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from random import Random

from bench.harness import Config, Row, Trial, compare
from bench.workloads import keys
from crdts import MVRegister, ORSet

#: The replica that updates the measured set: not one of its origins.
ME = "me"


def _sizes(config: Config) -> tuple[int, tuple[int, ...], int]:
    """Live elements, the origin counts measured, operations per repetition."""
    if config.quick:
        return 1_000, (100, 1_000), 200
    return 10_000, (1_000, 10_000), 200


def _samples(config: Config) -> Config:
    """Five times the repetitions: one is a millisecond or less, and on a
    shared machine a sample is either all contended or not at all, so the
    median needs many of them to settle."""
    return config if config.quick else replace(config, repeat=5 * config.repeat)


def _orset(elements: list[str], origins: list[str]) -> ORSet[str]:
    """``elements`` added round-robin by ``origins`` (each origin at least one)."""
    state: ORSet[str] = ORSet()
    for i, element in enumerate(elements):
        state.add(element, origins[i % len(origins)])
    return state


def _mvregister(origins: list[str]) -> MVRegister[str]:
    """A register whose context saw every origin write, and whose value one
    later write by ``ME`` replaced: one value, ``len(origins)`` ids in its context."""
    state: MVRegister[str] = MVRegister()
    for origin in origins:
        write: MVRegister[str] = MVRegister()
        write.assign(origin, origin)
        state.merge(write)
    state.assign("seen-all", ME)
    return state


Op = Callable[[ORSet[str]], object]


def _alternate(xs: list[str], ys: list[str]) -> list[str]:
    """``xs[0], ys[0], xs[1], ys[1], ...``"""
    return [x for pair in zip(xs, ys, strict=True) for x in pair]


def orset_ops(rng: Random, elements: list[str], ops: int) -> dict[str, tuple[str, Op]]:
    """The timed operations by row name: (what one operation is, the run)."""
    news = keys(rng, ops, "new-")
    # Half the adds name a live element, whose old dots the add must find
    # and replace; half a new one.
    adds = _alternate(news[: ops // 2], rng.sample(elements, ops // 2))
    removes = rng.sample(elements, ops)
    probes = _alternate(rng.sample(elements, ops // 2), news[: ops // 2])

    def add(state: ORSet[str]) -> None:
        for element in adds:
            state.add(element, ME)

    def remove(state: ORSet[str]) -> None:
        for element in removes:
            state.remove(element)

    def contains(state: ORSet[str]) -> int:
        return sum(element in state for element in probes)

    def length(state: ORSet[str]) -> int:
        # After a local update, as an application reads its set's size.
        total = 0
        for element in news:
            state.add(element, ME)
            total += len(state)
        return total

    return {
        "add": ("add", add),
        "remove": ("remove", remove),
        "in": ("in", contains),
        "add then len": ("add+len", length),
    }


def _delta_row(
    rng: Random,
    elements: list[str],
    states: tuple[ORSet[str], ORSet[str]],
    *,
    origins: int,
    config: Config,
) -> Row:
    """One-element add deltas from ``ME`` (of new and of live elements) joined
    into a fresh copy of each set: what a replica does with gossiped updates."""
    ops = _sizes(config)[2]
    news = keys(rng, ops, "delta-")
    touched = _alternate(news[: ops // 2], rng.sample(elements, ops // 2))

    def trial(target: ORSet[str]) -> Trial[ORSet[str]]:
        producer = target.copy()
        deltas = [producer.add(element, ME) for element in touched]

        def join_all(state: ORSet[str]) -> int:
            # Read the size after each join, as an application does: a join
            # that defers its count must pay for it here.
            total = 0
            for delta in deltas:
                state.merge(delta)
                total += len(state)
            return total

        joined = target.copy()
        join_all(joined)
        if joined != producer:  # untimed: a fast wrong join is worth nothing
            raise RuntimeError("joining ORSet deltas did not reproduce their source state")
        return Trial(target.copy, join_all, len(deltas))

    floor, figure = states
    low, high = compare(trial(floor), trial(figure), _samples(config))
    return Row(
        f"ORSet add-delta merge + len, {origins:,} origins vs 1",
        "merge",
        f"the same deltas into {len(elements):,} elements of one origin",
        low,
        high,
        1.5,
        "one-element add deltas (half of new elements, half of live ones), len after each",
    )


def orset_origins(config: Config, rng: Random) -> list[Row]:
    """ORSet add, remove, ``in``, ``len`` and delta merges with many origins
    against one origin: each within 1.5x."""
    n, origin_counts, ops = _sizes(config)
    elements = keys(rng, n, "e-")
    floor = _orset(elements, ["o-0"])
    rows: list[Row] = []
    for r in origin_counts:
        figure = _orset(elements, [f"o-{i}" for i in range(r)])
        for name, (per, run) in orset_ops(rng, elements, ops).items():
            low, high = compare(
                Trial(floor.copy, run, ops), Trial(figure.copy, run, ops), _samples(config)
            )
            rows.append(
                Row(
                    f"ORSet {name}, {r:,} origins vs 1",
                    per,
                    f"the same {per} on {n:,} elements of one origin",
                    low,
                    high,
                    1.5,
                    f"{n:,} live elements added round-robin by {r:,} origins",
                )
            )
        rows.append(_delta_row(rng, elements, (floor, figure), origins=r, config=config))
    return rows


def mvregister_origins(config: Config, rng: Random) -> list[Row]:
    """MVRegister assign, and the join of its delta, with a context of many
    origins against one: each within 1.5x."""
    _, origin_counts, ops = _sizes(config)
    values = keys(rng, ops, "v-")
    floor = _mvregister(["o-0"])
    rows: list[Row] = []

    def assign(state: MVRegister[str]) -> None:
        for value in values:
            state.assign(value, ME)

    for r in origin_counts:
        figure = _mvregister([f"o-{i}" for i in range(r)])
        low, high = compare(
            Trial(floor.copy, assign, ops), Trial(figure.copy, assign, ops), _samples(config)
        )
        rows.append(
            Row(
                f"MVRegister assign, {r:,} origins vs 1",
                "assign",
                "the same assign with one origin in the context",
                low,
                high,
                1.5,
                f"one live value, {r:,} replica ids in the context",
            )
        )

        def deltas(target: MVRegister[str]) -> Trial[MVRegister[str]]:
            producer = target.copy()
            made = [producer.assign(value, ME) for value in values]

            def join_all(state: MVRegister[str]) -> None:
                for delta in made:
                    state.merge(delta)

            return Trial(target.copy, join_all, len(made))

        low, high = compare(deltas(floor), deltas(figure), _samples(config))
        rows.append(
            Row(
                f"MVRegister assign-delta merge, {r:,} origins vs 1",
                "merge",
                "the same deltas into a register with one origin in the context",
                low,
                high,
                1.5,
                f"one live value, {r:,} replica ids in the context",
            )
        )
    return rows
