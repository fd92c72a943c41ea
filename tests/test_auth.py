"""``replication.auth``: the handshake and the per-frame MAC, honest and attacked.

The contract (DESIGN.md, "replication"; TESTING.md, "Bad input"): two sides
holding the same cluster key finish the handshake and exchange frames both
ways; anything else (a wrong key, a proof or frame from another connection or
reflected back, a tampered, truncated, replayed or reordered frame, a
malformed hello) raises ``AuthError`` and changes nothing. Nonces come from
fixed bytes or ``random.Random(seed)``, so every run is the same; no test
looks at the clock.
"""

from __future__ import annotations

import hmac
import random
from hashlib import sha256
from pathlib import Path

import cbor2
import pytest

from crdts import codec
from crdts.errors import CRDTError
from replication.auth import (
    HELLO_MAX,
    OVERHEAD,
    AuthError,
    Handshake,
    Hello,
    Session,
    check_key,
    generate_key,
    load_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NONCE_A = bytes(32)
NONCE_B = bytes([1]) * 32


def nonce(seed: int) -> bytes:
    return random.Random(seed).randbytes(32)


def handshakes(
    key_a: bytes = KEY,
    key_b: bytes = KEY,
    nonce_a: bytes = NONCE_A,
    nonce_b: bytes = NONCE_B,
) -> tuple[Handshake, Handshake, bytes, bytes]:
    """Initiator ``a`` and responder ``b`` after the hellos, with their proofs."""
    a = Handshake(key_a, "a", "peer", nonce_a, initiator=True)
    b = Handshake(key_b, "b", "peer", nonce_b, initiator=False)
    proof_a = a.receive_hello(b.hello())
    proof_b = b.receive_hello(a.hello())
    return a, b, proof_a, proof_b


def sessions(nonce_a: bytes = NONCE_A, nonce_b: bytes = NONCE_B) -> tuple[Session, Session]:
    a, b, proof_a, proof_b = handshakes(nonce_a=nonce_a, nonce_b=nonce_b)
    return a.receive_proof(proof_b), b.receive_proof(proof_a)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- the honest path --------------------------------------------------------------


def test_handshake_gives_sessions_that_work_both_ways() -> None:
    sa, sb = sessions(nonce(1), nonce(2))
    assert (sa.peer.node, sa.peer.role, sa.peer.nonce) == ("b", "peer", nonce(2))
    assert (sb.peer.node, sb.peer.role, sb.peer.nonce) == ("a", "peer", nonce(1))
    rng = random.Random(3)
    bodies = [b"", b"x", rng.randbytes(1 << 20)] + [
        rng.randbytes(rng.randrange(300)) for _ in range(200)
    ]
    for i, body in enumerate(bodies):
        to_b = sa.seal(body)
        assert len(to_b) == len(body) + OVERHEAD
        assert sb.open(to_b) == body
        to_a = sb.seal(body[::-1])
        assert sa.open(to_a) == body[::-1]
        assert sa.sealed == sa.opened == sb.sealed == sb.opened == i + 1


def test_many_frames_in_one_direction_then_the_other() -> None:
    sa, sb = sessions(nonce(4), nonce(5))
    frames = [sa.seal(i.to_bytes(4, "big")) for i in range(1000)]
    assert [sb.open(f) for f in frames] == [i.to_bytes(4, "big") for i in range(1000)]
    assert sa.open(sb.seal(b"back")) == b"back"
    assert (sa.sealed, sb.opened, sb.sealed, sa.opened) == (1000, 1000, 1, 1)


def test_open_accepts_bytearray_and_memoryview() -> None:
    sa, sb = sessions()
    assert sb.open(bytearray(sa.seal(b"one"))) == b"one"
    assert sb.open(memoryview(sa.seal(b"two"))) == b"two"


def test_client_role_and_peer_before_hello() -> None:
    a = Handshake(KEY, "cli-1", "client", NONCE_A, initiator=True)
    b = Handshake(KEY, "b", "peer", NONCE_B, initiator=False)
    assert a.peer is None and b.peer is None
    proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
    assert b.peer == Hello("cli-1", "client", NONCE_A)
    assert b.receive_proof(proof_a).peer.role == "client"
    assert a.receive_proof(proof_b).peer.role == "peer"


def test_proofs_and_keys_follow_the_specification() -> None:
    """Recomputed by hand from the spec, so the other side of the wire can be
    written from the docstring alone."""
    a, b, proof_a, proof_b = handshakes()
    hi, hr = a.hello(), b.hello()
    assert proof_a == hmac.new(KEY, b"crdtkit-proof-v1I" + hi + hr, sha256).digest()
    assert proof_b == hmac.new(KEY, b"crdtkit-proof-v1R" + hi + hr, sha256).digest()
    sa, sb = a.receive_proof(proof_b), b.receive_proof(proof_a)
    k_ir = hmac.new(KEY, b"crdtkit-session-v1I>R" + hi + hr, sha256).digest()
    k_ri = hmac.new(KEY, b"crdtkit-session-v1R>I" + hi + hr, sha256).digest()
    for seq in range(3):
        head = seq.to_bytes(8, "big")
        body = bytes([seq]) * seq
        assert sa.seal(body) == head + body + hmac.new(k_ir, head + body, sha256).digest()
        assert sb.seal(body) == head + body + hmac.new(k_ri, head + body, sha256).digest()


def test_golden_vectors() -> None:
    """The wire format pinned byte for byte: a change here is a new version."""
    a = Handshake(KEY, "a", "peer", NONCE_A, initiator=True)
    b = Handshake(KEY, "b", "client", NONCE_B, initiator=False)
    assert a.hello().hex() == ("856d637264746b69742d68656c6c6f01616164706565725820" + "00" * 32)
    assert b.hello().hex() == ("856d637264746b69742d68656c6c6f01616266636c69656e745820" + "01" * 32)
    proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
    assert proof_a.hex() == "61deb9b578fa1cf4ceaae76e21aaffdbc8acc46a98487b090812aff830c82fb3"
    assert proof_b.hex() == "de195aa99e29892167a994681f9f2668a3aab8c38f8fa67346326e0746d32793"
    sa, sb = a.receive_proof(proof_b), b.receive_proof(proof_a)
    assert sa.seal(b"gossip").hex() == (
        "0000000000000000676f73736970"
        "41a2169225d696201a47c8747170a73a98fa0be7027a5b995ab6b14b936b0051"
    )
    assert sb.seal(b"").hex() == (
        "00000000000000003234df8e42eb02b05a9b1649b4d3f0017b07cab4dd034e48b4a968e4aa27ab75"
    )


# -- attacks on the handshake -----------------------------------------------------


def test_wrong_key_fails_on_both_sides() -> None:
    a, b, proof_a, proof_b = handshakes(key_a=KEY, key_b=OTHER_KEY)
    with pytest.raises(AuthError, match="bad proof from 'b'"):
        a.receive_proof(proof_b)
    with pytest.raises(AuthError, match="bad proof from 'a'"):
        b.receive_proof(proof_a)


def test_proof_from_another_connection_is_refused() -> None:
    """Proofs recorded on an earlier connection, between the same two nodes
    with the same key, do not open a new one (its nonces differ)."""
    _, _, old_proof_a, old_proof_b = handshakes(nonce_a=nonce(10), nonce_b=nonce(11))
    # the responder's nonce is fresh, the initiator's too, or only one of them
    for na, nb in [(nonce(12), nonce(13)), (nonce(10), nonce(14)), (nonce(15), nonce(11))]:
        a, b, _, _ = handshakes(nonce_a=na, nonce_b=nb)
        with pytest.raises(AuthError, match="bad proof"):
            a.receive_proof(old_proof_b)
        with pytest.raises(AuthError, match="bad proof"):
            b.receive_proof(old_proof_a)


def test_reflected_proof_is_refused() -> None:
    a, b, proof_a, proof_b = handshakes()
    with pytest.raises(AuthError, match="bad proof"):
        a.receive_proof(proof_a)
    with pytest.raises(AuthError, match="bad proof"):
        b.receive_proof(proof_b)


def test_both_sides_claiming_to_initiate_fail() -> None:
    a = Handshake(KEY, "a", "peer", NONCE_A, initiator=True)
    b = Handshake(KEY, "b", "peer", NONCE_B, initiator=True)
    proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
    with pytest.raises(AuthError):
        a.receive_proof(proof_b)
    with pytest.raises(AuthError):
        b.receive_proof(proof_a)


def test_hello_with_our_nonce_is_refused() -> None:
    a = Handshake(KEY, "a", "peer", NONCE_A, initiator=True)
    with pytest.raises(AuthError, match="our own nonce"):
        a.receive_hello(Hello("b", "peer", NONCE_A).to_bytes())
    # a's own hello, reflected: refused for the nonce (and the node id)
    with pytest.raises(AuthError, match="reflection"):
        a.receive_hello(a.hello())
    assert a.peer is None


def test_hello_with_our_node_id_is_refused() -> None:
    a = Handshake(KEY, "a", "peer", NONCE_A, initiator=True)
    with pytest.raises(AuthError, match="our own node id"):
        a.receive_hello(Hello("a", "peer", NONCE_B).to_bytes())
    assert a.peer is None


def test_splicing_two_connections_to_one_node_is_refused() -> None:
    """Without the key, an attacker in the middle of two connections to node
    ``a`` (a dials it, and it dials a) answers each one's hello with the
    other's. Both would verify, and ``a`` would talk to itself believing it
    talks to another node; the node-id check stops it at the hello."""
    dialled = Handshake(KEY, "a", "peer", nonce(20), initiator=True)
    dialling = Handshake(KEY, "a", "peer", nonce(21), initiator=False)
    with pytest.raises(AuthError, match="our own node id"):
        dialled.receive_hello(dialling.hello())
    with pytest.raises(AuthError, match="our own node id"):
        dialling.receive_hello(dialled.hello())


def test_out_of_order_handshake_calls_are_refused() -> None:
    a, b, proof_a, proof_b = handshakes()
    with pytest.raises(AuthError, match="second hello"):
        a.receive_hello(b.hello())
    fresh = Handshake(KEY, "c", "peer", nonce(30), initiator=False)
    with pytest.raises(AuthError, match="before the peer's hello"):
        fresh.receive_proof(proof_a)
    a.receive_proof(proof_b)
    with pytest.raises(AuthError, match="already finished"):
        a.receive_proof(proof_b)


def test_failed_proof_leaves_handshake_usable_for_genuine_proof() -> None:
    a, _, _, proof_b = handshakes()
    for bit in range(len(proof_b) * 8):
        with pytest.raises(AuthError):
            a.receive_proof(flip(proof_b, bit))
    for bad in (b"", proof_b[:-1], proof_b + b"\x00"):
        with pytest.raises(AuthError):
            a.receive_proof(bad)
    assert a.receive_proof(proof_b).peer.node == "b"


# -- attacks on sealed frames -----------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"ping"], ids=["empty", "short"])
def test_every_bit_flip_of_a_short_frame_is_refused(body: bytes) -> None:
    sa, sb = sessions()
    frame = sa.seal(body)
    for bit in range(len(frame) * 8):
        with pytest.raises(AuthError, match="bad MAC"):
            sb.open(flip(frame, bit))
        assert sb.opened == 0
    assert sb.open(frame) == body


def test_sampled_bit_flips_of_a_long_frame_are_refused() -> None:
    sa, sb = sessions()
    rng = random.Random(40)
    body = rng.randbytes(64 * 1024)
    frame = sa.seal(body)
    bits = len(frame) * 8
    # the ends of each field, and a random sample of the rest
    edges = [0, 63, 64, 65, bits - 257, bits - 256, bits - 255, bits - 1]
    for bit in edges + rng.sample(range(bits), 500):
        with pytest.raises(AuthError, match="bad MAC"):
            sb.open(flip(frame, bit))
    assert sb.opened == 0
    assert sb.open(frame) == body


def test_replayed_frame_is_refused() -> None:
    sa, sb = sessions()
    first, second = sa.seal(b"1"), sa.seal(b"2")
    assert sb.open(first) == b"1"
    with pytest.raises(AuthError, match="frame out of sequence: expected 1, got 0"):
        sb.open(first)
    assert sb.open(second) == b"2"
    with pytest.raises(AuthError, match="expected 2, got 1"):
        sb.open(second)
    assert sb.opened == 2


def test_reordered_frames_are_refused() -> None:
    sa, sb = sessions()
    frames = [sa.seal(bytes([i])) for i in range(6)]
    with pytest.raises(AuthError, match="frame out of sequence: expected 0, got 1"):
        sb.open(frames[1])
    with pytest.raises(AuthError, match="expected 0, got 5"):
        sb.open(frames[5])
    assert sb.open(frames[0]) == b"\x00"
    with pytest.raises(AuthError, match="expected 1, got 3"):
        sb.open(frames[3])
    assert [sb.open(f) for f in frames[1:]] == [bytes([i]) for i in range(1, 6)]


def test_frame_reflected_to_its_sender_is_refused() -> None:
    sa, sb = sessions()
    for s in (sa, sb):
        frame = s.seal(b"mine")
        with pytest.raises(AuthError, match="bad MAC"):
            s.open(frame)
        assert s.opened == 0


def test_frame_from_another_connection_is_refused() -> None:
    """Same key, same two nodes, same sequence number: still refused."""
    old_a, old_b = sessions(nonce(50), nonce(51))
    new_a, new_b = sessions(nonce(52), nonce(51))
    with pytest.raises(AuthError, match="bad MAC"):
        new_b.open(old_a.seal(b"old"))
    with pytest.raises(AuthError, match="bad MAC"):
        new_a.open(old_b.seal(b"old"))
    assert new_b.open(new_a.seal(b"new")) == b"new"


def test_truncated_frames_are_refused() -> None:
    sa, sb = sessions()
    short = sa.seal(b"")
    long = sa.seal(random.Random(60).randbytes(5000))
    for n in range(OVERHEAD):
        with pytest.raises(AuthError, match=f"frame too short: {n} bytes"):
            sb.open(short[:n])
        with pytest.raises(AuthError, match="frame too short"):
            sb.open(long[:n])
    for n in (OVERHEAD, OVERHEAD + 1, 100, 4999, len(long) - 32, len(long) - 1):
        with pytest.raises(AuthError, match="bad MAC"):
            sb.open(long[:n])
    with pytest.raises(AuthError, match="bad MAC"):
        sb.open(long[1:])  # the front cut off instead
    assert sb.opened == 0
    assert sb.open(short) == b""
    assert len(sb.open(long)) == 5000


def test_garbage_frames_are_refused() -> None:
    _, sb = sessions()
    rng = random.Random(70)
    for _ in range(500):
        with pytest.raises(AuthError):
            sb.open(rng.randbytes(rng.randrange(200)))
    assert sb.opened == 0


# -- malformed hellos -------------------------------------------------------------

GOOD = Hello("b", "peer", NONCE_B).to_bytes()
_TAG = codec.encode_plain("crdtkit-hello")


def _raw(*fields: object) -> bytes:
    return cbor2.dumps(list(fields), canonical=True)


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "junk": b"junk",
    "not an array": cbor2.dumps({"crdtkit-hello": 1}, canonical=True),
    "empty array": _raw(),
    "missing field": _raw("crdtkit-hello", 1, "b", "peer"),
    "extra field": _raw("crdtkit-hello", 1, "b", "peer", NONCE_B, 0),
    "wrong tag": _raw("crdtkit-hullo", 1, "b", "peer", NONCE_B),
    "tag as bytes": _raw(b"crdtkit-hello", 1, "b", "peer", NONCE_B),
    "version 0": _raw("crdtkit-hello", 0, "b", "peer", NONCE_B),
    "version 2": _raw("crdtkit-hello", 2, "b", "peer", NONCE_B),
    "version as str": _raw("crdtkit-hello", "1", "b", "peer", NONCE_B),
    "version as bool": _raw("crdtkit-hello", True, "b", "peer", NONCE_B),
    "version negative": _raw("crdtkit-hello", -1, "b", "peer", NONCE_B),
    "empty node": _raw("crdtkit-hello", 1, "", "peer", NONCE_B),
    "node as bytes": _raw("crdtkit-hello", 1, b"b", "peer", NONCE_B),
    "node as int": _raw("crdtkit-hello", 1, 7, "peer", NONCE_B),
    "bad role": _raw("crdtkit-hello", 1, "b", "admin", NONCE_B),
    "role as bytes": _raw("crdtkit-hello", 1, "b", b"peer", NONCE_B),
    "short nonce": _raw("crdtkit-hello", 1, "b", "peer", NONCE_B[:31]),
    "long nonce": _raw("crdtkit-hello", 1, "b", "peer", NONCE_B + b"\x01"),
    "empty nonce": _raw("crdtkit-hello", 1, "b", "peer", b""),
    "nonce as str": _raw("crdtkit-hello", 1, "b", "peer", "1" * 32),
    "non-canonical int": b"\x85" + _TAG + b"\x18\x01" + GOOD[len(_TAG) + 2 :],
    "indefinite array": b"\x9f" + GOOD[1:] + b"\xff",
    "tagged nonce": _raw("crdtkit-hello", 1, "b", "peer", cbor2.CBORTag(24, NONCE_B)),
    "trailing byte": GOOD + b"\x00",
    "oversize": _raw("crdtkit-hello", 1, "n" * HELLO_MAX, "peer", NONCE_B),
}


