"""The G-Counter's fast paths (issue 13, item 3) keep every check.

An increment by a replica that already has a slot tests only the types of
its arguments (its id was checked in full when the slot was made), and the
slots are kept in replica order once encoded, so the next encoding is a
flatten. Speed is measured in ``bench`` (``python -m bench --only
counter-increment --only codec-gcounter``); these tests pin the behaviour.
"""

from __future__ import annotations

from random import Random

import pytest

from crdts import GCounter, PNCounter, VectorClock, codec
from crdts.base import MAX_UINT
from crdts.errors import InvalidOperation


def _ids(n: int, seed: int = 7) -> list[str]:
    rng = Random(seed)
    return [f"node-{k:06x}" for k in rng.sample(range(1 << 24), n)]


def test_encoding_keeps_the_slots_in_replica_order() -> None:
    # Regression (issue 13): every encoding sorted the replica ids again
    # (8.8-10x the cbor2 floor at 100,000 replicas); now the first one puts
    # the slots in order and the next ones only flatten them.
    ids = _ids(200)
    c = GCounter()
    for i, replica in enumerate(ids):
        c.increment(replica, i + 1)
    data = codec.encode(c)
    assert list(c._slots) == sorted(ids)
    assert codec.encode(c) == data
    assert codec.decode(data) == c


def test_ids_out_of_order_after_an_encoding_still_encode_canonically() -> None:
    ids = _ids(50)
    a, b = GCounter(), GCounter()
    for replica in ids:
        a.increment(replica, 2)
    codec.encode(a)  # a is in order now; the next ids arrive out of it
    other = GCounter()
    for replica in reversed(_ids(20, seed=8)):
        other.increment(replica, 3)
    a.merge(other)
    a.increment("0-first", 1)
    a.increment("zz-last", 1)
    for replica in sorted(ids + _ids(20, seed=8) + ["0-first", "zz-last"], reverse=True):
        b.increment(replica, 3 if replica in other._slots else 2 if replica in ids else 1)
    assert a == b and a.value == b.value
    assert codec.encode(a) == codec.encode(b)
    assert list(a._slots) == sorted(a._slots)


def test_encoding_a_counter_kept_in_order_sorts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (issue 13): every encoding checked the order by sorting the
    # ids again (a third of the encoding's time at 100,000 replicas, 2.8x
    # the cbor2 floor); now a counter remembers when an id may have come
    # out of order, and one kept in order is only flattened.
    import crdts._slots

    ids = sorted(_ids(300))
    c = GCounter()
    for i, replica in enumerate(ids):
        c.increment(replica, i + 1)  # new ids in replica order
    other = GCounter()
    for replica in ids[::3]:
        other.increment(replica, 1_000)  # no new id: the merge keeps the order
    c.merge(other)
    c.increment(ids[5], 7)
    expected = codec.encode_plain(["GCounter", 1, [x for r in ids for x in (r, c._slots[r])]])

    def no_sort(*args: object, **kwargs: object) -> object:
        raise AssertionError("sorted the slots of a counter kept in order")

    monkeypatch.setattr(crdts._slots, "sorted", no_sort, raising=False)
    assert codec.encode(c) == expected
    assert codec.encode(c.copy()) == expected
    assert codec.encode(PNCounter()) == codec.encode(PNCounter())


@pytest.mark.parametrize("seed", range(20))
def test_every_way_an_id_arrives_keeps_the_encoding_canonical(seed: int) -> None:
    # Whatever mix of increments, merges, prunings, cleanups and copies made
    # a counter, with encodings in between, its bytes are those of the same
    # slots written down in replica order, and its copies agree.
    rng = Random(seed)
    ids = _ids(12, seed)
    states = [GCounter() for _ in range(3)]
    for _ in range(60):
        target = rng.choice(states)
        kind = rng.randrange(6)
        if kind <= 1:
            target.increment(rng.choice(ids), rng.randint(0, 3))
        elif kind == 2:
            target.merge(rng.choice(states))
        elif kind == 3:
            removed, owner = rng.sample(ids, 2)
            target.prune(removed, owner)
        elif kind == 4:
            target.cleanup(rng.choice(ids), rng.choice(ids), 0)
        else:
            states[rng.randrange(3)] = target.copy()
        if rng.random() < 0.3:
            codec.encode(rng.choice(states))
        for state in states:
            data = codec.encode(state)
            plain = sorted(state._slots.items())
            assert data == codec.encode_plain(["GCounter", 1, [x for row in plain for x in row]])
            assert codec.decode(data) == state and codec.encode(state.copy()) == data


def test_ordered_flat_leaves_a_map_in_order_as_it_is() -> None:
    from crdts._slots import ordered_flat, to_flat

    slots = {"a": 1, "b": 2}
    flat, same = ordered_flat(slots)
    assert flat == ["a", 1, "b", 2] and same is slots
    shuffled = {"b": 2, "c": 3, "a": 1}
    flat, ordered = ordered_flat(shuffled)
    assert flat == ["a", 1, "b", 2, "c", 3] and ordered == shuffled
    assert list(ordered) == ["a", "b", "c"] and list(shuffled) == ["b", "c", "a"]
    assert to_flat({}) == [] and to_flat(shuffled) == flat
    # The vector clock and the PN-Counter share the helpers.
    clocks = VectorClock({"b": 1, "a": 2}), VectorClock({"a": 2, "b": 1})
    assert codec.encode(clocks[0]) == codec.encode(clocks[1])
    p, q = PNCounter(), PNCounter()
    p.increment("b", 1), p.decrement("a", 2), p.increment("a", 3)
    q.increment("a", 3), q.decrement("a", 2), q.increment("b", 1)
    assert codec.encode(p) == codec.encode(q)


@pytest.mark.parametrize(
    ("replica", "amount"),
    [
        ("", 1),
        ("", 0),
        ("x\ud800", 1),  # a lone surrogate: no encoder writes it
        ("x\ud800", 0),
        (b"a", 1),
        (None, 1),
        (["a"], 1),  # unhashable: still InvalidOperation, not TypeError
        (type("Sub", (str,), {})("a"), 1),  # a str subclass, even equal to a known id
        ("a", -1),
        ("a", True),
        ("a", 1.0),
        ("a", "1"),
        ("fresh", MAX_UINT + 1),
        ("a", MAX_UINT),  # "a" holds 5 already: the slot would overflow
    ],
)
def test_increment_refuses_bad_input_and_changes_nothing(replica: object, amount: object) -> None:
    c = GCounter()
    c.increment("a", 5)
    before = c.copy()
    with pytest.raises(InvalidOperation):
        c.increment(replica, amount)  # type: ignore[arg-type]
    assert c == before and c.value == 5


def test_increment_by_zero_writes_no_slot_and_returns_an_empty_delta() -> None:
    c = GCounter()
    assert c.increment("a", 0) == GCounter()
    assert c == GCounter()
    c.increment("a", 1)
    assert c.increment("a", 0) == GCounter() and c.value == 1


def test_the_delta_is_independent_of_the_state() -> None:
    c = GCounter()
    first = c.increment("a", 2)
    second = c.increment("a", 3)
    assert (first._slots, second._slots) == ({"a": 2}, {"a": 5})
    first.merge(second)
    assert c.value == 5 and first.value == 5
    assert c.increment("b", MAX_UINT).value == MAX_UINT
