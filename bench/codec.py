"""The codec, per element, against cbor2 on the plain structure of the same data.

The floor is ``cbor2.dumps`` / ``cbor2.loads`` (default options) of what a
program without CRDTs would store: for the OR-Set, ``{element: [replica,
counter]}`` (the element and the one dot that put it there); for the
G-Counter, ``{replica: count}``. ``crdts.codec`` does more than the floor:
it writes canonical CBOR, and ``decode`` validates hostile input and checks
that it was canonical. The target is still no slower per element.

Each row also checks the other promise of the format: equal states built in
different operation orders encode to identical bytes.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Sequence
from random import Random
from typing import TypeVar

import cbor2

from bench.harness import Config, Row, Timing, Trial, compare
from bench.workloads import SetWorkload, counts, keys, replica_ids
from crdts import GCounter, ORSet
from crdts.base import CRDT
from crdts.codec import decode, encode
from crdts.errors import DecodeError

REPLICAS = 4
REMOVE_FRACTION = 0.1

C = TypeVar("C", bound=CRDT)


def _codec_rows(
    what: str, states: Sequence[C], plain: object, *, n: int, floor_is: str, config: Config
) -> list[Row]:
    """Encode and decode ``states[0]``, per element, against cbor2 on ``plain``;
    ``states`` are the same state built in different orders."""
    state = states[0]
    data, plain_data = encode(state), cbor2.dumps(plain)
    if decode(data) != state:
        raise RuntimeError(f"{what} does not survive encode/decode")
    same = all(s == state and encode(s) == data for s in states[1:])
    note = (
        f"{len(data) / n:.1f} vs {len(plain_data) / n:.1f} bytes per element; "
        f"equal states from {len(states)} operation orders give identical bytes: "
        f"{'yes' if same else 'NO'}"
    )

    def get_state() -> C:
        return state

    def get_plain() -> object:
        return plain

    def get_data() -> bytes:
        return data

    def get_plain_data() -> bytes:
        return plain_data

    enc_floor, enc = compare(Trial(get_plain, cbor2.dumps, n), Trial(get_state, encode, n), config)
    dec_floor, dec = compare(
        Trial(get_plain_data, cbor2.loads, n), Trial(get_data, decode, n), config
    )
    return [
        Row(
            f"codec encode {what}",
            "element",
            f"cbor2.dumps of {floor_is}",
            enc_floor,
            enc,
            1.0,
            note,
        ),
        Row(
            f"codec decode {what}",
            "element",
            f"cbor2.loads of {floor_is}",
            dec_floor,
            dec,
            1.0,
            note,
        ),
    ]


def _interleave(rng: Random, workloads: list[SetWorkload]) -> list[tuple[str, str, bool]]:
    """All replicas' operations as (replica, element, is_add), shuffled across
    replicas but in order within each, as each replica's counters require."""
    ops = [
        [(h.replica, e, True) for e in h.added] + [(h.replica, e, False) for e in h.removed]
        for h in workloads
    ]
    turns = [i for i, replica_ops in enumerate(ops) for _ in replica_ops]
    rng.shuffle(turns)
    cursors = [iter(replica_ops) for replica_ops in ops]
    return [next(cursors[i]) for i in turns]


def orset_workloads(config: Config, rng: Random) -> list[SetWorkload]:
    """Four replicas' adds and removes leaving ``codec_size`` live elements
    (shared with the peers in ``bench.peers``)."""
    live_each = config.codec_size // REPLICAS
    adds_each = round(live_each / (1 - REMOVE_FRACTION))
    workloads = []
    for i in range(REPLICAS):
        added = keys(rng, adds_each, f"{i}-")
        workloads.append(SetWorkload(f"r{i}", added, rng.sample(added, adds_each - live_each)))
    return workloads


def orset_plain(workloads: list[SetWorkload]) -> dict[str, list[int]]:
    """The plain structure of the joined set, the floor of its codec rows:
    each live element and its dot, the replica as its index and the counter
    as the position of the add in that replica's history."""
    plain: dict[str, list[int]] = {}
    for i, h in enumerate(workloads):
        live = h.live()
        for counter, element in enumerate(h.added, start=1):
            if element in live:
                plain[element] = [i, counter]
    return plain


