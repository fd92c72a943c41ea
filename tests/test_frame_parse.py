"""Frames decoded once (issue 13, item 1).

Issue 13: parsing a frame cost 18-19x ``cbor2.loads`` of the same bytes,
because each CRDT state travelled as CBOR bytes inside the CBOR frame and
every layer decoded, re-encoded to check the canonical form, and validated:
the snapshot layer decoded the whole frame, the replicator decoded it again,
and then each state once more. Now a state is nested in the frame as CBOR
structure and each frame is decoded once (``codec.decode_plain``), its
states checked on the plain data (``codec.from_plain``). The speed is in
``bench`` (``python -m bench --only frame-parse``); these tests pin the
structure and that nothing got weaker.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdts import GCounter, ORSet, codec
from crdts.codec import MAX_DEPTH
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from replication import messages
from replication.dotranges import DotRanges
from replication.messages import Entry, Push, Reply, parse
from replication.replicator import Replicator
from replication.transport import Outgoing
from snapshot.marker import SnapshotNode


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Counts calls of ``codec.<name>`` (a 1 appended per call) from now on."""
    calls: list[int] = []
    real = getattr(codec, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, name, counting)
    return calls


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts ``codec.decode_plain`` calls (``codec.decode`` goes through it)."""
    yield _count_calls(monkeypatch, "decode_plain")


def _exchange(a: SnapshotNode, b: SnapshotNode, frames: list[Outgoing]) -> Iterator[int]:
    """Deliver ``frames`` (from ``a``) and every answer, yielding the size of
    each frame delivered."""
    nodes = {"a": a, "b": b}
    queue = [("a", dest, frame) for dest, frame in frames]
    for _ in range(100):
        if not queue:
            return
        source, dest, frame = queue.pop(0)
        yield len(frame)
        queue += [(dest, to, f) for to, f in nodes[dest].receive(0.0, source, frame)]
    raise AssertionError("the exchange did not end")


def test_a_frame_is_decoded_once_through_the_snapshot_layer(decodes: list[int]) -> None:
    # On main: 2 + one per entry (the snapshot layer, the replicator, each state).
    a = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)))
    b = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2)))
    for i in range(20):
        a.replica.update(f"hits-{i}", GCounter, lambda c, me: c.increment(me, 3))
        a.replica.update(f"cart-{i}", ORSet, lambda s, me: s.add("milk", me))
    a.initiate()  # the frames carry a colour, and a marker goes out
    for delivered, _ in enumerate(_exchange(a, b, a.tick(0.0)), start=1):
        assert len(decodes) <= delivered  # at most one decode per frame, whatever it carries
    assert b.replica.get("hits-7") == a.replica.get("hits-7")
    assert b.replica.encode_keyspace() == a.replica.encode_keyspace()
    assert a.refusals == b.refusals == 0


def test_states_are_nested_as_cbor_structure_with_their_own_bytes() -> None:
    c = GCounter()
    c.increment("a", 3)
    entry = Entry("k", c, DotRanges.whole({"a": (1, 1)}))
    push = Push("a", "b", -1, 1, 0, 1, Reply.NOTHING, _clock(), (entry,))
    frame = messages.encode(push)
    raw = cbor2.loads(frame)
    assert raw[:2] == ["push", messages.VERSION] and messages.VERSION == 5
    assert raw[9] == ["a", 1]  # the clock: flat [id, counter, ...], no dot clouds
    assert raw[10] == [["k", ["GCounter", 1, ["a", 3]], ["a", 0, 0, 1, 1]]]
    assert codec.encode(c) in frame  # the state's bytes, as stored and hashed
    assert parse(frame) == push


def _clock() -> CausalContext:
    return CausalContext.from_dots([("a", 1)])


def test_a_version_3_frame_is_refused() -> None:
    # Version 3 nested each state as bytes and wrote the clock with a cloud per id.
    c = GCounter()
    c.increment("a", 3)
    old = ["push", 3, "a", "b", -1, 1, 0, 1, 0, ["a", 1, []], [["k", codec.encode(c), []]], -1, []]
    with pytest.raises(DecodeError, match="version"):
        parse(cbor2.dumps(old, canonical=True))


def test_a_version_4_opener_is_refused() -> None:
    # Version 4's opener put the receiver's last ack in its empty interval;
    # version 5's offers a position in the sender's log there: a node must
    # not read one as the other (README, "Upgrading").
    old = ["push", 4, "a", "b", 7, 7, 0, 1, 2, ["a", 1], [], -1, []]
    with pytest.raises(DecodeError, match="version"):
        parse(cbor2.dumps(old, canonical=True))
    assert isinstance(parse(cbor2.dumps([*old[:1], 5, *old[2:]], canonical=True)), Push)


@pytest.mark.parametrize(
    "clock",
    [["a"], ["a", 0], ["", 1], ["b", 1, "a", 1], ["a", 1, "a", 2], ["a", True], [1, 1], "a"],
)
def test_a_bad_clock_is_refused(clock: object) -> None:
    head = ["push", messages.VERSION, "a", "b", 0, 1, 0, 1, 2, clock, [], -1, []]
    with pytest.raises(DecodeError):
        parse(cbor2.dumps(head, canonical=True))


def test_a_state_over_max_state_is_refused_when_the_frame_is_larger_than_it() -> None:
    # The size of a nested state is measured (by encoding it) only when the
    # frame could hold one over the limit.
    big = GCounter()
    for i in range(100):
        big.increment(f"replica-{i:03d}", i + 1)
    entry = Entry("k", big, DotRanges.whole({"replica-000": (1, 1)}))
    frame = messages.encode(Push("a", "b", -1, 1, 0, 1, Reply.NOTHING, _clock(), (entry,)))
    size = len(codec.encode(big))
    parsed = parse(frame, max_state=size)
    assert isinstance(parsed, Push) and parsed.entries[0].state == big
    with pytest.raises(messages.EntryTooLarge):
        parse(frame, max_state=size - 1)


def test_bytes_after_a_frame_are_refused() -> None:
    frame = messages.encode(messages.Ack("a", 3))
    for tail in (b"\x00", b"\x80", frame):
        with pytest.raises(DecodeError):
            parse(frame + tail)


def _frames() -> list[bytes]:
    """Real frames of every kind a replica sends, wrapped by the snapshot layer."""
    a = SnapshotNode(Replicator("a", ["b"], rng=random.Random(1)))
    b = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2)))
    for i in range(3):
        a.replica.update(f"hits-{i}", GCounter, lambda c, me: c.increment(me, 3))
        a.replica.update(f"cart-{i}", ORSet, lambda s, me: s.add("milk", me))
    a.initiate()
    seen: list[bytes] = []
    queue = [("a", dest, frame) for dest, frame in a.tick(0.0)]
    while queue:
        source, dest, frame = queue.pop(0)
        seen.append(frame)
        node = a if dest == "a" else b
        queue += [(dest, to, f) for to, f in node.receive(0.0, source, frame)]
    return seen


FRAMES = _frames()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FRAMES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                         min_size=1, max_size=4), st.integers(0, 10**6))
def test_mutated_frames_are_refused_or_parsed_never_raised(
    frame: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    # Hand-read snapshot headers and frames decoded without the canonical
    # check: bit flips, byte changes and truncation give a message or a
    # refusal, never another exception, and a refused frame changes nothing.
    data = bytearray(frame)
    for at, value in flips:
        data[at % len(data)] = value
    mutated = bytes(data[: max(1, cut % (len(data) + 1))])
    node = SnapshotNode(Replicator("b", ["a"], rng=random.Random(2)))
    before = node.replica.encode_keyspace()
    try:
        node.receive(0.0, "a", mutated)
    except Exception as exc:  # pragma: no cover - the failure itself
        raise AssertionError(f"receive raised {exc!r}") from exc
    if node.refusals:
        assert node.replica.encode_keyspace() == before
    inner = mutated[7:]  # what a data frame's replicator frame would be
    with contextlib.suppress(DecodeError):
        parse(inner)


# -- the checks' own cost (issue 13 item 1, second pass) --------------------------
#
# After frames were decoded once, a push still cost ~6x ``cbor2.loads``: each
# entry went through ~22 Python calls (the envelope, the type's payload, its
# context, its helpers, the ranges, a second pass for the push's claims), each
# costing as much as the check it made. Now the common shapes (one dot, one
# slot, one writer, one value) are checked inline and the claims in the same
# pass. The speed is in bench (frame-parse); this pins the work per entry.


def _mixed_push(n: int) -> bytes:
    """A push of ``n`` one-operation deltas of five types, as a replica
    sends them between rounds."""
    from crdts import LWWRegister, MVRegister, PNCounter

    entries = []
    for i in range(n):
        me = f"r{i % 16:02d}"
        state: object
        if i % 5 == 0:
            state = GCounter().increment(me, 3)
        elif i % 5 == 1:
            state = PNCounter().decrement(me, 2)
        elif i % 5 == 2:
            state = ORSet[str]().add("milk", me)
        elif i % 5 == 3:
            state = LWWRegister[str]().assign("v", me, timestamp=7)
        else:
            state = MVRegister[int]().assign(5, me)
        entries.append(Entry(f"k{i:03d}", state, DotRanges({me: (0, 0, 1, 1)})))
    clock = CausalContext()
    clock.vv = {f"r{i:02d}": 1 for i in range(16)}
    return messages.encode(Push("r00", "r99", 0, 9, 0, 1, Reply.NOTHING, clock, tuple(entries)))


def test_regression_a_push_entry_costs_a_few_python_calls() -> None:
    import sys

    frame = _mixed_push(50)
    parse(frame)
    calls = [0]

    def count(frame_: object, event: str, arg: object) -> None:
        if event == "call":
            calls[0] += 1

    sys.setprofile(count)
    try:
        message = parse(frame)
    finally:
        sys.setprofile(None)
    assert isinstance(message, Push) and len(message.entries) == 50
    # Before: 19 per entry (952 here); now about 7.6.
    assert calls[0] <= 50 * 10, f"{calls[0] / 50:.1f} Python calls per entry"


@pytest.mark.parametrize(
    "envelope",
    [
        # One writer, one value, one dot, one slot: the inline paths refuse
        # what the general ones do.
        ["MVRegister", 1, [["a", 1, []], ["", 1, 5]]],  # empty replica id
        ["MVRegister", 1, [["a", 1, []], ["a", 2, 5]]],  # dot outside the context
        ["MVRegister", 1, [["a", 1, []], ["a", 0, 5]]],  # counter 0
        ["MVRegister", 1, [["a", 1, []], ["a", True, 5]]],  # a bool for a counter
        ["MVRegister", 1, [["a", 1, []], ["a", 1, 1.5]]],  # a float value
        ["MVRegister", 1, [["a", 1, []], ["a", 1, [5]]]],  # an array value
        ["ORSet", 1, [["a", 1, []], ["a", [2, "x"]]]],  # dot outside the context
        ["ORSet", 1, [["a", 1, []], ["a", [0, "x"]]]],  # counter 0
        ["ORSet", 1, [["a", 1, []], ["a", [1, ["x"]]]]],  # an array element
        ["ORSet", 1, [["a", 1, []], ["a", [False, "x"]]]],  # a bool counter
        ["GCounter", 1, ["", 3]],  # empty replica id
        ["GCounter", 1, ["a", 0]],  # a zero slot
        ["GCounter", 1, ["a", True]],  # a bool count
        ["PNCounter", 1, [["a", 1], ["a", -1]]],
        ["ORSet", 1, [["", 1, []], []]],  # empty id in the context
        ["ORSet", 1, [["a", 0, []], []]],  # an empty context entry
        ["ORSet", 1, [["a", 1, [3]], []]],  # a cloud dot the vv could absorb... or not
    ],
)
def test_inline_checks_refuse_what_the_full_ones_refuse(envelope: list[object]) -> None:
    ranges = ["a", 0, 0, 1, 1]
    frame = cbor2.dumps(
        ["push", messages.VERSION, "a", "b", 0, 1, 0, 1, 0, ["a", 9], [["k", envelope, ranges]],
         -1, []],
        canonical=True,
    )
    if envelope == ["ORSet", 1, [["a", 1, [3]], []]]:
        parse(frame)  # canonical after all (3 > 1 + 1): the control
        return
    with pytest.raises(DecodeError):
        parse(frame)
    with pytest.raises(DecodeError):
        codec.from_plain(envelope)


@pytest.mark.parametrize(
    "ranges",
    [
        ["", 0, 0, 1, 1],  # empty writer
        ["a", 0, 0, 0, 0],  # lo == hi
        ["a", 1, 0, 2, 2],  # lo without its predecessor link
        ["a", 0, 0, 3, 2],  # more operations than dots
        ["a", 0, 0, True, 1],  # a bool
        ["a", 0, 0, 1, 10],  # beyond the sender's clock (a: 9)
        ["a", 1, 1, 2, 2],  # a delta's stretch in a catch-up
    ],
)
def test_inline_range_checks_refuse_what_the_full_ones_refuse(ranges: list[object]) -> None:
    start = -1 if ranges == ["a", 1, 1, 2, 2] else 0
    frame = cbor2.dumps(
        ["push", messages.VERSION, "a", "b", start, 1, 0, 1, 0, ["a", 9],
         [["k", ["GCounter", 1, ["a", 1]], ranges]], -1, []],
        canonical=True,
    )
    with pytest.raises(DecodeError):
        parse(frame)


@pytest.mark.parametrize(
    "payload",
    [[-1, "a", "v"], [True, "a", "v"], [1, "", "v"], [1, 2, "v"], [1, "a", 1.5], [1, "a", []],
     [1, "a"], [1, "a", "v", 2]],
)
def test_inline_register_checks_refuse_what_the_full_ones_refuse(payload: list[object]) -> None:
    with pytest.raises(DecodeError):
        codec.from_plain(["LWWRegister", 1, payload])


# -- a large push read entry by entry (issue 13 item 1, third pass) ---------------
#
# A frame over 64 KiB was walked by the decoder's cost pass (``codec._scan``)
# before cbor2 built it: a third of parsing it (the whole-keyspace catch-up
# read 7-8x ``cbor2.loads``). Now a large push is read with
# ``codec.ItemReader``: each entry decoded within a window and checked before
# the next is built, so the walk's bound holds without the walk.


def _large_push(n: int = 3000, *, start: int = -1) -> tuple[Push, bytes]:
    entries = []
    for i in range(n):
        me = f"r{i % 7:02d}"
        state: GCounter | ORSet[str]
        if i % 2:
            state = GCounter()
            state.increment(me, i + 1)
        else:
            state = ORSet[str]()
            state.add(f"item-{i}", me)
        entries.append(Entry(f"key-{i:05d}", state, DotRanges({me: (0, 0, 1, i + 1)})))
    clock = CausalContext()
    clock.vv = {f"r{i:02d}": n + 1 for i in range(7)}
    push = Push("r00", "r99", start, 9, 0, 1, Reply.PUSH, clock, tuple(entries), 3, ())
    frame = messages.encode(push)
    assert len(frame) > codec.FRAME_AT_ONCE * 1.5
    return push, frame


def test_regression_a_large_push_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    push, frame = _large_push()
    walks = _count_calls(monkeypatch, "_scan")
    assert parse(frame) == push
    assert walks == []  # main: walked once, a third of the parse


def _replaced_entry(frame: bytes, index: int, item: object) -> bytes:
    raw = cbor2.loads(frame)
    raw[10][index] = item
    return cbor2.dumps(raw, canonical=True)


@pytest.mark.parametrize("index", [0, 1400, 2999])
@pytest.mark.parametrize(
    "item",
    [
        ["k", ["GCounter", 1, ["a", 0]], ["a", 0, 0, 1, 1]],  # a zero slot
        ["k", ["GCounter", 1, ["a", 1]], ["a", 1, 1, 2, 2]],  # a delta in a catch-up
        ["key-00001", ["GCounter", 1, ["a", 1]], ["a", 0, 0, 1, 1]],  # a key twice
        ["k", ["GCounter", 1, ["a", 1]], [[]] * 20_000],  # a flood of empty arrays
        ["k", ["GCounter", 1, ["a", 1]], ["x" * 100_000]],  # larger than the window
    ],
)
def test_a_bad_entry_anywhere_in_a_large_push_refuses_it_whole(index: int, item: object) -> None:
    _, frame = _large_push()
    bad = _replaced_entry(frame, index, item)
    node = Replicator("r99", ["r00"], rng=random.Random(1))
    with pytest.raises(DecodeError):
        parse(bad)
    node.receive(0.0, "r00", bad)
    assert node.refusals == 1 and node.keys() == []


def test_a_large_push_with_an_entry_over_the_window_still_parses() -> None:
    # An entry the window does not hold is decoded with the whole frame (and
    # so walked), as every frame over 64 KiB was before.
    push, _ = _large_push()
    big = GCounter()
    for i in range(10_000):
        big.increment(f"replica-{i:05d}", 1)
    whole = (Entry("a-big-one", big, DotRanges({"r00": (0, 0, 1, 1)})), *push.entries)
    bigger = Push(push.sender, push.to, push.start, push.end, 0, 1, push.reply, push.context,
                  whole, push.ack, ())
    frame = messages.encode(bigger)
    assert len(codec.encode(big)) > codec.FRAME_WINDOW
    assert parse(frame) == bigger


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 10**6))
def test_mutated_large_pushes_are_refused_or_parsed_never_raised(
    flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(LARGE_PUSH)
    for at, value in flips:
        data[at % len(data)] = value
    mutated = bytes(data[: max(1, len(data) - cut % 4096)])
    with contextlib.suppress(DecodeError):
        parse(mutated)


LARGE_PUSH = _large_push()[1]


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("window", [8, codec.FRAME_WINDOW])  # walked, or decoded in its window
def test_the_item_reader_keeps_the_depth_cap_of_the_whole_input(window: int) -> None:
    for depth in range(MAX_DEPTH - 3, MAX_DEPTH + 2):
        data = codec.encode_plain([["x"], _nested(depth)])
        try:
            whole = codec.decode_plain(data)
        except DecodeError:
            whole = None
        reader = codec.ItemReader(data, window=window)
        try:
            items = [reader.item() for _ in range(reader.array())]
            reader.finish()
        except DecodeError:
            items = None
        assert items == whole, depth


plain = st.recursive(
    st.integers(-(2**64), 2**64 - 1) | st.text(max_size=30) | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(plain, max_size=8), st.integers(1, 64), st.integers(0, 2000), st.binary(max_size=3))
def test_the_item_reader_reads_what_decode_plain_does(
    items: list[object], window: int, cut: int, tail: bytes
) -> None:
    data = codec.encode_plain(items)
    data = data[: max(1, len(data) - cut % 8)] + tail
    try:
        expected = codec.decode_plain(data, canonical=False)  # frames' guards
    except DecodeError:
        expected = None
    reader = codec.ItemReader(data, window=window)
    try:
        count = reader.array()
        got = list(reader.items(count)) if window % 2 else [reader.item() for _ in range(count)]
        reader.finish()
    except DecodeError:
        got = None
    if got is not None or expected is None:
        assert got == expected
    else:
        # cbor2 at once lets simple values and floats through (the types are
        # checked above it); the walk of an item over the window does not.
        with pytest.raises(DecodeError):
            codec._scan(data, False)


@pytest.mark.parametrize(
    "ranges",
    [
        ["a", False, 0, 1, 1],  # a bool for lo (it equals 0)
        ["a", 0, False, 1, 1],
        ["a", 0, 0, 0, 1],  # no operations
        ["a", 0, 0, 2, 1],  # more operations than dots
        ["a", 0, 0, 1, 1, "a", 0, 0, 1, 1],  # a writer twice
        ["a", 0, 0, 1, 1, "b", 1, 1, 2, 2],  # the second stretch not a whole key's
        ["a", 0, 0, 1, 10],  # beyond the sender's clock (a: 9)
    ],
)
def test_a_catch_up_s_whole_key_checks_refuse_what_the_full_ones_refuse(
    ranges: list[object],
) -> None:
    frame = cbor2.dumps(
        ["push", messages.VERSION, "a", "b", -1, 1, 0, 1, 0, ["a", 9, "b", 9],
         [["k", ["GCounter", 1, ["a", 1]], ranges]], -1, []],
        canonical=True,
    )
    with pytest.raises(DecodeError):
        parse(frame)
    good = ["a", 0, 0, 1, 1, "b", 0, 0, 2, 5]
    assert parse(cbor2.dumps([*cbor2.loads(frame)[:10], [["k", ["GCounter", 1, ["a", 1]], good]],
                              -1, []], canonical=True)) is not None
