"""Writing a replica's changed keys to its store, against rewriting its
whole state (in-process: no node, no network).

A :class:`~replication.Replicator` holds ``store_keys`` G-Counters, all of
them written to a :class:`~replication.sqlite.SQLiteStore` once; a
:class:`~replication.store.WriteBehind` notes what changes after that. Each
timed repetition increments ``store_changed`` keys (chosen at random, seeded)
and writes them:

- figure: ``WriteBehind.flush`` into the SQLite store, one commit of the
  changed keys' rows (O(changed keys));
- floor: a whole-state rewrite as the node made one before its state moved
  to SQLite: the whole keyspace encoded (``Replicator.encode_keyspace``) and
  written to one file with ``snapshot.files.write_atomic`` (a temporary file,
  its fsync, a rename and the folder's fsync). This is the "whole-state
  rewrite" PERFORMANCE.md's target names (written when the node checkpointed
  that way).

Both sides make the same increments, so the ratio is what writing costs.
Target (PERFORMANCE.md, "The node"): the figure at most 10% of the floor.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from random import Random
from statistics import median
from time import perf_counter

from bench.harness import Config, Row, Trial, alternate
from crdts import GCounter
from replication import Replicator
from replication.sqlite import SQLiteStore
from replication.store import WriteBehind, encode_row
from snapshot.files import write_atomic

#: Keys in the replica, and keys changed per timed repetition.
_FULL = (100_000, 1_000)
_QUICK = (5_000, 50)


def _bump(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me)


def _change(replica: Replicator, keys: list[str]) -> None:
    for key in keys:
        replica.update(key, GCounter, _bump)


def flush_changed(config: Config, rng: Random) -> list[Row]:
    """``WriteBehind.flush`` of the changed keys beside a whole-state rewrite;
    see the module docstring. Target: at most 0.1x."""
    total, changed = _QUICK if config.quick else _FULL
    names = [f"key-{i:06d}" for i in range(total)]
    replica = Replicator("n0", [], rng=Random(rng.getrandbits(64)))
    _change(replica, names)
    with tempfile.TemporaryDirectory(prefix="crdtkit-bench-store-") as folder:
        store = SQLiteStore(Path(folder) / "store", node="n0")
        try:
            changes = WriteBehind(replica)
            start = perf_counter()
            rows = [(key, encode_row(entry)) for key in names if (entry := replica.entry(key))]
            encoded = perf_counter() - start
            store.commit(rows, (), {"node": b"n0"})
            all_rows = perf_counter() - start
            changes.keys.clear()
            checkpoint = Path(folder) / "checkpoint.snap"
            held: list[int] = []
            flushes: list[float] = []  # the flush alone, without the increments

            def rewrite(keys: list[str]) -> None:
                _change(replica, keys)
                body = replica.encode_keyspace()
                write_atomic(checkpoint, body)
                held.append(len(body))
                changes.keys.clear()  # the floor wrote everything

            def flush(keys: list[str]) -> None:
                _change(replica, keys)
                start = perf_counter()
                changes.flush(store)
                flushes.append(perf_counter() - start)

            def pick() -> list[str]:
                return rng.sample(names, changed)

            floor, figure = alternate([Trial(pick, rewrite), Trial(pick, flush)], config)
            if changes.keys:
                raise RuntimeError("WriteBehind.flush left changed keys behind")
        finally:
            store.close()
    note = (
        f"figure = {changed:,} of {total:,} G-Counter keys incremented, then "
        "replication.store.WriteBehind.flush: their rows encoded (encode_row) and "
        "committed in one SQLiteStore transaction (WAL, synchronous=FULL: one fsync); "
        f"the floor makes the same increments, then encodes the whole keyspace "
        f"({held[-1] / 1e6:.3g} MB) and writes it with snapshot.files.write_atomic "
        "(file fsync, rename, folder fsync), as the node's checkpoint did before SQLite. "
        f"Of the figure, WriteBehind.flush alone took {median(flushes) * 1e3:.3g} ms "
        f"(median, warm-up included), the rest is the increments. "
        f"For reference, writing all {total:,} rows to the store in one commit took "
        f"{all_rows:.3g} s once at setup ({encoded:.3g} s of it encoding the rows). "
        f"{config.repeat} timed repetitions after {config.warmup} warm-up, alternating"
    )
    return [
        Row(
            f"store flush {changed:,} changed of {total:,} keys",
            "run",
            "the same increments, then a whole-state rewrite: encode_keyspace() written "
            "with write_atomic (fsyncs)",
            floor,
            figure,
            0.1,
            note,
        )
    ]