def test_malformed_table_is_built_right() -> None:
    """The non-canonical entries differ from GOOD only in their encoding."""
    assert cbor2.loads(MALFORMED["non-canonical int"]) == cbor2.loads(GOOD)
    assert cbor2.loads(MALFORMED["indefinite array"]) == cbor2.loads(GOOD)
    assert len(MALFORMED["oversize"]) > HELLO_MAX


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_hello_is_refused(name: str) -> None:
    frame = MALFORMED[name]
    with pytest.raises(AuthError, match="bad hello"):
        Hello.from_bytes(frame)
    a = Handshake(KEY, "a", "peer", NONCE_A, initiator=True)
    with pytest.raises(AuthError, match="bad hello"):
        a.receive_hello(frame)
    # nothing changed: the genuine hello is still taken
    assert a.peer is None
    a.receive_hello(GOOD)
    assert a.peer == Hello("b", "peer", NONCE_B)


def test_random_bytes_as_hello_are_refused() -> None:
    rng = random.Random(80)
    for _ in range(1000):
        with pytest.raises(AuthError, match="bad hello"):
            Hello.from_bytes(rng.randbytes(rng.randrange(120)))


def test_mutated_hellos_are_refused_or_canonical() -> None:
    """A bit flip or a truncation gives AuthError or another valid hello
    (a flipped nonce bit, a changed node letter) whose encoding is the input."""
    frames = [flip(GOOD, bit) for bit in range(len(GOOD) * 8)]
    frames += [GOOD[:n] for n in range(len(GOOD))]
    accepted = 0
    for frame in frames:
        try:
            hello = Hello.from_bytes(frame)
        except AuthError:
            continue
        accepted += 1
        assert hello.to_bytes() == frame
    # every nonce bit flip gives a valid hello; the tag, version and lengths do not
    assert 256 <= accepted < len(frames) - 200


