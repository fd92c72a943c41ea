"""Timing and reporting shared by every benchmark.

A *trial* is one thing to time: ``setup`` builds fresh input outside the clock
(copies of the states to merge into, say, which cost O(n) themselves) and
``run`` is the only thing timed. A floor and a figure are timed alternately,
repetition by repetition, so that a shared machine's slow moments hit both.
"""

from __future__ import annotations

import gc
import json
import statistics
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Generic, TypeVar

S = TypeVar("S")
F = TypeVar("F")
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions for one run; ``quick`` shrinks everything so the
    whole suite runs in seconds (for the smoke test), with no meaning for speed."""

    quick: bool
    repeat: int
    warmup: int
    set_size: int  # elements each replica adds in the disjoint OR-Set workload
    pool_size: int  # the shared element space of the interleaved workload
    rounds: int  # interleaved workload: rounds of local updates, then gossip
    ops_per_round: int  # interleaved workload: updates per replica per round
    delta_small: int  # elements in the small set a delta joins
    delta_big: int  # elements in the big set a delta joins
    deltas: int  # distinct one-element deltas joined per timed repetition
    replicas: int  # replica slots in each counter state
    counter_merges: int  # counter merges per timed repetition (one is ~50 us)
    increments: int  # increments per timed repetition
    fold_replicas: int  # counter fold: replicas whose states are folded into one
    fold_increments: int  # counter fold: increments each replica made
    codec_size: int  # elements (or replicas) in the encoded states
    gossip_replicas: tuple[int, ...]  # cluster sizes for convergence and scale
    gossip_keys: int  # keys in the bytes-per-round keyspace
    gossip_rounds: int  # steady-state rounds measured for bytes per round
    gossip_elements: tuple[int, ...]  # ORSet sizes for the state-size scale
    bookkeeping_updates: tuple[int, int]  # bounded state: updates of the floor, of the figure
    snapshot_nodes: int  # nodes of the snapshot round-cost clusters
    snapshot_frame_nodes: tuple[int, ...]  # cluster sizes for frames per snapshot

    @classmethod
    def full(cls, repeat: int | None = None) -> Config:
        """The sizes PERFORMANCE.md names."""
        return cls(
            quick=False,
            repeat=repeat or 7,
            warmup=1,
            set_size=50_000,
            pool_size=50_000,
            rounds=10,
            ops_per_round=6_000,
            delta_small=1_000,
            delta_big=100_000,
            deltas=200,
            replicas=1_000,
            counter_merges=50,
            increments=100_000,
            fold_replicas=100,
            fold_increments=1_000,
            codec_size=100_000,
            gossip_replicas=(16, 64, 256, 1_024),
            gossip_keys=10_000,
            gossip_rounds=10,
            gossip_elements=(1_000, 10_000, 100_000),
            bookkeeping_updates=(10_000, 1_000_000),
            snapshot_nodes=64,
            snapshot_frame_nodes=(16, 64, 256),
        )

    @classmethod
    def small(cls, repeat: int | None = None) -> Config:
        """Small enough for a smoke test; the numbers only show it runs."""
        return cls(
            quick=True,
            repeat=repeat or 3,
            warmup=1,
            set_size=2_000,
            pool_size=2_000,
            rounds=3,
            ops_per_round=300,
            delta_small=500,
            delta_big=5_000,
            deltas=50,
            replicas=200,
            counter_merges=5,
            increments=5_000,
            fold_replicas=20,
            fold_increments=50,
            codec_size=2_000,
            gossip_replicas=(16, 64),
            gossip_keys=1_000,
            gossip_rounds=5,
            gossip_elements=(1_000, 10_000),
            bookkeeping_updates=(2_000, 20_000),
            snapshot_nodes=16,
            snapshot_frame_nodes=(16,),
        )


@dataclass(frozen=True)
class Timing:
    """Median, min and max of a figure over its repetitions: seconds per
    operation unless its row says another unit (rounds, bytes)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples))

    @classmethod
    def constant(cls, x: float) -> Timing:
        """A figure that does not vary: a theory, a setting."""
        return cls(x, x, x)

    def to_json(self, unit: str = "s") -> dict[str, float]:
        suffix = "_s" if unit == "s" else ""
        return {f"median{suffix}": self.median, f"min{suffix}": self.low, f"max{suffix}": self.high}


