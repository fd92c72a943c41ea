"""Optional peers on the disjoint OR-Set workload, when they are installed.

pycrdt (Yjs in Rust) and automerge (Rust) keep a set as a map of element ->
true. A full-state merge is pycrdt's ``apply_update`` of the other document's
full update (encoded outside the clock) and automerge's ``Document.merge``,
each into a copy made outside the clock. They are reported against the same
set-union floor, for information: no target. Neither is a dependency; a peer
that is missing or whose API has moved is skipped with a note.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from random import Random
from typing import Any

from bench.harness import Config, Row, Trial, compare
from bench.workloads import SetWorkload, disjoint_workloads

Sets = tuple[set[str], set[str]]


def _pycrdt_merge(workloads: list[SetWorkload]) -> Trial[Any]:
    pycrdt: Any = importlib.import_module("pycrdt")

    def build(h: SetWorkload) -> Any:
        doc = pycrdt.Doc()
        doc["set"] = items = pycrdt.Map()
        with doc.transaction():
            for element in h.added:
                items[element] = True
            for element in h.removed:
                del items[element]
        return doc

    a, b = (build(h) for h in workloads)
    update_a, update_b = a.get_update(), b.get_update()

    def copies() -> tuple[Any, Any]:
        copy_a, copy_b = pycrdt.Doc(), pycrdt.Doc()
        copy_a.apply_update(update_a)
        copy_b.apply_update(update_b)
        return copy_a, copy_b

    def merge(pair: tuple[Any, Any]) -> None:
        pair[0].apply_update(update_b)
        pair[1].apply_update(update_a)

    return Trial(copies, merge, 2)


def _automerge_merge(workloads: list[SetWorkload]) -> Trial[Any]:
    core: Any = importlib.import_module("automerge.core")

    def build(h: SetWorkload) -> Any:
        doc = core.Document(actor_id=h.replica.encode())
        with doc.transaction() as tx:
            for element in h.added:
                tx.put(core.ROOT, element, core.ScalarType.Boolean, True)
            for element in h.removed:
                tx.delete(core.ROOT, element)
        return doc

    a, b = (build(h) for h in workloads)

    def copies() -> tuple[Any, Any]:
        return a.fork(), b.fork()

    def merge(pair: tuple[Any, Any]) -> None:
        pair[0].merge(b)
        pair[1].merge(a)

    return Trial(copies, merge, 2)


PEERS: dict[str, tuple[str, Callable[[list[SetWorkload]], Trial[Any]]]] = {
    "pycrdt": ("pycrdt", _pycrdt_merge),
    "automerge": ("automerge.core", _automerge_merge),
}


def peer_merge(config: Config, rng: Random) -> tuple[list[Row], list[str]]:
    """Each installed peer on the workload of :func:`bench.sets.disjoint_merge`;
    given the same seeded ``rng``, the very same strings."""
    workloads = disjoint_workloads(rng, config.set_size, 0.1)
    x, y = (h.live() for h in workloads)

    def plain_copies() -> Sets:
        return x.copy(), y.copy()

    def union(pair: Sets) -> None:
        ab, ba = pair
        ab |= y
        ba |= x

    rows: list[Row] = []
    notes: list[str] = []
    for peer, (module, trial) in PEERS.items():
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            notes.append(f"peer {peer}: not installed, skipped")
            continue
        try:
            floor, figure = compare(Trial(plain_copies, union, 2), trial(workloads), config)
        except Exception as exc:  # a peer's API moved: report it, don't stop the run
            notes.append(f"peer {peer}: failed ({exc!r:.120}), skipped")
            continue
        rows.append(
            Row(
                f"peer {peer}: set merge, 2 x {config.set_size:,} disjoint",
                "merge",
                f"x |= y on plain sets of {len(x):,} and {len(y):,} strings",
                floor,
                figure,
                None,
                "for comparison; no target",
            )
        )
    return rows, notes