def test_largest_hello_under_the_cap_is_taken() -> None:
    node = "n" * 900
    frame = Hello(node, "client", NONCE_B).to_bytes()
    assert len(frame) <= HELLO_MAX
    assert Hello.from_bytes(frame).node == node


def test_hello_constructor_checks_its_fields() -> None:
    for node, role, n in [("", "peer", NONCE_A), ("a", "boss", NONCE_A), ("a", "peer", b"x")]:
        with pytest.raises(ValueError):
            Hello(node, role, n)
    with pytest.raises(ValueError):
        Handshake(KEY, "a", "peer", bytes(31), initiator=True)
    with pytest.raises(AuthError):
        Handshake(b"short", "a", "peer", NONCE_A, initiator=True)


# -- keys -------------------------------------------------------------------------


def test_check_key() -> None:
    assert check_key(bytes(16)) == bytes(16)
    assert check_key(bytearray(20)) == bytes(20)
    assert type(check_key(bytearray(20))) is bytes
    with pytest.raises(AuthError, match="at least 16 bytes, got 15"):
        check_key(bytes(15))
    with pytest.raises(TypeError):
        check_key("00" * 16)  # type: ignore[arg-type]


def test_auth_error_is_a_crdt_error_and_a_value_error() -> None:
    assert issubclass(AuthError, CRDTError)
    assert issubclass(AuthError, ValueError)