def traced(build: Callable[[], T]) -> tuple[T, int]:
    """``build()`` and the bytes it leaves allocated: ``tracemalloc`` before
    and after, garbage collected first both times. Cost: ``build()`` slowed
    down by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        used: int = tracemalloc.get_traced_memory()[0] - base
        return kept, used
    finally:
        tracemalloc.stop()


def size(n: float) -> str:
    """A byte count for people, in decimal units: ``80.7 kB``."""
    for name, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {name}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Trial(Generic[S]):
    """``run(setup())`` is timed, ``setup()`` is not; one run is ``ops`` operations."""

    setup: Callable[[], S]
    run: Callable[[S], object]
    ops: int = 1


def _time_once(trial: Trial[S]) -> float:
    state = trial.setup()
    # Collect the setup's garbage now, so that the run does not pay for it.
    gc.collect()
    start = perf_counter()
    trial.run(state)
    return (perf_counter() - start) / trial.ops


def compare(floor: Trial[F], figure: Trial[S], config: Config) -> tuple[Timing, Timing]:
    """Time ``floor`` and ``figure`` alternately: warm-up rounds first, then
    ``config.repeat`` timed rounds. Returns (floor, figure) seconds per operation."""
    floor_t, figure_t = alternate([floor, figure], config)
    return floor_t, figure_t


def alternate(trials: Sequence[Trial[Any]], config: Config) -> list[Timing]:
    """Time ``trials`` in turn, repetition by repetition (as :func:`compare`
    does for two): ``config.warmup`` untimed rounds, then ``config.repeat``
    timed ones. Returns seconds per operation for each trial."""
    samples: list[list[float]] = [[] for _ in trials]
    for i in range(config.warmup + config.repeat):
        for trial, times in zip(trials, samples, strict=True):
            seconds = _time_once(trial)
            if i >= config.warmup:
                times.append(seconds)
    return [Timing.of(times) for times in samples]


@dataclass(frozen=True)
class Row:
    """One reported figure beside its floor.

    ``target`` is the largest acceptable ratio figure / floor (None: reported
    for information only). ``per`` names one timed operation, ``floor_is`` says
    what the floor is. ``unit`` is what floor and figure count: "s" (seconds
    per operation) unless a row counts something else ("rounds", "B").
    """

    name: str
    per: str
    floor_is: str
    floor: Timing
    figure: Timing
    target: float | None
    note: str = ""
    unit: str = "s"

    @property
    def ratio(self) -> float:
        return self.figure.median / self.floor.median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "per": self.per,
            "floor_is": self.floor_is,
            "unit": self.unit,
            "floor": self.floor.to_json(self.unit),
            "figure": self.figure.to_json(self.unit),
            "ratio": self.ratio,
            "target_ratio": self.target,
            "met": self.met,
            "note": self.note,
        }


_SCALES = {
    "s": (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)),
    "B": (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)),
}


def _scale(unit: str, value: float) -> tuple[str, float]:
    scales = _SCALES.get(unit)
    if scales is None:
        return unit, 1.0
    for name, scale in scales:
        if value >= scale:
            return name, scale
    return scales[-1]


def _show(t: Timing, unit: str = "s") -> str:
    """``median unit [min-max]``; the range is left out when it is one value."""
    name, scale = _scale(unit, t.median)
    shown = f"{t.median / scale:.3g} {name}"
    if t.low == t.high == t.median:
        return shown
    return f"{shown} [{t.low / scale:.3g}-{t.high / scale:.3g}]"


def render(rows: Sequence[Row], notes: Sequence[str]) -> str:
    """The table for people: median [min-max] per operation (or per what the
    row counts), then the notes."""
    head = ("benchmark", "per", "floor", "figure", "ratio", "target", "met")
    body = [
        (
            row.name,
            row.per,
            _show(row.floor, row.unit),
            _show(row.figure, row.unit),
            f"{row.ratio:.2f}x",
            "-" if row.target is None else f"<= {row.target:g}x",
            {True: "yes", False: "NO", None: "-"}[row.met],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    footnotes = [f"- {row.name}: floor = {row.floor_is}. {row.note}".rstrip() for row in rows]
    return "\n".join([*lines, "", "Notes:", *footnotes, *(f"- {n}" for n in notes)])


def write_json(
    path: Path, rows: Sequence[Row], notes: Sequence[str], meta: dict[str, object]
) -> None:
    """The same rows for machines."""
    document = {"meta": meta, "rows": [row.to_json() for row in rows], "notes": list(notes)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
