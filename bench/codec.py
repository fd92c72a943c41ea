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

from collections.abc import Sequence
from random import Random
from typing import TypeVar

import cbor2

from bench.harness import Config, Row, Trial, compare
from bench.workloads import History, counts, keys, replica_ids
from crdts import GCounter, ORSet
from crdts.base import CRDT
from crdts.codec import decode, encode

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


def _interleave(rng: Random, histories: list[History]) -> list[tuple[str, str, bool]]:
    """All replicas' operations as (replica, element, is_add), shuffled across
    replicas but in order within each, as each replica's counters require."""
    ops = [
        [(h.replica, e, True) for e in h.added] + [(h.replica, e, False) for e in h.removed]
        for h in histories
    ]
    turns = [i for i, replica_ops in enumerate(ops) for _ in replica_ops]
    rng.shuffle(turns)
    cursors = [iter(replica_ops) for replica_ops in ops]
    return [next(cursors[i]) for i in turns]


def orset_codec(config: Config, rng: Random) -> list[Row]:
    """An OR-Set of ``codec_size`` live elements, added by four replicas that
    then removed a tenth of their adds, so the context covers more dots than
    the entries hold. Built three ways for the bytes check: replica after
    replica on one state, with the replicas' operations shuffled together,
    and as four replica states merged in reverse order."""
    live_each = config.codec_size // REPLICAS
    adds_each = round(live_each / (1 - REMOVE_FRACTION))
    histories = []
    for i in range(REPLICAS):
        added = keys(rng, adds_each, f"{i}-")
        histories.append(History(f"r{i}", added, rng.sample(added, adds_each - live_each)))

    in_order: ORSet[str] = ORSet()
    for h in histories:
        for element in h.added:
            in_order.add(element, h.replica)
        for element in h.removed:
            in_order.remove(element)
    shuffled: ORSet[str] = ORSet()
    for replica, element, is_add in _interleave(rng, histories):
        if is_add:
            shuffled.add(element, replica)
        else:
            shuffled.remove(element)
    merged: ORSet[str] = ORSet()
    for h in reversed(histories):
        merged.merge(h.replay())

    # The plain structure: each live element and its dot, the replica as its
    # index and the counter as the position of the add in that replica's history.
    plain: dict[str, list[int]] = {}
    for i, h in enumerate(histories):
        live = h.live()
        for counter, element in enumerate(h.added, start=1):
            if element in live:
                plain[element] = [i, counter]
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