@pytest.mark.parametrize(
    "text", ["00" * 32, "AbCd" * 8 + "\n", "  " + "ff" * 16 + "  \r\n", "\n" + "12" * 64]
)
def test_load_key_reads_a_hex_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(text, newline="")
    assert load_key(path) == bytes.fromhex(text.strip())
    assert load_key(str(path)) == bytes.fromhex(text.strip())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"zz" * 16,
        b"0" * 33,  # odd length
        b"00" * 16 + b"g",
        b"00" * 8 + b" " + b"00" * 8,  # a space inside
        b"00" * 16 + b"\n" + b"00" * 16,  # two lines
        b"0x" + b"00" * 16,
        "\u00e9".encode() + b"00" * 16,  # not ASCII
        b"\xff\xfe" + b"00" * 16,
    ],
)
def test_load_key_refuses_bad_hex(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(data)
    with pytest.raises(AuthError, match=r"bad\.key: not a hex key"):
        load_key(path)


def test_load_key_refuses_a_short_key(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    path.write_text("00" * 15 + "\n")
    with pytest.raises(AuthError, match=r"short\.key: a cluster key is at least 16 bytes, got 15"):
        load_key(path)


def test_load_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "absent.key")


def test_generate_key_round_trips(tmp_path: Path) -> None:
    text = generate_key()
    assert len(text) == 64
    assert text == text.lower()
    key = check_key(bytes.fromhex(text))
    assert len(key) == 32
    path = tmp_path / "cluster.key"
    path.write_text(text + "\n")
    assert load_key(path) == key
    assert generate_key() != text