def orset_codec(config: Config, rng: Random) -> list[Row]:
    """An OR-Set of ``codec_size`` live elements, added by four replicas that
    then removed a tenth of their adds, so the context covers more dots than
    the entries hold. Built three ways for the bytes check: replica after
    replica on one state, with the replicas' operations shuffled together,
    and as four replica states merged in reverse order."""
    workloads = orset_workloads(config, rng)
    in_order: ORSet[str] = ORSet()
    for h in workloads:
        for element in h.added:
            in_order.add(element, h.replica)
        for element in h.removed:
            in_order.remove(element)
    shuffled: ORSet[str] = ORSet()
    for replica, element, is_add in _interleave(rng, workloads):
        if is_add:
            shuffled.add(element, replica)
        else:
            shuffled.remove(element)
    merged: ORSet[str] = ORSet()
    for h in reversed(workloads):
        merged.merge(h.replay())

    plain = orset_plain(workloads)
    n = len(plain)
    return _codec_rows(
        f"ORSet {n:,} elements",
        [in_order, shuffled, merged],
        plain,
        n=n,
        floor_is=f"{{str: [int, int]}} with {n:,} entries",
        config=config,
    )


def gcounter_codec(config: Config, rng: Random) -> list[Row]:
    """A G-Counter of ``codec_size`` replicas, built by one increment per
    replica in order and, for the bytes check, by two increments per replica
    in shuffled order."""
    ids, _ = replica_ids(rng, config.codec_size, 0)
    slots = counts(rng, ids)
    in_order = GCounter()
    for replica, count in slots.items():
        in_order.increment(replica, count)
    halves = [
        (replica, part)
        for replica, count in slots.items()
        for part in (count // 2, count - count // 2)
    ]
    rng.shuffle(halves)
    shuffled = GCounter()
    for replica, part in halves:
        shuffled.increment(replica, part)
    n = len(slots)
    return _codec_rows(
        f"GCounter {n:,} replicas",
        [in_order, shuffled],
        slots,
        n=n,
        floor_is=f"{{str: int}} with {n:,} entries",
        config=config,
    )


MiB = 1024 * 1024


def _hostile_frames(size: int) -> dict[str, bytes]:
    """Canonical CBOR of about ``size`` bytes that costs far more to build
    than it weighs, each shaped to get as far into the decoder as it can."""
    n = size - 16
    envelope = b"\x83\x68GCounter\x01"  # a GCounter's envelope, then the payload
    return {
        # Issue 9: an array of empty arrays, 56-byte lists from 1 byte each.
        "empty arrays": b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n,
        # As many 2-byte items as the item budget admits: they pass the walk,
        # cbor2 builds them (8 bytes of slot each), the GCounter check refuses.
        "2-byte ints in a payload": envelope + b"\x9a" + (n // 2).to_bytes(4, "big")
        + b"\x18\x18" * (n // 2),
        # 3-byte strings at ~30x their size: walked, refused on the cost.
        "2-char strs in a payload": envelope + b"\x9a" + (n // 3).to_bytes(4, "big")
        + b"\x62ab" * (n // 3),
    }


def hostile_decode(config: Config, rng: Random) -> list[Row]:
    """``decode`` refusing hostile but canonical CBOR (PERFORMANCE.md: a 16 MiB
    frame in at most 2 s and 4x its size in memory), per MiB, against
    ``cbor2.loads`` of an honest G-Counter encoding of the same size. The
    peak memory (tracemalloc, outside the timing) is in the note."""
    size = 256 * 1024 if config.quick else 16 * MiB
    honest = GCounter()
    ids, _ = replica_ids(rng, max(1, size // 21), 0)
    for replica, count in counts(rng, ids).items():
        honest.increment(replica, count)
    honest_data = encode(honest)
    mib = len(honest_data) / MiB
    rows = []
    for shape, data in _hostile_frames(size).items():
        peak = _peak_of_refusal(data)

        def get_data(data: bytes = data) -> bytes:
            return data

        def get_honest() -> bytes:
            return honest_data

        floor, figure = compare(
            Trial(get_honest, cbor2.loads, 1), Trial(get_data, _refuse, 1), config
        )
        per_mib = Timing(floor.median / mib, floor.low / mib, floor.high / mib)
        figure_mib = len(data) / MiB
        figure_per = Timing(
            figure.median / figure_mib, figure.low / figure_mib, figure.high / figure_mib
        )
        rows.append(
            Row(
                f"decode hostile CBOR, {shape}",
                "MiB",
                "cbor2.loads of an honest GCounter, per MiB",
                per_mib,
                figure_per,
                None,
                f"{len(data) / MiB:.2f} MiB refused in {figure.median:.3f} s; "
                f"peak memory {peak / len(data):.2f}x its size "
                f"(target: 16 MiB in 2 s, 4x)",
            )
        )
    return rows


def _refuse(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        return
    raise RuntimeError("a hostile frame was accepted")


def _peak_of_refusal(data: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        _refuse(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
