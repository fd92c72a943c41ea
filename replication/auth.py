"""Authentication for gossip between processes: a handshake, then a MAC per frame.

Sans-I/O, like the replicator: these objects take bytes and return bytes and
never touch a socket, a clock or a random generator. The caller (the asyncio
TCP runtime) reads length-prefixed frames, hands their bodies in, and supplies
each connection's nonce (32 fresh random bytes, e.g. ``secrets.token_bytes``).

The cluster shares one secret *key* (at least 16 bytes, kept as hex in a key
file: :func:`load_key`, :func:`generate_key`). A connection goes:

1. each side sends its :class:`Hello`, the canonical CBOR array
   ``["crdtkit-hello", 1, node, role, nonce]`` (role ``"peer"`` or
   ``"client"``);
2. each side sends its *proof*, ``HMAC-SHA256(key, b"crdtkit-proof-v1" + X +
   hello_I + hello_R)``, where ``X`` is ``b"I"`` from the initiator (the side
   that connected) and ``b"R"`` from the responder, and ``hello_I``,
   ``hello_R`` are the two hello frames exactly as sent; each side checks the
   other's proof (:class:`Handshake`);
3. every later frame in either direction is sealed by a :class:`Session`:
   ``seq (8 bytes, big-endian, from 0) + body + HMAC-SHA256(k, seq + body)``,
   where ``k`` is ``HMAC-SHA256(key, b"crdtkit-session-v1" + D + hello_I +
   hello_R)`` and ``D`` is ``b"I>R"`` for frames the initiator sends and
   ``b"R>I"`` for the others. A receiver takes only the next sequence number.

What it protects against, given that the attacker does not hold the key:

- *impersonation*: a proof needs the key, and it covers both nonces, so it is
  fresh to this connection;
- *forgery and tampering*: every frame carries a MAC over its sequence number
  and body (``bad MAC``);
- *replay and reordering*: a frame is accepted only with the next sequence
  number (``frame out of sequence: expected 5, got 3``), and the keys are
  fresh per connection, so a frame or a proof recorded on another connection
  does not verify on this one;
- *reflection*: the proofs and keys of the two directions differ (``I``/``R``,
  ``I>R``/``R>I``), so a side's own proof or frames sent back to it fail; a
  hello carrying our own nonce is refused, and so is one carrying our own node
  id, which stops the relay that splices two connections to the same node
  into one with itself (each connection's hello answered with the other's).

What it does not do:

- the key is the cluster's identity, not a node's: any holder of the key can
  claim any node id, and a peer that holds it is trusted to name itself
  honestly (the runtime should still drop a message whose ``sender`` differs
  from the authenticated :attr:`Session.peer`);
- confidentiality: frames travel in the clear; use TLS (offered separately)
  where the network is not private;
- freshness of nonces is the caller's job: a side that reuses a nonce can be
  sent frames replayed from the earlier connection;
- denial of service: a failure raises :class:`AuthError`, and the runtime
  closes the connection.

>>> key = bytes.fromhex(generate_key())
>>> a = Handshake(key, "a", "peer", bytes(32), initiator=True)
>>> b = Handshake(key, "b", "peer", bytes([1]) * 32, initiator=False)
>>> proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
>>> sa, sb = a.receive_proof(proof_b), b.receive_proof(proof_a)
>>> sa.peer.node, sb.peer.node
('b', 'a')
>>> sb.open(sa.seal(b"gossip"))
b'gossip'

Cost: the handshake is two frames each way and four HMAC-SHA256 computations
per side over under 2 KiB; a sealed frame is 40 bytes longer than its body and
costs one HMAC-SHA256 over it (about 1 ms per MiB), sealing or opening.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Protocol, cast

from crdts import codec
from crdts.base import check_replica, expect_list, expect_replica, expect_uint
from crdts.errors import CallerError, DecodeError, PeerError

__all__ = [
    "HELLO_MAX",
    "MIN_KEY",
    "NONCE_SIZE",
    "OVERHEAD",
    "ROLES",
    "AuthError",
    "Handshake",
    "Hello",
    "KeyUnusable",
    "Session",
    "check_key",
    "generate_key",
    "load_key",
]

#: The shortest cluster key accepted, in bytes.
MIN_KEY = 16
#: A hello's nonce is exactly this many bytes.
NONCE_SIZE = 32
#: The roles a hello may name: a replica, or a tool that only talks to one.
ROLES = ("peer", "client")
#: Hello frames above this size are refused before parsing.
HELLO_MAX = 1024
#: A sealed frame is this much longer than its body: 8 of sequence, 32 of MAC.
OVERHEAD = 40

_HELLO_TAG = "crdtkit-hello"
_HELLO_VERSION = 1
_PROOF = b"crdtkit-proof-v1"
_SESSION = b"crdtkit-session-v1"
_SEQ = 8
_TAG = 32
_MAX_SEQ = 2**64 - 1


class AuthError(PeerError, ValueError):
    """A peer failed authentication or sent a frame that does not verify (a bad
    MAC, a replayed or reordered frame, a bad hello).

    The connection it came from should be closed; nothing it carried is used.

    >>> raise AuthError("bad MAC")
    Traceback (most recent call last):
    ...
    replication.auth.AuthError: bad MAC
    """


class KeyUnusable(AuthError, CallerError):
    """A cluster key, or a key file, that cannot be a key (too short, not
    hex): the operator's to fix, not a peer's doing. Also an ``AuthError``,
    which is what it was raised as before it had a name of its own.

    >>> issubclass(KeyUnusable, CallerError) and issubclass(KeyUnusable, AuthError)
    True
    """


def check_key(key: bytes | bytearray) -> bytes:
    """Return ``key`` (as bytes) if it can be a cluster key, else raise KeyUnusable.

    >>> len(check_key(bytes(16)))
    16
    >>> check_key(b"short")
    Traceback (most recent call last):
    ...
    replication.auth.KeyUnusable: a cluster key is at least 16 bytes, got 5

    Cost: O(1), or a copy if ``key`` is a bytearray.
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"a cluster key is bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY:
        raise KeyUnusable(f"a cluster key is at least {MIN_KEY} bytes, got {len(key)}")
    return bytes(key)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The cluster key in the file at ``path``: hex on one line.

    Surrounding whitespace is ignored. A missing file raises
    FileNotFoundError; a file that is not one line of hex, or holds a key
    shorter than 16 bytes, raises KeyUnusable naming the file.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     file = Path(folder, "cluster.key")
    ...     _ = file.write_text("00" * 32 + "\\n")
    ...     len(load_key(file))
    32

    Cost: O(size of the file).
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("ascii").strip()
        if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise ValueError("expected one line of hex digits")
        key = bytes.fromhex(text)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise KeyUnusable(f"key file {os.fspath(path)}: not a hex key ({exc})") from None
    try:
        return check_key(key)
    except KeyUnusable as exc:
        raise KeyUnusable(f"key file {os.fspath(path)}: {exc}") from None


