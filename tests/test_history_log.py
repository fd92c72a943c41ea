"""The operation log's file form: a round trip, and hostile bytes give only
DecodeError."""

from __future__ import annotations

import contextlib
import random

import pytest

from crdts import GCounter, codec
from crdts.errors import DecodeError
from replication import Replicator
from replication.history import History, random_operation


def _history(seed: int, operations: int = 60) -> History:
    rng = random.Random(seed)
    replicas = [Replicator(i, "abc", rng=random.Random(i)) for i in "abc"]
    history = History()
    for _ in range(operations):
        key, type_name, kind, args = random_operation(rng)
        history.apply(rng.choice(replicas), key, type_name, kind, *args)
    return history


def test_a_log_of_every_type_round_trips() -> None:
    history = _history(1)
    back = History.from_bytes(history.to_bytes())
    assert back.operations == history.operations
    assert back.to_bytes() == history.to_bytes()


def test_flipped_bits_give_a_log_or_a_decode_error() -> None:
    data = _history(2, 20).to_bytes()
    rng = random.Random(3)
    for _ in range(500):
        damaged = bytearray(data)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        with contextlib.suppress(DecodeError):  # a flip may still give a valid log
            History.from_bytes(bytes(damaged))


def _op(**fields: object) -> bytes:
    delta = GCounter()
    delta.increment("a", 2)
    op: dict[str, object] = {
        "key": "k", "type": "GCounter", "kind": "increment", "args": [2], "replica": "a",
        "counter": 1, "observed": [], "delta": codec.encode(delta),
    }
    op.update(fields)
    return codec.encode_plain(["crdtkit-log", 2, [list(op.values())]])


def test_a_well_formed_operation_parses() -> None:
    (op,) = History.from_bytes(_op()).operations
    assert op.dot == ("a", 1) and op.delta.value == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "fields",
    [
        {"type": ["GCounter"]},  # unhashable where a str belongs
        {"type": "Nope"},
        {"kind": "decrement"},  # no such update of a G-Counter
        {"args": ["2"]},
        {"args": [-1]},
        {"args": [2, 3]},
        {"counter": 0},
        {"replica": ""},
        {"observed": "x"},
        {"observed": ["a", 1, 1, 2, 5]},  # a delta's stretch, not a key's bookkeeping
        {"observed": ["a", 0, 0, 3, 2]},  # three operations in two dots
        {"delta": b"junk"},
        {"delta": codec.encode(codec.decode(codec.encode(GCounter())))[:-1]},
        {"type": "PNCounter"},  # a G-Counter delta for a PN-Counter
        {"key": 7},
    ],
)
def test_a_malformed_operation_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        History.from_bytes(_op(**fields))
