"""Decoding costs O(bytes) with a small constant (issue 9, DESIGN.md "Bounded
state"): hostile but canonical CBOR is refused before cbor2 builds it, while
honest large states still decode.

Issue 9: an array of empty arrays cost about 85 bytes of memory and 1.4 s per
byte, resp. MiB, of input (a 16 MiB frame took a node to 1.25 GiB for 22 s).
These tests measure peak memory with tracemalloc on 1-2 MiB inputs and assert
on the ratio to the input size only; the time per MiB is in ``bench``
(``python -m bench``, rows "decode hostile CBOR").
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from random import Random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdts import GCounter, ORSet, codec
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from replication import messages
from replication.dotranges import DotRanges
from replication.membership import Member, Status
from replication.messages import Entry, Push, Reply

MiB = 1024 * 1024
N = MiB - 64


def _array(n: int) -> bytes:
    return b"\x9a" + n.to_bytes(4, "big")


GCOUNTER = b"\x83\x68GCounter\x01"  # a G-Counter's envelope; its payload follows

#: Hostile but canonical CBOR of about 1 MiB that the pre-pass refuses, by
#: what it is shaped to hit.
HOSTILE: dict[str, bytes] = {
    # The reproduction from issue 9: 56-byte lists from one byte each.
    "empty arrays": _array(N) + b"\x80" * N,
    "empty arrays in a payload": GCOUNTER + _array(N) + b"\x80" * N,
    "one-item arrays": _array(N // 2) + b"\x81\x00" * (N // 2),
    "nested pairs": _array(N // 3) + b"\x81\x81\x00" * (N // 3),
    "arrays of one empty array": _array(N // 2) + b"\x81\x80" * (N // 2),
    # One byte each, but 8 bytes of list slot, or a fresh 28-byte int (-24).
    "zeros": _array(N) + b"\x00" * N,
    "small negative ints": GCOUNTER + _array(N) + b"\x37" * N,
    # 1-byte ints, one in each of 2-byte arrays: 72 bytes per 2 bytes.
    "negative ints in arrays": _array(N // 2) + b"\x81\x37" * (N // 2),
}

#: Hostile but canonical CBOR that looks like honest data as far as cost per
#: byte goes, so it is built (and then refused by the type's checks): it costs
#: what honest data of that size costs, within ``codec._COST_PER_BYTE``.
HONEST_LOOKING: dict[str, bytes] = {
    "2-char strs": GCOUNTER + _array(N // 12) + b"\x62ab" * (N // 12),
    "2-byte ints": GCOUNTER + _array(N // 8) + b"\x18\x18" * (N // 8),
    "2-byte bytes": GCOUNTER + _array(N // 12) + b"\x42ab" * (N // 12),
}


def _peak(parse: Callable[[bytes], object], data: bytes) -> int:
    """The peak of traced allocations while ``parse`` refuses ``data``."""
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            parse(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _push_with_state(state: bytes) -> bytes:
    """A push frame whose one entry carries ``state`` as its state, nested
    in the frame as CBOR structure (frame version 4)."""
    head = cbor2.dumps(["push", messages.VERSION, "a", "b", -1, 1, 0, 1, 0, []], canonical=True)
    # The ten fields above, then the entries (one: [key, state, ranges]), ack and tally.
    return b"\x8d" + head[1:] + b"\x81\x83\x61k" + state + b"\x80\x20\x80"


PARSERS: dict[str, Callable[[bytes], object]] = {
    "decode": codec.decode,
    "decode_plain": codec.decode_plain,
    "parse": messages.parse,
    # The same bytes one layer down: as the state of an entry in a push,
    # and as the entries of a saved keyspace.
    "parse, as an entry's state": lambda data: messages.parse(_push_with_state(data)),
    "parse_entries": lambda data: messages.parse_entries(
        [["k", data, []]]  # what parse hands on after the frame's own scan
    ),
}


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_hostile_input_costs_at_most_four_times_its_size(shape: str) -> None:
    data = HOSTILE[shape]
    peak = _peak(codec.decode, data)
    # Before: 65-85x for the empty arrays (the input itself is not counted).
    assert peak <= 4 * len(data), f"{peak / len(data):.1f}x"


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_every_entry_point_refuses_the_issue_9_frame_cheaply(parser: str) -> None:
    data = HOSTILE["empty arrays"]
    peak = _peak(PARSERS[parser], data)
    # A push that carries it as a state holds a copy or two of it; no more.
    assert peak <= 4 * len(data), f"{peak / len(data):.1f}x"


@pytest.mark.parametrize("shape", sorted(HONEST_LOOKING))
def test_what_looks_honest_costs_what_honest_data_costs(shape: str) -> None:
    data = HONEST_LOOKING[shape]
    peak = _peak(codec.decode, data)
    # The budget, plus the slices that GCounter's own checks take.
    assert peak <= (codec._COST_PER_BYTE + 8) * len(data), f"{peak / len(data):.1f}x"


def test_regression_issue_9_array_of_empty_arrays() -> None:
    """The reproduction of issue 9, at 1 MiB: refused, at almost no cost."""
    n = MiB
    data = b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n
    for parse in (codec.decode, codec.decode_plain, messages.parse):
        assert _peak(parse, data) < len(data) // 16


def test_honest_large_states_still_decode() -> None:
    rng = Random(9)
    s: ORSet[str] = ORSet()
    for i in range(100_000):
        s.add(f"element-{rng.getrandbits(40):x}", f"r{i % 7}")
    g = GCounter()
    for i in range(100_000):
        g.increment(f"node-{i:06d}", rng.randrange(1, 10**6))
    ints: ORSet[int] = ORSet()  # dense: 3-5 byte ints, 3 byte counters
    for i in range(30_000):
        ints.add(300 + i * 7, f"r{i % 3}")
    for state in (s, g, ints):
        data = codec.encode(state)
        assert codec.decode(data) == state
        assert codec.encode(codec.decode(data)) == data


def test_a_push_of_many_small_entries_still_parses() -> None:
    entries = []
    for i in range(2_000):
        c = GCounter()
        c.increment("n1", i + 1)
        entries.append(Entry(f"k{i:05d}", c, DotRanges.whole({"n1": (1, i + 1)})))
    clock = CausalContext.from_dots([("n1", n) for n in range(1, 2_001)])
    push = Push("n1", "n2", -1, 9, 0, 1, Reply.NOTHING, clock, tuple(entries))
    assert messages.parse(messages.encode(push)) == push


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=30),
    # Long lists, so that both the walk and the bulk path run.
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, min_size=60, max_size=90),
    max_leaves=300,
)


# Each example is a large structure: 150 of them (rather than the ci
# profile's 500) keep this test near 10 s there.
@settings(max_examples=150)
@given(PLAIN)
def test_plain_data_round_trips(value: object) -> None:
    data = cbor2.dumps(value, canonical=True)
    try:
        decoded = codec.decode_plain(data)
    except DecodeError:
        # Only refused if deeper than the format allows.
        with pytest.raises(cbor2.CBORDecodeError):
            cbor2.loads(data, max_depth=codec.MAX_DEPTH)
        return
    assert decoded == value


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2**32) | st.text(max_size=3), min_size=64, max_size=200), st.data())
def test_a_non_shortest_int_inside_a_long_array_is_refused(
    items: list[object], data: st.DataObject
) -> None:
    where = data.draw(st.integers(0, len(items) - 1))
    items[where] = 5
    good = cbor2.dumps(items, canonical=True)
    assert codec.decode_plain(good) == items
    # Rewrite that 5 (b"\x05") in its two-byte form, b"\x18\x05".
    start = len(good) - sum(len(cbor2.dumps(x, canonical=True)) for x in items[where:])
    assert good[start] == 0x05
    bad = good[:start] + b"\x18\x05" + good[start + 1 :]
    with pytest.raises(DecodeError, match="canonical"):
        codec.decode_plain(bad)


def test_maps_tags_and_depth_are_refused_in_small_large_and_long_inputs() -> None:
    pad = "x" * 300  # past the size decoded without the walk
    too_deep: object = 0
    for _ in range(codec.MAX_DEPTH):  # inside [.., odd]: one level past the cap
        too_deep = [too_deep]
    for odd in ({"a": 1}, cbor2.CBORTag(1, 0), too_deep):
        for value in ([1, odd], [pad, odd], [1] * 80 + [odd]):
            with pytest.raises(DecodeError):
                codec.decode_plain(cbor2.dumps(value, canonical=True))
    with pytest.raises(DecodeError, match="float"):
        codec.decode_plain(cbor2.dumps([pad, 0.5], canonical=True))


@pytest.mark.parametrize("name", ["r{:03}", "node-{}", "n{}", "{:02}", "{:x}"])
def test_a_causal_context_of_many_short_replica_ids_decodes(name: str) -> None:
    # An honest round opener of a large cluster, and the states and
    # membership of one. At 24 bytes of objects per input byte, 256 replicas
    # named r000..r255 were refused as too costly, and `crdtkit demo --nodes
    # 256` never converged; at one item per 2 bytes, ids like "n42" were
    # refused. The wire shapes, each at its costliest: a state's context
    # ([id, n, []] per id, ~26x for 2-character ids), a frame's clock since
    # frame version 4 ([id, n], ~17x; version 3 wrote it as a context), a
    # membership record with no address (~29x). (This test used to build
    # [[id, n, []], ...], an array per id that no wire form has, 32.5x.)
    ids = [name.format(i) for i in range(300)]
    context = CausalContext.from_dots(
        (replica, n) for i, replica in enumerate(ids) for n in range(1, 2 + i % 7)
    )
    records = [Member(replica, "", Status.UP).to_payload() for replica in ids]
    for shape in (context.to_payload(), messages.clock_payload(context), records):
        data = cbor2.dumps(shape, canonical=True)
        assert len(data) > codec._SMALL
        assert codec.decode_plain(data) == shape
        assert codec.decode_plain(data, canonical=False) == shape
    opener = Push("a", "b", 0, 0, 0, 1, Reply.PUSH_AND_ASK, context, ())
    assert messages.parse(messages.encode(opener)) == opener


def test_the_cost_bound_is_what_honest_data_needs() -> None:
    # The bound came down from 36 to 30 bytes of objects per input byte
    # (frame version 4's clock has no array per id); a context of 2-character
    # ids needs ~26.2, a membership record with no address ~29.
    assert codec._COST_PER_BYTE == 30
    ids = [f"{i:02}" for i in range(100)]
    ids += [chr(97 + i // 26) + chr(97 + i % 26) for i in range(300)]
    context = CausalContext.from_dots((replica, 1) for replica in sorted(ids))
    data = cbor2.dumps(context.to_payload(), canonical=True)
    assert codec.decode_plain(data) == context.to_payload()