def generate_key() -> str:
    """A new random cluster key of 32 bytes, as the 64 hex digits of a key file.

    The only randomness in this module: it is for creating key files.

    >>> key = generate_key()
    >>> len(key), len(check_key(bytes.fromhex(key)))
    (64, 32)

    Cost: O(1).
    """
    return secrets.token_hex(32)


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame each side sends: who it claims to be, as what, and a
    nonce that makes this connection's proofs and keys unique.

    >>> h = Hello("a", "peer", bytes(32))
    >>> Hello.from_bytes(h.to_bytes()) == h
    True
    """

    node: str
    role: str
    nonce: bytes

    def __post_init__(self) -> None:
        check_replica(self.node)
        if self.role not in ROLES or type(self.role) is not str:
            raise ValueError(f"a role is one of {ROLES}, not {self.role!r:.40}")
        if type(self.nonce) is not bytes or len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes, got {self.nonce!r:.80}")

    def to_bytes(self) -> bytes:
        """The wire form: ``["crdtkit-hello", 1, node, role, nonce]`` in canonical CBOR.

        >>> Hello("a", "peer", bytes(32)).to_bytes()[:16]
        b'\\x85mcrdtkit-hello\\x01'

        Cost: O(size).
        """
        return codec.encode_plain([_HELLO_TAG, _HELLO_VERSION, self.node, self.role, self.nonce])

    @classmethod
    def from_bytes(cls, frame: bytes) -> Hello:
        """The hello in untrusted ``frame``; AuthError for anything else.

        >>> Hello.from_bytes(b"junk")
        Traceback (most recent call last):
        ...
        replication.auth.AuthError: bad hello: malformed CBOR: ...

        Cost: O(len(frame)); frames over :data:`HELLO_MAX` bytes are refused
        before parsing.
        """
        try:
            raw = expect_list(codec.decode_plain(frame, max_size=HELLO_MAX), "hello")
            if len(raw) != 5 or raw[0] != _HELLO_TAG or type(raw[0]) is not str:
                raise DecodeError("not a crdtkit hello")
            version = expect_uint(raw[1], "hello version")
            if version != _HELLO_VERSION:
                raise DecodeError(f"unknown hello version {version}")
            node = expect_replica(raw[2], "hello node")
            role, nonce = raw[3], raw[4]
            if type(role) is not str or role not in ROLES:
                raise DecodeError(f"hello role: expected one of {ROLES}, got {role!r:.40}")
            if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
                raise DecodeError(f"hello nonce: expected {NONCE_SIZE} bytes")
        except DecodeError as exc:
            raise AuthError(f"bad hello: {exc}") from exc
        return cls(node, role, nonce)


def _mac(key: bytes, *parts: bytes | memoryview) -> bytes:
    mac = hmac.new(key, digestmod=sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


class Handshake:
    """One side of the handshake that opens a connection.

    Send :meth:`hello`; give the peer's hello to :meth:`receive_hello` and send
    the proof it returns; give the peer's proof to :meth:`receive_proof`, which
    returns the :class:`Session` for the rest of the connection. ``initiator``
    is True on the side that connected. Every failure raises AuthError, after
    which the connection should be closed.

    >>> key = bytes(range(16))
    >>> a = Handshake(key, "a", "peer", bytes(32), initiator=True)
    >>> b = Handshake(key, "b", "client", bytes([1]) * 32, initiator=False)
    >>> proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
    >>> b.receive_proof(proof_a).peer
    Hello(node='a', role='peer', nonce=b'\\x00...')
    >>> a.receive_proof(proof_a)  # a's own proof, reflected
    Traceback (most recent call last):
    ...
    replication.auth.AuthError: bad proof from 'b': wrong key, or not made for this connection
    """

    __slots__ = ("_done", "_hello", "_initiator", "_key", "_local", "_peer", "_peer_hello")

    def __init__(self, key: bytes, node: str, role: str, nonce: bytes, *, initiator: bool) -> None:
        self._key = check_key(key)
        self._local = Hello(node, role, nonce)
        self._hello = self._local.to_bytes()
        self._initiator = bool(initiator)
        self._peer: Hello | None = None
        self._peer_hello = b""
        self._done = False

    @property
    def peer(self) -> Hello | None:
        """The peer's hello once :meth:`receive_hello` accepted it, else None.

        It is only a claim until :meth:`receive_proof` has returned.

        >>> h = Handshake(bytes(16), "a", "peer", bytes(32), initiator=True)
        >>> h.peer is None
        True

        Cost: O(1).
        """
        return self._peer

    def hello(self) -> bytes:
        """Our hello frame body, to send first.

        >>> h = Handshake(bytes(16), "a", "peer", bytes(32), initiator=True)
        >>> Hello.from_bytes(h.hello())
        Hello(node='a', role='peer', nonce=b'\\x00...')

        Cost: O(1).
        """
        return self._hello

    def _transcript(self) -> tuple[bytes, bytes]:
        if self._initiator:
            return self._hello, self._peer_hello
        return self._peer_hello, self._hello

    def receive_hello(self, frame: bytes) -> bytes:
        """Take the peer's hello; return our proof frame body, to send.

        Refuses (AuthError) a malformed hello, one that carries our own nonce
        or node id (a reflection), and a second hello.

        >>> h = Handshake(bytes(16), "a", "peer", bytes(32), initiator=True)
        >>> len(h.receive_hello(Hello("b", "peer", bytes([1]) * 32).to_bytes()))
        32
        >>> h.receive_hello(Hello("c", "peer", bytes([2]) * 32).to_bytes())
        Traceback (most recent call last):
        ...
        replication.auth.AuthError: a second hello in one handshake

        Cost: O(len(frame)): a parse and one HMAC-SHA256.
        """
        if self._peer is not None:
            raise AuthError("a second hello in one handshake")
        peer = Hello.from_bytes(frame)
        if hmac.compare_digest(peer.nonce, self._local.nonce):
            raise AuthError("bad hello: it carries our own nonce (a reflection)")
        if peer.node == self._local.node:
            raise AuthError(f"bad hello: it claims our own node id {peer.node!r:.40}")
        self._peer, self._peer_hello = peer, bytes(frame)
        letter = b"I" if self._initiator else b"R"
        return _mac(self._key, _PROOF, letter, *self._transcript())

    def receive_proof(self, frame: bytes) -> Session:
        """Check the peer's proof; return the session for the rest of the connection.

        AuthError if the proof does not verify (a wrong key, a proof from
        another connection, our own proof reflected), if no hello came
        first, or if the handshake has already finished.

        >>> key = bytes(range(16))
        >>> a = Handshake(key, "a", "peer", bytes(32), initiator=True)
        >>> b = Handshake(key, "b", "peer", bytes([1]) * 32, initiator=False)
        >>> proof_a, proof_b = a.receive_hello(b.hello()), b.receive_hello(a.hello())
        >>> a.receive_proof(proof_b).peer.node
        'b'
        >>> Handshake(key, "c", "peer", bytes(32), initiator=False).receive_proof(proof_a)
        Traceback (most recent call last):
        ...
        replication.auth.AuthError: a proof before the peer's hello

        Cost: O(1): one HMAC-SHA256 over the two hellos, two more for the
        session keys.
        """
        peer = self._peer
        if peer is None:
            raise AuthError("a proof before the peer's hello")
        if self._done:
            # A second session would reuse the keys and sequence numbers.
            raise AuthError("the handshake has already finished")
        letter = b"R" if self._initiator else b"I"
        expected = _mac(self._key, _PROOF, letter, *self._transcript())
        if not hmac.compare_digest(expected, frame):
            raise AuthError(
                f"bad proof from {peer.node!r:.40}: wrong key, or not made for this connection"
            )
        self._done = True
        first, second = self._transcript()
        return Session(self._key, first, second, initiator=self._initiator)


def _keyed(key: bytes) -> _MAC:
    """An HMAC-SHA256 keyed with ``key``, to copy for each frame: OpenSSL's
    own HMAC object, as ``hmac.new`` wraps it, where there is one."""
    try:
        from _hashlib import hmac_new

        return cast(_MAC, hmac_new(key, digestmod="sha256"))
    except (ImportError, ValueError):  # no OpenSSL, or no SHA-256 in it (FIPS)
        return hmac.new(key, digestmod=sha256)


class _MAC(Protocol):
    def copy(self) -> _MAC: ...

    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class Session:
    """An authenticated connection after the handshake: seals the frames we
    send and opens the ones we receive, in order, each exactly once.

    Normally made by :meth:`Handshake.receive_proof`; ``initiator_hello`` and
    ``responder_hello`` are the two hello frames as sent, and ``initiator``
    says which side we are. The keys for the two directions differ, so a
    frame sent back to its sender does not open.

    >>> key = bytes(range(16))
    >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
    >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
    >>> sa = Session(key, ha, hb, initiator=True)
    >>> sb = Session(key, ha, hb, initiator=False)
    >>> sa.open(sb.seal(b"to a")), sb.open(sa.seal(b"to b"))
    (b'to a', b'to b')
    >>> sa.open(sa.seal(b"reflected"))
    Traceback (most recent call last):
    ...
    replication.auth.AuthError: bad MAC
    """

    __slots__ = ("_recv_mac", "_recv_seq", "_send_mac", "_send_seq", "peer")

    peer: Hello
    """The authenticated peer's hello."""

    def __init__(
        self, key: bytes, initiator_hello: bytes, responder_hello: bytes, *, initiator: bool
    ) -> None:
        key = check_key(key)
        self.peer = Hello.from_bytes(responder_hello if initiator else initiator_hello)
        i_to_r = _mac(key, _SESSION, b"I>R", initiator_hello, responder_hello)
        r_to_i = _mac(key, _SESSION, b"R>I", initiator_hello, responder_hello)
        send, recv = (i_to_r, r_to_i) if initiator else (r_to_i, i_to_r)
        # Keyed once: each frame's MAC starts from a copy (a third cheaper
        # than keying HMAC again for every frame), of OpenSSL's own HMAC
        # object where there is one: hmac.HMAC's Python wrapper made a
        # 120-byte frame's MAC cost 3.3 us instead of 1.3.
        self._send_mac = _keyed(send)
        self._recv_mac = _keyed(recv)
        self._send_seq = 0
        self._recv_seq = 0

    def __repr__(self) -> str:
        return f"<Session with {self.peer.node!r} sealed={self.sealed} opened={self.opened}>"

    @property
    def sealed(self) -> int:
        """How many frames :meth:`seal` has made: the next one's sequence number.

        >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
        >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
        >>> s = Session(bytes(16), ha, hb, initiator=True)
        >>> _ = s.seal(b""); s.sealed
        1

        Cost: O(1).
        """
        return self._send_seq

    @property
    def opened(self) -> int:
        """How many frames :meth:`open` has accepted: the next one's sequence number.

        >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
        >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
        >>> sa = Session(bytes(16), ha, hb, initiator=True)
        >>> sb = Session(bytes(16), ha, hb, initiator=False)
        >>> _ = sb.open(sa.seal(b"x")); sb.opened
        1

        Cost: O(1).
        """
        return self._recv_seq

    def seal(self, body: bytes) -> bytes:
        """The frame that carries ``body``: sequence number, body, MAC.

        >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
        >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
        >>> frame = Session(bytes(16), ha, hb, initiator=True).seal(b"hi")
        >>> len(frame), frame[:10]
        (42, b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00hi')

        Cost: O(len(body)): one HMAC-SHA256 and one copy.
        """
        seq = self._send_seq
        if seq > _MAX_SEQ:
            raise AuthError("sequence numbers exhausted: open a new connection")
        head = seq.to_bytes(_SEQ, "big")
        mac = self._send_mac.copy()
        mac.update(head)
        mac.update(body)
        tag = mac.digest()
        self._send_seq = seq + 1
        return b"".join((head, body, tag))

    def seal_frame(self, body: bytes) -> bytes:
        """:meth:`seal`'s frame behind its length (4 bytes, big-endian), as
        a stream carries it, made in one piece: a stream's every frame cost
        a second copy and a second small object otherwise.

        >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
        >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
        >>> sa = Session(bytes(16), ha, hb, initiator=True)
        >>> sb = Session(bytes(16), ha, hb, initiator=False)
        >>> framed = sa.seal_frame(b"hi")
        >>> framed[:4], sb.open(framed[4:])
        (b'\\x00\\x00\\x00*', b'hi')

        Cost: as :meth:`seal`.
        """
        seq = self._send_seq
        if seq > _MAX_SEQ:
            raise AuthError("sequence numbers exhausted: open a new connection")
        head = (len(body) + OVERHEAD).to_bytes(4, "big") + seq.to_bytes(_SEQ, "big")
        mac = self._send_mac.copy()
        mac.update(head[4:])
        mac.update(body)
        tag = mac.digest()
        self._send_seq = seq + 1
        return b"".join((head, body, tag))

    def open(self, frame: bytes | bytearray | memoryview) -> bytes:
        """The body of ``frame`` if it verifies and is the next in sequence.

        AuthError otherwise (too short, a bad MAC, a replayed, reordered or
        reflected frame), and then nothing changes: the genuine next frame
        still opens.

        >>> ha = Hello("a", "peer", bytes(32)).to_bytes()
        >>> hb = Hello("b", "peer", bytes([1]) * 32).to_bytes()
        >>> sa = Session(bytes(16), ha, hb, initiator=True)
        >>> sb = Session(bytes(16), ha, hb, initiator=False)
        >>> first, second = sa.seal(b"1"), sa.seal(b"2")
        >>> sb.open(second)
        Traceback (most recent call last):
        ...
        replication.auth.AuthError: frame out of sequence: expected 0, got 1
        >>> sb.open(first), sb.open(second)
        (b'1', b'2')

        Cost: O(len(frame)): one HMAC-SHA256 and one copy of the body.
        """
        if type(frame) is not bytes:  # (a frame as read is bytes: slicing it is cheapest)
            frame = bytes(memoryview(frame).cast("B"))
        size = len(frame)
        if size < OVERHEAD:
            raise AuthError(f"frame too short: {size} bytes, need at least {OVERHEAD}")
        mac = self._recv_mac.copy()
        if size <= 4096:  # a small frame's copy costs less than a view
            mac.update(frame[:-_TAG])
        else:
            with memoryview(frame) as view:  # (the MAC reads the frame in place)
                mac.update(view[:-_TAG])
        if not hmac.compare_digest(mac.digest(), frame[-_TAG:]):
            raise AuthError("bad MAC")
        seq = int.from_bytes(frame[:_SEQ], "big")
        if seq != self._recv_seq:
            raise AuthError(f"frame out of sequence: expected {self._recv_seq}, got {seq}")
        self._recv_seq = seq + 1
        return frame[_SEQ:-_TAG]
