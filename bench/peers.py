"""Peers side by side: pycrdt and automerge on crdtkit's own workloads.

Install them with ``pip install -e '.[peers]'``. Each benchmark here replays
the very workload of the crdtkit row it stands beside (the same seed stream,
the same strings and amounts) and times it against the same floor, so the
ratios of one run compare directly:

- set merge, disjoint and 8 replicas interleaved (``bench.sets``): the peers
  keep a set as a map of element -> true; a full-state merge is pycrdt's
  ``apply_update`` of the other document's full update (encoded outside the
  clock) and automerge's ``Document.merge``, each into a copy made outside
  the clock;
- counter increments and folds (``bench.counters``): a G-Counter as a map of
  replica -> int, one transaction per increment (each is an update the peer
  could ship), read-modify-write of the replica's slot. automerge has a
  counter type, but its Python binding (1.0.0rc1) cannot create one: the
  ``put`` of a Counter panics with "not yet implemented";
- the codec (``bench.codec``): pycrdt's ``get_update`` / ``apply_update`` into
  a fresh document and automerge's ``save`` / ``Document.load`` of the same
  set, with the bytes per element in the note. These rows are named
  "encode"/"decode", not "codec": crdtkit's codec rows also promise that
  equal states give identical bytes, which neither peer's format claims.

The semantics are near, not equal: a Yjs or automerge map entry written
concurrently keeps one writer's value, where an OR-Set is add-wins and a
G-Counter keeps every replica's slot. The rows are for comparison, with no
target. Neither peer is a dependency: a peer that is missing, or whose API
has moved, is skipped with a note; the crdtkit rows never depend on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from random import Random
from typing import Any

import cbor2

from bench.codec import orset_plain, orset_workloads
from bench.counters import Slots, _max_merge, fold_counts, increment_ops
from bench.harness import Config, Row, Trial, compare
from bench.workloads import ADD_SHARE, SetWorkload, disjoint_workloads, keys

Sets = tuple[set[str], set[str]]
Rows = tuple[list[Row], list[str]]

#: Increments replayed untimed to check a peer's counter.
CHECKED = 500


class Pycrdt:
    """pycrdt (Yjs in Rust): a document holding one root map, ``"m"``."""

    name = "pycrdt"

    def __init__(self) -> None:
        self.lib: Any = importlib.import_module("pycrdt")

    def new(self, index: int) -> Any:
        doc = self.lib.Doc(client_id=index + 1)
        doc["m"] = self.lib.Map()
        return doc

    def root(self, doc: Any) -> Any:
        return doc.get("m", type=self.lib.Map)

    @contextlib.contextmanager
    def edit(self, doc: Any) -> Iterator[Callable[..., Any]]:
        """One transaction; yields ``op(kind, key, value)`` for put / delete / add."""
        m = self.root(doc)
        with doc.transaction():

            def op(kind: str, key: str, value: Any = None) -> None:
                if kind == "put":
                    m[key] = value
                elif kind == "delete":
                    if key in m:
                        del m[key]
                else:  # add to an int slot
                    m[key] = m.get(key, 0) + value

            yield op

    def live(self, doc: Any) -> set[str]:
        return set(self.root(doc).keys())

    def save(self, doc: Any) -> bytes:
        data: bytes = doc.get_update()
        return data

    def load(self, data: bytes) -> Any:
        doc = self.lib.Doc()
        doc.apply_update(data)
        return doc

    def merger(self, source: Any) -> Callable[[Any], None]:
        """A merge of ``source`` into a document; encoding ``source`` is not timed."""
        update = source.get_update()
        return lambda doc: doc.apply_update(update)

    def copy(self, doc: Any) -> Any:
        return self.load(self.save(doc))


class Automerge:
    """automerge (Rust core): the document's root map."""

    name = "automerge"

    def __init__(self) -> None:
        self.core: Any = importlib.import_module("automerge.core")

    def new(self, index: int) -> Any:
        return self.core.Document(actor_id=f"replica-{index}".encode())

    @contextlib.contextmanager
    def edit(self, doc: Any) -> Iterator[Callable[..., Any]]:
        core = self.core
        root, boolean, integer = core.ROOT, core.ScalarType.Boolean, core.ScalarType.Int
        with doc.transaction() as tx:

            def op(kind: str, key: str, value: Any = None) -> None:
                if kind == "put":
                    tx.put(root, key, boolean, value)
                elif kind == "delete":
                    tx.delete(root, key)  # a no-op when absent
                else:
                    held = tx.get(root, key)
                    tx.put(root, key, integer, (held[0][1] if held else 0) + value)

            yield op

    def live(self, doc: Any) -> set[str]:
        return set(doc.keys(self.core.ROOT))

    def save(self, doc: Any) -> bytes:
        data: bytes = doc.save()
        return data

    def load(self, data: bytes) -> Any:
        return self.core.Document.load(data)

    def merger(self, source: Any) -> Callable[[Any], None]:
        return lambda doc: doc.merge(source)

    def copy(self, doc: Any) -> Any:
        return doc.fork()


