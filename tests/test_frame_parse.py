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
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from replication import messages
from replication.dotranges import DotRanges
from replication.messages import Entry, Push, Reply, parse
from replication.replicator import Replicator
from replication.transport import Outgoing
from snapshot.marker import SnapshotNode


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts ``codec.decode_plain`` calls (``codec.decode`` goes through it)."""
    calls: list[int] = []
    real = codec.decode_plain

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codec, "decode_plain", counting)
    yield calls


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
    assert raw[:2] == ["push", messages.VERSION] and messages.VERSION == 4
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
