"""The per-sender envelope of broker transports (replication.envelope), with no
network: what it refuses, by which reason, and that refusing changes nothing."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from replication.envelope import (
    MAX_BOOTS,
    MAX_OVERHEAD,
    REASONS,
    WINDOW,
    Envelope,
    EnvelopeRefused,
    new_boot,
)

KEY = bytes(range(32))


def pair(cluster: str = "c") -> tuple[Envelope, Envelope]:
    return Envelope("a", KEY, cluster=cluster), Envelope("b", KEY, cluster=cluster)


def reason(receiver: Envelope, frame: bytes, max_size: int | None = None) -> str:
    with pytest.raises(EnvelopeRefused) as refused:
        receiver.open(frame, max_size)
    assert refused.value.reason in REASONS
    return refused.value.reason


def test_a_sealed_frame_opens_once_with_its_sender() -> None:
    a, b = pair()
    frame = a.seal("b", b"gossip")
    assert b.open(frame) == ("a", b"gossip")
    assert reason(b, frame) == "replayed"


def test_every_single_bit_flip_is_refused_and_changes_nothing() -> None:
    a, b = pair()
    frame = a.seal("b", b"body")
    for i in range(len(frame)):
        for bit in (0, 7):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            assert reason(b, bytes(bad)) in ("forged", "malformed")
    assert b.senders == 0
    assert b.open(frame) == ("a", b"body")  # the genuine frame was not spoiled


def test_a_rewritten_sender_name_is_forged() -> None:
    a, b = pair()
    frame = a.seal("b", b"x")
    assert frame[2:3] == b"a"
    assert reason(b, frame[:2] + b"c" + frame[3:]) == "forged"


def test_another_cluster_or_key_is_forged() -> None:
    a, _ = pair("one")
    _, b = pair("two")
    assert reason(b, a.seal("b", b"x")) == "forged"
    c = Envelope("a", bytes(32), cluster="two")
    assert reason(b, c.seal("b", b"x")) == "forged"


def test_a_frame_for_another_receiver_is_misaddressed() -> None:
    a, b = pair()
    assert reason(b, a.seal("c", b"x")) == "misaddressed"


def test_a_frame_naming_the_receiver_as_sender_is_impersonating() -> None:
    _, b = pair()
    other_b = Envelope("b", KEY, cluster="c")  # a key holder using b's name
    assert reason(b, other_b.seal("b", b"x")) == "impersonating"


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x02" + bytes(100), bytes(61), b"\x01\xff"])
def test_garbage_is_malformed(garbage: bytes) -> None:
    _, b = pair()
    assert reason(b, garbage) == "malformed"


def test_the_size_cap_is_checked_before_anything_is_parsed() -> None:
    a, b = pair()
    frame = a.seal("b", bytes(1000))
    assert reason(b, frame, max_size=len(frame) - 1) == "oversize"
    assert b.senders == 0
    assert b.open(frame, max_size=len(frame)) == ("a", bytes(1000))


def test_the_window_takes_reordered_frames_once_and_refuses_old_ones() -> None:
    a, b = pair()
    frames = [a.seal("b", i.to_bytes(4, "big")) for i in range(WINDOW + 10)]
    for frame in reversed(frames[10:]):  # newest first: all within the window
        b.open(frame)
    for frame in frames[10:]:
        assert reason(b, frame) == "replayed"
    for frame in frames[:10]:  # WINDOW or more below the newest
        assert reason(b, frame) == "replayed"


def test_a_restarted_sender_is_accepted_and_its_old_boots_stay_refused() -> None:
    _, b = pair()
    boots = [Envelope("a", KEY, cluster="c") for _ in range(MAX_BOOTS + 2)]
    first = [boot.seal("b", b"x") for boot in boots]
    for frame in first[:-1]:
        assert b.open(frame) == ("a", b"x")
    # The first boot was forgotten, but it is older than every boot kept.
    assert reason(b, boots[0].seal("b", b"late")) == "replayed"
    assert b.open(first[-1]) == ("a", b"x")
    for frame in first:
        assert reason(b, frame) == "replayed"


def test_sender_state_is_bounded() -> None:
    b = Envelope("b", KEY, cluster="c", max_senders=8)
    for i in range(100):
        b.open(Envelope(f"s{i}", KEY, cluster="c").seal("b", b"x"))
    assert b.senders == 8


def test_bad_names_and_sizes_are_refused_at_the_boundary() -> None:
    with pytest.raises(ValueError, match="non-empty str"):
        Envelope("", KEY, cluster="c")
    with pytest.raises(ValueError, match="at most 255 bytes"):
        Envelope("a", KEY, cluster="c").seal("x" * 256, b"")
    with pytest.raises(ValueError, match="16 bytes"):
        Envelope("a", KEY, cluster="c", boot=b"short")
    a = Envelope("a" * 255, KEY, cluster="c")
    assert len(a.seal("b" * 255, b"")) == MAX_OVERHEAD
    assert len(new_boot()) == 16


def test_golden_envelope() -> None:
    """The wire format, pinned: a change to it must change this vector on purpose."""
    sealer = Envelope("a", KEY, cluster="prod", boot=bytes(range(16)))
    sealed = sealer.seal("b", b"gossip")
    head = bytes([1, 1]) + b"a" + bytes([1]) + b"b" + bytes(range(16)) + (1).to_bytes(8, "big")
    subkey = hmac.new(KEY, b"crdtkit-envelope-v1prod", hashlib.sha256).digest()
    tag = hmac.new(subkey, head + b"gossip", hashlib.sha256).digest()
    assert sealed == head + b"gossip" + tag
    assert sealed.hex() == (
        "0101610162000102030405060708090a0b0c0d0e0f0000000000000001676f737369702c9b"
        "708022cf657ac59f88a862dcf9db7e3035e93e5d8167e25ccd1f3dcc0767"
    )