Peer = Pycrdt | Automerge
PEERS: dict[str, tuple[str, type[Pycrdt] | type[Automerge]]] = {
    "pycrdt": ("pycrdt", Pycrdt),
    "automerge": ("automerge", Automerge),
}


def installed() -> tuple[list[Peer], list[str]]:
    """The peers that import, and a note for each that does not."""
    peers: list[Peer] = []
    notes: list[str] = []
    for name, (module, cls) in PEERS.items():
        if importlib.util.find_spec(module) is None:
            notes.append(f"peer {name}: not installed (pip install -e '.[peers]'), skipped")
            continue
        try:
            peers.append(cls())
        except Exception as exc:
            notes.append(f"peer {name}: does not import ({exc!r:.120}), skipped")
    return peers, notes


def _each(
    peers: list[Peer], what: str, measure: Callable[[Peer], list[Row]]
) -> Rows:
    """``measure`` each peer; one whose API moved is noted, not fatal."""
    rows: list[Row] = []
    notes: list[str] = []
    for peer in peers:
        try:
            rows += measure(peer)
        except Exception as exc:  # a peer's API moved: report it, don't stop the run
            notes.append(f"peer {peer.name}: {what} failed ({exc!r:.120}), skipped")
    return rows, notes


def _replay(peer: Peer, index: int, h: SetWorkload) -> Any:
    doc = peer.new(index)
    with peer.edit(doc) as op:
        for element in h.added:
            op("put", element, True)
        for element in h.removed:
            op("delete", element)
    return doc


def _set_merge_row(peer: Peer, name: str, a: Any, b: Any, config: Config) -> Row:
    """Merge both ways, each into a copy made outside the clock, against
    ``x |= y`` on plain sets of the same live elements."""
    x, y = peer.live(a), peer.live(b)
    into_a, into_b = peer.merger(b), peer.merger(a)

    def plain_copies() -> Sets:
        return x.copy(), y.copy()

    def union(pair: Sets) -> None:
        pair[0].update(y)
        pair[1].update(x)

    def copies() -> tuple[Any, Any]:
        return peer.copy(a), peer.copy(b)

    def merge(pair: tuple[Any, Any]) -> None:
        into_a(pair[0])
        into_b(pair[1])

    floor, figure = compare(Trial(plain_copies, union, 2), Trial(copies, merge, 2), config)
    return Row(
        f"peer {peer.name}: {name}",
        "merge",
        f"x |= y on plain sets of {len(x):,} and {len(y):,} strings",
        floor,
        figure,
        None,
        "for comparison; no target",
    )


def set_disjoint(config: Config, rng: Random, peers: list[Peer]) -> Rows:
    """The workload of :func:`bench.sets.disjoint_merge` (same ``rng`` stream)."""
    workloads = disjoint_workloads(rng, config.set_size, 0.1)
    name = f"set merge, 2 x {config.set_size:,} disjoint"

    def measure(peer: Peer) -> list[Row]:
        a, b = (_replay(peer, i, h) for i, h in enumerate(workloads))
        return [_set_merge_row(peer, name, a, b, config)]

    return _each(peers, "set merge disjoint", measure)


