"""What a replica keeps per key (issue 13, item 4): the change log holds
deltas some peer still lacks or an index into the keyspace, never second
copies of whole states; decoded replica ids are shared, not one per key; a
key costs a small multiple of a plain dict entry of the same value.

Byte counts come from tracemalloc (deterministic for a seeded workload):
nothing here is timed."""

from __future__ import annotations

import random
from collections.abc import Callable

from bench.memory import catch_up_log, key_memory
from crdts import GCounter, ORSet, base, codec
from crdts.base import share
from replication.dotranges import DotRanges
from replication.messages import Entry
from replication.replicator import Replicator
from tests.test_bounded_state import exchange


def increment(counter: GCounter, me: str) -> GCounter:
    return counter.increment(me)


def _adder(element: str) -> Callable[[ORSet[str], str], ORSet[str]]:
    return lambda s, me: s.add(element, me)


def test_a_catch_up_is_logged_as_an_index_not_as_copies_of_the_states() -> None:
    # On main a joiner's log kept every state of the catch-up a second time
    # (39% of the node); now each record is the key itself, read live.
    a = Replicator("a", ["b"], rng=random.Random(1))
    for i in range(20):
        a.update(f"c{i}", GCounter, increment)
        a.update(f"s{i}", ORSet, _adder(f"x{i}"))
    joiner = Replicator("b", ["a", "c"], rng=random.Random(2))  # c never heard from
    exchange(joiner, a)
    assert joiner.encode_keyspace() == a.encode_keyspace()
    assert joiner.stats.merged == 40
    assert all(record.delta is None and record.dots is None for record in joiner._log.values())


def test_the_log_lets_go_of_what_every_peer_holds() -> None:
    a = Replicator("a", ["b"], rng=random.Random(1))
    b = Replicator("b", ["a"], rng=random.Random(2))
    for i in range(50):
        a.update(f"k{i}", GCounter, increment)
    exchange(a, b)
    exchange(b, a)
    assert b.encode_keyspace() == a.encode_keyspace()
    assert a.holders(a.head) == ["b"] and len(a._log) == 0
    # What b lacks is kept, and b still gets it as a delta, not a catch-up.
    a.update("k3", GCounter, increment)
    assert len(a._log) == 1
    catch_ups = a.stats.catch_ups
    exchange(a, b)
    assert a.stats.catch_ups == catch_ups and b.get("k3") == a.get("k3")


def test_a_lone_replica_keeps_no_log() -> None:
    # With no peer positioned every peer gets a catch-up: records help nobody.
    a = Replicator("a", ["b"], rng=random.Random(1))
    for i in range(100):
        a.update(f"k{i % 10}", GCounter, increment)
    assert len(a._log) == 0


def test_replica_ids_from_the_wire_are_shared() -> None:
    name = "".join(["node", "-17"])  # built at run time: a string of its own
    ranges = DotRanges.from_payload(codec.decode_plain(codec.encode_plain([name, 0, 0, 1, 1])),
                                    "ops")
    (writer,) = ranges.spans
    assert writer is share(name)
    counter = GCounter()
    counter.increment(name, 2)
    (slot,) = codec.decode(codec.encode(counter))._slots  # type: ignore[attr-defined]
    assert slot is share(name)


def test_a_counter_key_costs_a_small_multiple_of_a_plain_dict_entry() -> None:
    # 200 G-Counter keys written by 3 replicas: 8.2x a {key: {replica:
    # count}} dict on main, 2.0x now (target 3x; docs/bounded-state.md
    # says where the bytes go).
    floor, figure = key_memory("GCounter", 200)
    assert figure <= 2.5 * floor, (floor, figure)


def test_a_keys_bookkeeping_is_kept_flat_and_read_back_exactly() -> None:
    a = Replicator("a", ["b"], rng=random.Random(1))
    b = Replicator("b", ["a"], rng=random.Random(2))
    for i in range(30):
        a.update(f"k{i % 3}", GCounter, increment)
        b.update(f"k{i % 3}", GCounter, increment)
    exchange(a, b)
    exchange(b, a)
    assert type(a._ops["k1"]) is tuple  # few writers, no markers
    assert a.ops("k1") == b.ops("k1") == DotRanges({"a": (0, 0, 10, 29), "b": (0, 0, 10, 29)})
    assert a.entry("k1") is not None and a.entry("k1").dots == a.ops("k1")  # type: ignore[union-attr]
    # Many writers keep their DotRanges: one writer's stretch stays O(1) to read.
    many = Replicator("m", [], rng=random.Random(3))
    for w in range(20):
        entry = Entry("wide", GCounter(), DotRanges.whole({f"w{w:02d}": (1, 1)}))
        entry.state.increment(f"w{w:02d}")  # type: ignore[attr-defined]
        many._merge([entry], f"w{w:02d}")
    assert isinstance(many._ops["wide"], DotRanges) and many.get("wide").value == 20  # type: ignore[union-attr]


def test_the_log_is_a_small_share_of_a_node_after_a_catch_up() -> None:
    node, log = catch_up_log(100)
    assert log <= 0.02 * node, (node, log)


def test_ids_a_peer_makes_up_are_never_kept_beyond_the_sharing_limit() -> None:
    # Not sys.intern: interned strings were immortal in CPython 3.12.0-3.12.4,
    # so a peer sending ever new replica ids would grow a node for good.
    for i in range(base.SHARED_LIMIT + 10):
        DotRanges.from_payload([f"made-up-{i}", 0, 0, 1, 1], "ops")
    assert len(base._SHARED) <= base.SHARED_LIMIT
    assert share("".join(["node", "-17"])) is share("".join(["node", "-17"]))
