"""The command line: run every benchmark, print the table, optionally write JSON.

python -m bench [--quick] [--repeat N] [--seed S] [--json PATH] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from random import Random

from bench import (
    bookkeeping,
    codec,
    counters,
    frames,
    gossip,
    levels,
    maps,
    natsprocesses,
    origins,
    peers,
    processes,
    pruning,
    sets,
    snapshots,
    store,
    transports,
)
from bench.harness import Config, Row, render, write_json

Benchmark = Callable[[Config, Random], list[Row]]

#: Each benchmark with the name of its seed stream; each peer row
#: (``bench.peers``) draws from the stream of the row it stands beside, so
#: they run on identical strings and amounts.
BENCHMARKS: list[tuple[str, Benchmark]] = [
    ("orset-disjoint", sets.disjoint_merge),
    ("orset-interleaved", sets.interleaved_merge),
    ("orset-delta", sets.delta_merge),
    ("orset-origins", origins.orset_origins),
    ("mvregister-origins", origins.mvregister_origins),
    ("counter-merge", counters.counter_merge),
    ("counter-increment", counters.counter_increment),
    ("counter-fold", counters.counter_fold),
    ("ormap-merge", maps.full_merge),
    ("ormap-delta", maps.delta_merge),
    ("codec-orset", codec.orset_codec),
    ("codec-gcounter", codec.gcounter_codec),
    ("codec-gcounter-order", counters.gcounter_encode_order),
    ("codec-hostile", codec.hostile_decode),
    ("frame-parse", frames.frame_parse),
    ("gossip-convergence", gossip.convergence),
    ("gossip-bytes", gossip.delta_bytes),
    ("gossip-scale-replicas", gossip.scale_replicas),
    ("gossip-scale-state", gossip.scale_state),
    ("snapshot-rounds", snapshots.snapshot_rounds),
    ("snapshot-frames", snapshots.snapshot_frames),
    ("store-flush", store.flush_changed),
    ("tcp-processes", processes.processes),
    ("nats-frames", transports.nats_frames),
    ("nats-processes", natsprocesses.nats_processes),
    ("levels", levels.levels),
    ("bounded-state", bookkeeping.bounded_state),
    ("pruning-opener", pruning.opener),
]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="crdtkit benchmarks beside plain-Python floors."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repetitions: checks that it runs, in seconds",
    )
    parser.add_argument(
        "--repeat", type=int, metavar="N", help="timed repetitions per figure (default 7, quick 3)"
    )
    parser.add_argument("--seed", type=int, default=2024, help="workload seed (default 2024)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    names = [stream for stream, _ in BENCHMARKS] + ["peers"]
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the table to stdout and progress to stderr."""
    args = _parse(argv)
    config = Config.small(args.repeat) if args.quick else Config.full(args.repeat)
    rows: list[Row] = []
    chosen = set(args.only or [*(stream for stream, _ in BENCHMARKS), "peers"])
    for stream, benchmark in BENCHMARKS:
        if stream in chosen:
            print(f"running {stream} ...", file=sys.stderr, flush=True)
            rows += benchmark(config, Random(f"{args.seed}:{stream}"))
    notes: list[str] = []
    if "peers" in chosen:
        print("running peers ...", file=sys.stderr, flush=True)
        peer_rows, notes = peers.peer_rows(config, args.seed)
        rows += peer_rows
    print(render(rows, notes))
    if args.json is not None:
        meta: dict[str, object] = {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "cbor2": version("cbor2"),
            "quick": config.quick,
            "repeat": config.repeat,
            "warmup": config.warmup,
            "seed": args.seed,
            "only": sorted(chosen),
        }
        write_json(args.json, rows, notes, meta)
    return 0