def _interleaved(peer: Peer, rng: Random, config: Config, replicas: int = 8) -> list[Any]:
    """:func:`bench.workloads.interleaved_replicas` replayed on ``peer``: the
    same random draws in the same order, so the same operations, and the same
    full-state pulls between rounds."""
    pool = keys(rng, config.pool_size, "k-")
    docs = [peer.new(i) for i in range(replicas)]
    for round_ in range(config.rounds):
        for doc in docs:
            with peer.edit(doc) as op:
                for _ in range(config.ops_per_round):
                    element = pool[rng.randrange(config.pool_size)]
                    if rng.random() < ADD_SHARE:
                        op("put", element, True)
                    else:
                        op("delete", element)
        if round_ < config.rounds - 1:
            shift = 1 + round_ % (replicas - 1)
            for i, doc in enumerate(docs):
                peer.merger(docs[(i + shift) % replicas])(doc)
    return docs


def set_interleaved(config: Config, seed: str, peers: list[Peer]) -> Rows:
    """The workload of :func:`bench.sets.interleaved_merge`: each peer draws
    from a fresh ``Random(seed)``, the seed of that row's stream."""
    name = f"set merge, 8 replicas interleaved ({config.pool_size:,} pool)"

    def measure(peer: Peer) -> list[Row]:
        docs = _interleaved(peer, Random(seed), config)
        return [_set_merge_row(peer, name, docs[0], docs[1], config)]

    return _each(peers, "set merge interleaved", measure)


def counter_increment(config: Config, rng: Random, peers: list[Peer]) -> Rows:
    """The workload of :func:`bench.counters.counter_increment`, one
    transaction per increment, against the same dict floor."""
    ops = increment_ops(config, rng)

    def dict_increments(d: Slots) -> None:
        for k, n in ops:
            d[k] = d.get(k, 0) + n

    def measure(peer: Peer) -> list[Row]:
        def increments(doc: Any) -> None:
            for k, n in ops:
                with peer.edit(doc) as op:
                    op("add", k, n)

        # Checked on a prefix: a full extra run would double the smoke test's share.
        check, prefix = peer.new(0), ops[:CHECKED]
        for k, n in prefix:
            with peer.edit(check) as op:
                op("add", k, n)
        if sum(_slots(peer, check).values()) != sum(n for _, n in prefix):
            raise RuntimeError("the increments did not add up")
        floor, figure = compare(
            Trial(dict, dict_increments, len(ops)),
            Trial(lambda: peer.new(0), increments, len(ops)),
            config,
        )
        return [
            Row(
                f"peer {peer.name}: counter increment, {config.replicas:,} replicas",
                "increment",
                "d[k] = d.get(k, 0) + n on a plain dict",
                floor,
                figure,
                None,
                "a map of replica -> int, one transaction per increment; no target",
            )
        ]

    return _each(peers, "counter increment", measure)


def _slots(peer: Peer, doc: Any) -> dict[str, int]:
    if isinstance(peer, Pycrdt):
        return {k: int(v) for k, v in peer.root(doc).items()}
    return {k: doc.get(peer.core.ROOT, k)[0][1] for k in doc.keys(peer.core.ROOT)}


