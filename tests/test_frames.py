"""Frames and catch-up chunks bounded in bytes (issue 9, B; DESIGN.md
"Bounded state"): a replicator never sends a frame over ``max_frame`` bytes,
an entry larger than a frame travels in pieces that the receiver merges only
whole, and a state over ``max_state`` is neither sent nor merged.

Issue 9: ``chunk_size=500`` counted entries, so 30 keys of 600 KiB made one
18 MB catch-up frame, over the 16 MiB TCP cap: a fresh peer never caught up
(51 disconnects in 31 s).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdts import GCounter, LWWRegister, ORSet, codec
from crdts.base import CRDT
from crdts.dotcontext import CausalContext
from crdts.errors import InvalidOperation, StateTooLarge
from replication.dotranges import DotRanges
from replication.messages import (
    DEFAULT_FRAME,
    MIN_FRAME,
    Entry,
    Piece,
    Push,
    Reply,
    encode,
    encode_entry,
    encode_interval,
    parse,
)
from replication.replicator import Replicator
from replication.simnet import Faults, SimulatedNetwork
from replication.tcp import OVERHEAD, Limits

KiB = 1024


def blob(key: str, size: int) -> Callable[[LWWRegister[bytes], str], LWWRegister[bytes]]:
    data = random.Random(key).randbytes(size)
    return lambda register, me: register.assign(data, me, timestamp=1)


class Watched:
    """A node that records the size of every frame its replica sends."""

    def __init__(self, replica: Replicator, sizes: list[int]) -> None:
        self.replica, self.sizes = replica, sizes
        self.node_id = replica.node_id

    @property
    def refusals(self) -> int:
        return self.replica.refusals

    def _seen(self, frames: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        self.sizes += (len(frame) for _, frame in frames)
        return frames

    def tick(self, now: float) -> list[tuple[str, bytes]]:
        return self._seen(self.replica.tick(now))

    def receive(self, now: float, sender: str, frame: bytes) -> list[tuple[str, bytes]]:
        return self._seen(self.replica.receive(now, sender, frame))


def converged(replicas: list[Replicator]) -> bool:
    return len({r.encode_keyspace() for r in replicas}) == 1


def pair(
    seed: int, faults: Faults | None = None, **options: Any
) -> tuple[SimulatedNetwork, Replicator, Replicator, list[int]]:
    """Two replicas on a simulated network, and the sizes of the frames they send."""
    net = SimulatedNetwork(seed=seed, faults=faults)
    a = Replicator("a", ["b"], rng=random.Random(seed), **options)
    b = Replicator("b", ["a"], rng=random.Random(seed + 1), **options)
    sizes: list[int] = []
    net.add(Watched(a, sizes))
    net.add(Watched(b, sizes))
    return net, a, b, sizes


# -- the issue's case -------------------------------------------------------------------


def test_regression_issue_9_catch_up_of_30_keys_of_600_kib() -> None:
    """A fresh peer catches up on 30 keys of 600 KiB (18 MB) in frames of at
    most 1 MiB, where one 18 MB frame used to exceed the TCP cap."""
    net, a, b, sizes = pair(9)
    for i in range(30):
        a.update(f"key{i:02d}", LWWRegister, blob(f"key{i:02d}", 600 * KiB))
    assert net.run_until(lambda: converged([a, b]), max_rounds=10) is not None
    assert len(b.keys()) == 30
    assert max(sizes) <= DEFAULT_FRAME
    assert a.stats.catch_ups >= 1
    # Between two nodes with the default limits, every one of these frames
    # (plus the MAC and the snapshot layer's header) fits the TCP cap.
    assert Limits().max_frame == DEFAULT_FRAME + OVERHEAD >= max(sizes) + OVERHEAD


@pytest.mark.parametrize("seed", range(3))
def test_entries_larger_than_a_frame_travel_in_pieces_under_faults(seed: int) -> None:
    faults = Faults(loss=0.2, duplication=0.1, reorder=True)
    net, a, b, sizes = pair(seed, faults, max_frame=64 * KiB)
    for i in range(4):  # 150-300 KiB each: three to five pieces
        a.update(f"big{i}", LWWRegister, blob(f"big{i}", (150 + 50 * i) * KiB))
    for i in range(50):
        b.update(f"small{i}", GCounter, lambda c, me: c.increment(me))
    assert net.run_until(lambda: converged([a, b]), max_rounds=60) is not None
    assert max(sizes) <= 64 * KiB
    assert b.stats.pieces >= 4
    assert a.get("big3") == b.get("big3")


# -- framing -----------------------------------------------------------------------------


def template(start: int = -1, end: int = 7, clock: CausalContext | None = None) -> Push:
    return Push("a", "b", start, end, 0, 1, Reply.PUSH, clock or CausalContext(), (), 3)


def reassemble(frames: list[bytes]) -> list[tuple[int, int, tuple[Entry, ...]]]:
    """``(part, parts, entries)`` per part, pieces joined back into their entry."""
    out: list[tuple[int, int, tuple[Entry, ...]]] = []
    pieces: list[bytes] = []
    for frame in frames:
        message = parse(frame)
        if isinstance(message, Push):
            out.append((message.part, message.parts, message.entries))
            continue
        assert isinstance(message, Piece)
        assert message.index == len(pieces)
        pieces.append(message.chunk)
        if len(pieces) == message.count:
            from replication.messages import parse_frame_entries

            whole = b"".join(pieces)
            entries = parse_frame_entries([codec.decode_plain(whole)], size=len(whole))
            out.append((message.part, message.parts, entries))
            pieces = []
    assert not pieces
    return out


SIZES = st.lists(st.integers(0, 40_000), max_size=12)


@settings(max_examples=40)
@given(SIZES, st.integers(MIN_FRAME, 32 * KiB), st.none() | st.integers(1, 5), st.integers(0, 40))
def test_frames_are_bounded_and_carry_every_entry_once(
    sizes: list[int], max_frame: int, max_entries: int | None, writers: int
) -> None:
    clock = CausalContext.from_dots(  # a prefix clock: writer i's first i + 1 operations
        (f"writer-{i}", n) for i in range(writers) for n in range(1, i + 2)
    )
    entries = []
    for i, size in enumerate(sizes):
        register: LWWRegister[bytes] = LWWRegister()
        register.assign(bytes(size), "w", timestamp=i)
        entries.append(Entry(f"k{i:03d}", register, DotRanges.whole({"w": (1, i + 1)})))
    frames = encode_interval(
        template(clock=clock),
        [encode_entry(e) for e in entries],
        max_frame=max_frame,
        max_entries=max_entries,
    )
    assert frames and all(len(f) <= max_frame for f in frames)
    parts = reassemble(frames)
    assert [p for p, _, _ in parts] == list(range(len(parts)))
    assert {n for _, n, _ in parts} == {len(parts)}
    assert [e for _, _, got in parts for e in got] == entries
    if max_entries is not None:
        assert all(len(got) <= max_entries for _, _, got in parts)
    for frame in frames:  # every frame names the interval and the template's fields
        message = parse(frame)
        assert isinstance(message, (Push, Piece))
        assert (message.start, message.end, message.reply, message.ack) == (-1, 7, 1, 3)
        assert message.context == clock


def test_an_empty_interval_is_one_empty_push() -> None:
    frames = encode_interval(template(3, 3), [], max_frame=MIN_FRAME)
    assert [parse(f) for f in frames] == [Push("a", "b", 3, 3, 0, 1, Reply.PUSH, CausalContext(),
                                               (), 3)]


def test_max_frame_is_checked() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        Replicator("a", [], rng=random.Random(1), max_frame=MIN_FRAME - 1)
    with pytest.raises(ValueError, match="max_frame"):
        encode_interval(template(), [], max_frame=100)


# -- reassembly ---------------------------------------------------------------------------


def big_push_frames(size: int = 20 * KiB, key: str = "big") -> tuple[Replicator, list[bytes]]:
    """A replica ``a`` holding one big key and the catch-up frames it sends to
    ``b`` (in 4 KiB frames): a push of nothing but the pieces of that key."""
    a = Replicator("a", ["b"], rng=random.Random(1), max_frame=MIN_FRAME)
    a.update(key, LWWRegister, blob(key, size))
    b = Replicator("b", ["a"], rng=random.Random(2), max_frame=MIN_FRAME)
    opener = b.tick(0.0)[0][1]
    frames = [f for _, f in a.receive(0.0, "b", opener)]
    assert all(isinstance(parse(f), Piece) for f in frames)
    return a, frames


def receiver() -> Replicator:
    b = Replicator("b", ["a"], rng=random.Random(2), max_frame=MIN_FRAME)
    b.tick(0.0)  # it opened the round these frames answer
    return b


def test_pieces_in_any_order_with_duplicates_make_the_entry() -> None:
    a, frames = big_push_frames()
    b = receiver()
    shuffled = frames + frames[:3]
    random.Random(4).shuffle(shuffled)
    for frame in shuffled:
        b.receive(0.5, "a", frame)
    assert b.get("big") == a.get("big")
    assert b.stats.pieces == 1 and b.stats.malformed == b.stats.refused == 0


def test_nothing_is_merged_and_no_position_moves_until_every_piece_arrived() -> None:
    a, frames = big_push_frames()
    b = receiver()
    answers = [b.receive(0.5, "a", f) for f in frames[:-1]]
    assert b.get("big") is None and b.keys() == []
    assert answers == [[]] * (len(frames) - 1)  # no ack for half an entry
    assert b._positions.get("a", -1) == -1
    last = b.receive(0.5, "a", frames[-1])
    assert b.get("big") == a.get("big")
    assert b._positions["a"] == 1
    assert last  # the answer to the whole push


def test_entries_in_pieces_interleave_within_a_bounded_buffer() -> None:
    a, frames = big_push_frames()
    _, others = big_push_frames(30 * KiB, key="other")
    b = receiver()
    for mine, theirs in zip(frames, others, strict=False):  # interleaved, as reordering does
        b.receive(0.5, "a", mine)
        b.receive(0.5, "a", theirs)
    assert b.get("big") == a.get("big")
    assert b.stats.pieces_dropped == 0
    # Over max_state plus a frame of bytes, the oldest entry is dropped.
    small = Replicator("b", ["a"], rng=random.Random(2), max_frame=MIN_FRAME, max_state=30 * KiB)
    small.tick(0.0)
    for frame in others[:-1] + frames[:-1]:
        small.receive(0.5, "a", frame)
    assert small.stats.pieces_dropped == 1


def test_a_restarted_sender_drops_what_its_old_self_sent() -> None:
    _, frames = big_push_frames()
    b = receiver()
    for frame in frames[:-1]:
        b.receive(0.5, "a", frame)
    restarted = Replicator("a", ["b"], rng=random.Random(5), incarnation=7, max_frame=MIN_FRAME)
    restarted.update("big", LWWRegister, blob("big", 20 * KiB))
    opener = b.tick(1.0)[0][1]
    pieces = [f for _, f in restarted.receive(1.0, "b", opener)]
    b.receive(1.0, "a", pieces[0])
    assert b.stats.pieces_dropped == 1  # what the old incarnation sent
    for frame in pieces[1:]:
        b.receive(1.0, "a", frame)
    assert b.get("big") == restarted.get("big")
    b.receive(1.0, "a", frames[-1])  # the old one's last piece, late: makes nothing
    assert b.get("big") == restarted.get("big")


def test_a_half_received_entry_is_dropped_after_the_timeout() -> None:
    _, frames = big_push_frames()
    b = Replicator("b", ["a"], rng=random.Random(2), max_frame=MIN_FRAME, piece_timeout=5.0)
    b.tick(0.0)
    for frame in frames[:-1]:
        b.receive(0.5, "a", frame)
    b.tick(4.0)
    assert b.stats.pieces_dropped == 0
    b.tick(6.0)
    assert b.stats.pieces_dropped == 1 and b._pieces == {}
    b.receive(6.0, "a", frames[-1])
    assert b.get("big") is None


def test_lying_pieces_are_refused_without_gathering_them() -> None:
    b = receiver()
    tiny = Piece("a", "b", -1, 1, 0, 1, Reply.NOTHING, CausalContext(), -1, 0, 2, b"x")
    b.receive(0.5, "a", encode(tiny))  # a first piece of one byte: not what a sender cuts
    huge = Piece("a", "b", -1, 1, 0, 1, Reply.NOTHING, CausalContext(), -1, 0, 10**9, b"x" * 4000)
    b.receive(0.5, "a", encode(huge))  # a billion pieces: over max_state
    assert b._pieces == {}
    assert b.refusals == 2
    junk = [Piece("a", "b", -1, 1, 0, 1, Reply.NOTHING, CausalContext(), -1, i, 2,
                  bytes(3000)) for i in (0, 1)]
    for piece in junk:
        b.receive(0.5, "a", encode(piece))  # whole, but not an entry
    assert b.stats.malformed == 2 and b.keys() == []


# -- max_state -------------------------------------------------------------------------------


def test_check_size_is_the_callers_error() -> None:
    r = Replicator("a", [], rng=random.Random(1), max_state=1000)
    state = r.update("s", ORSet, lambda s, me: s.add("x" * 2000, me))
    with pytest.raises(StateTooLarge) as excinfo:
        r.check_size("s", r.get("s") or state)
    assert isinstance(excinfo.value, InvalidOperation)
    assert r.check_size("t", GCounter()) == len(codec.encode(GCounter()))


def test_a_state_over_max_state_is_not_sent_and_not_merged() -> None:
    net, a, b, _ = pair(3, max_state=10 * KiB)
    a.update("big", LWWRegister, blob("big", 20 * KiB))
    a.update("small", GCounter, lambda c, me: c.increment(me, 2))
    net.run_rounds(5)
    assert b.keys() == ["small"]
    assert a.stats.oversize >= 1
    # A peer configured for larger states sends it anyway: refused whole.
    generous = Replicator("a", ["b"], rng=random.Random(8), incarnation=2)
    generous.update("big", LWWRegister, blob("big", 20 * KiB))
    opener = b.tick(10.0)[0][1]
    for _, frame in generous.receive(10.0, "b", opener):
        b.receive(10.0, "a", frame)
    assert b.get("big") is None
    assert b.stats.oversize >= 1 and b.refusals >= 1


def test_update_does_not_encode_the_state() -> None:
    r = Replicator("a", [], rng=random.Random(1), max_state=16)
    calls = 0
    encode_state = codec.encode

    def counting(state: CRDT) -> bytes:
        nonlocal calls
        calls += 1
        return encode_state(state)

    codec.encode = counting
    try:
        for _ in range(100):
            r.update("hits", GCounter, lambda c, me: c.increment(me))
    finally:
        codec.encode = encode_state
    assert calls == 0
    assert r.get("hits") is not None


def test_tcp_limits_follow_the_frame_size() -> None:
    limits = Limits()
    assert limits.max_frame == DEFAULT_FRAME + OVERHEAD
    assert limits.max_client_frame > limits.max_frame  # client answers can be larger