def counter_fold(config: Config, rng: Random, peers: list[Peer]) -> Rows:
    """The workload of :func:`bench.counters.counter_fold`: each replica's
    document (its increments one transaction each) merged into one fresh
    document, against the max-merge loop folding one-slot dicts."""
    workload = fold_counts(config, rng)
    plain = [{replica: sum(amounts)} for replica, amounts in workload]
    total = sum(sum(a) for _, a in workload)

    def dict_fold(into: Slots) -> None:
        for slots in plain:
            _max_merge(into, slots)

    def measure(peer: Peer) -> list[Row]:
        docs = []
        for index, (replica, amounts) in enumerate(workload):
            doc = peer.new(index + 1)
            for n in amounts:
                with peer.edit(doc) as op:
                    op("add", replica, n)
            docs.append(doc)
        mergers = [peer.merger(doc) for doc in docs]

        def fold(into: Any) -> None:
            for merge in mergers:
                merge(into)

        check = peer.new(0)
        fold(check)
        if sum(_slots(peer, check).values()) != total:
            raise RuntimeError("the fold did not add up")
        floor, figure = compare(
            Trial(dict, dict_fold, len(docs)),
            Trial(lambda: peer.new(0), fold, len(docs)),
            config,
        )
        return [
            Row(
                f"peer {peer.name}: counter fold, {len(docs):,} replicas x "
                f"{config.fold_increments:,} increments",
                "merge",
                "the max-merge loop folding one-slot dicts",
                floor,
                figure,
                None,
                "each replica's document merged into one fresh document; no target",
            )
        ]

    return _each(peers, "counter fold", measure)


def codec(config: Config, rng: Random, peers: list[Peer]) -> Rows:
    """The set of :func:`bench.codec.orset_codec` (four replicas' adds and
    removes, joined), saved and loaded per element against cbor2 of the plain
    ``{element: [replica, counter]}``."""
    workloads = orset_workloads(config, rng)
    plain = orset_plain(workloads)
    n = len(plain)
    plain_data = cbor2.dumps(plain)
    floor_is = f"{{str: [int, int]}} with {n:,} entries"

    def measure(peer: Peer) -> list[Row]:
        joined = peer.new(len(workloads))
        for i, h in enumerate(workloads):
            peer.merger(_replay(peer, i, h))(joined)
        if peer.live(joined) != set(plain):
            raise RuntimeError("the joined set is not the workload's")
        data = peer.save(joined)
        if peer.live(peer.load(data)) != set(plain):
            raise RuntimeError("the set does not survive save and load")
        note = f"{len(data) / n:.1f} vs {len(plain_data) / n:.1f} bytes per element; no target"
        enc_floor, enc = compare(
            Trial(lambda: plain, cbor2.dumps, n), Trial(lambda: joined, peer.save, n), config
        )
        dec_floor, dec = compare(
            Trial(lambda: plain_data, cbor2.loads, n), Trial(lambda: data, peer.load, n), config
        )
        what = f"set {n:,} elements"
        return [
            Row(
                f"peer {peer.name}: encode {what}",
                "element",
                f"cbor2.dumps of {floor_is}",
                enc_floor,
                enc,
                None,
                note,
            ),
            Row(
                f"peer {peer.name}: decode {what}",
                "element",
                f"cbor2.loads of {floor_is}",
                dec_floor,
                dec,
                None,
                note,
            ),
        ]

    return _each(peers, "codec", measure)


def peer_rows(config: Config, seed: int) -> Rows:
    """Every peer benchmark for every installed peer, each on the seed stream
    of the crdtkit row it stands beside (see ``bench.cli.BENCHMARKS``)."""
    peers, notes = installed()
    rows: list[Row] = []
    if not peers:
        return rows, notes
    if config.quick:
        # A quick run only shows that each row runs (tests/test_bench_smoke.py):
        # one timed repetition keeps the peers' share of it near a second.
        config = dataclasses.replace(config, repeat=1, warmup=0)
    runs: list[Rows] = [
        set_disjoint(config, Random(f"{seed}:orset-disjoint"), peers),
        set_interleaved(config, f"{seed}:orset-interleaved", peers),
        counter_increment(config, Random(f"{seed}:counter-increment"), peers),
        counter_fold(config, Random(f"{seed}:counter-fold"), peers),
        codec(config, Random(f"{seed}:codec-orset"), peers),
    ]
    for more_rows, more_notes in runs:
        rows += more_rows
        notes += more_notes
    return rows, notes
