"""Frames authenticated per sender, for networks with no session between peers.

Through a message broker (NATS) there is no connection between two nodes to
run a handshake on, so each frame carries its own proof, as an IPsec ESP
packet or a WireGuard data message does: an :class:`Envelope` seals a frame
as

    version (1) | len(sender) (1) | sender | len(receiver) (1) | receiver
    | boot (16) | seq (8, big-endian) | body | tag (32)

where ``tag = HMAC-SHA256(k, everything before it)`` and ``k =
HMAC-SHA256(cluster key, b"crdtkit-envelope-v1" + cluster name)``, so a frame
of one cluster does not verify in another that shares its key. ``boot`` is
the sender's boot nonce, fresh at every start (8 bytes of wall-clock
nanoseconds, then 8 random bytes from ``os.urandom``), and ``seq`` counts the
frames it sealed since, from 1.

Opening checks, in order, and refuses with :class:`EnvelopeRefused` (its
``reason`` one of :data:`REASONS`), changing nothing:

1. ``oversize``: longer than the limit; checked before anything is parsed;
2. ``malformed``: too short, an unknown version, names that are not UTF-8;
3. ``forged``: the tag does not verify (any byte changed, another key; a
   sender name rewritten on a genuine frame lands here too);
4. ``misaddressed``: sealed for another receiver (a frame copied to us);
5. ``impersonating``: naming this node as its sender (our own frames
   reflected back, or a key holder using our name);
6. ``replayed``: a ``(sender, boot, seq)`` already taken in, or too old for
   the sliding window (:data:`WINDOW` sequence numbers, a bitmap as in
   RFC 4303 section 3.4.3), or a boot older than every boot kept for that
   sender once :data:`MAX_BOOTS` are kept.

A sender's restart is a new boot and is accepted; the frames of its
previous boots still in flight are too, within their windows. State is
bounded: at most ``max_senders`` senders (the least recently heard is
forgotten first) times :data:`MAX_BOOTS` boots, each a window of
``WINDOW`` bits.

What it does not do: the key is the cluster's, so any holder can seal a
frame under any sender name (as with ``replication.auth``); the node still
refuses a frame whose contents name another sender than the envelope. Frames
are not encrypted (use the broker's TLS). Order is not restored: frames
within the window are taken in any order.

>>> key = bytes(range(32))
>>> a = Envelope("a", key, cluster="demo")
>>> b = Envelope("b", key, cluster="demo")
>>> sealed = a.seal("b", b"gossip")
>>> b.open(sealed)
('a', b'gossip')
>>> b.open(sealed)
Traceback (most recent call last):
...
replication.envelope.EnvelopeRefused: replayed: frame 1 of 'a' was taken in already

Cost: sealing or opening is one HMAC-SHA256 over the frame (about 1 ms per
MiB) plus O(1); a frame is :data:`OVERHEAD` bytes plus both names longer.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from hashlib import sha256

from replication.auth import check_key

__all__ = [
    "MAX_BOOTS",
    "MAX_ID",
    "MAX_OVERHEAD",
    "OVERHEAD",
    "REASONS",
    "WINDOW",
    "Envelope",
    "EnvelopeRefused",
]

VERSION = 1
#: Sequence numbers a receiver remembers below the highest it took in.
WINDOW = 1024
#: Boots remembered per sender (the current one and a few before it).
MAX_BOOTS = 4
#: A node id is at most this many bytes of UTF-8 in an envelope.
MAX_ID = 255
#: Fixed bytes of an envelope beyond its body and the two names.
OVERHEAD = 1 + 1 + 1 + 16 + 8 + 32
#: The most an envelope adds to a body, whatever the names.
MAX_OVERHEAD = OVERHEAD + 2 * MAX_ID
#: Why a frame was refused, as counted by a transport.
REASONS = ("oversize", "malformed", "forged", "misaddressed", "impersonating", "replayed")

_LABEL = b"crdtkit-envelope-v1"
_BOOT = 16
_SEQ = 8
_TAG = 32
_MAX_SEQ = 2**64 - 1
_MASK = (1 << WINDOW) - 1


class EnvelopeRefused(ValueError):
    """A frame an :class:`Envelope` refused; ``reason`` is one of
    :data:`REASONS`. Nothing of the frame was used or remembered.

    >>> EnvelopeRefused("forged", "bad tag").reason
    'forged'
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _name(node_id: str, what: str) -> bytes:
    if type(node_id) is not str or not node_id:
        raise ValueError(f"a {what} is a non-empty str, not {node_id!r}")
    raw = node_id.encode("utf-8")
    if len(raw) > MAX_ID:
        raise ValueError(f"a {what} is at most {MAX_ID} bytes of UTF-8, got {len(raw)}")
    return raw


def new_boot() -> bytes:
    """A fresh boot nonce: wall-clock nanoseconds (so a later boot of a node
    sorts after an earlier one) and 8 unpredictable bytes (so two boots in
    the same nanosecond differ).

    >>> a, b = new_boot(), new_boot()
    >>> len(a), a != b
    (16, True)

    Cost: O(1).
    """
    return time.time_ns().to_bytes(8, "big") + os.urandom(8)


class _Window:
    """Sequence numbers taken in from one boot: the highest, and a bitmap of
    the :data:`WINDOW` below it (bit ``i`` set: ``highest - i`` taken)."""

    __slots__ = ("bits", "highest")

    def __init__(self) -> None:
        self.highest = 0
        self.bits = 0

    def fresh(self, seq: int) -> bool:
        if seq > self.highest:
            return True
        offset = self.highest - seq
        return offset < WINDOW and not (self.bits >> offset) & 1

    def take(self, seq: int) -> None:
        if seq > self.highest:
            self.bits = ((self.bits << (seq - self.highest)) | 1) & _MASK
            self.highest = seq
        else:
            self.bits |= 1 << (self.highest - seq)


class Envelope:
    """Seals this node's frames and opens the frames sent to it (see the
    module docstring). ``boot`` defaults to :func:`new_boot`; give one only
    to reproduce a frame (a sender that reuses a boot is refused as a
    replay by every receiver that saw it).

    >>> key = bytes(32)
    >>> Envelope("a", key, cluster="c").open(Envelope("b", key, cluster="c").seal("a", b"x"))
    ('b', b'x')

    Cost: see the module docstring.
    """

    __slots__ = ("_boot", "_key", "_max_senders", "_me", "_me_raw", "_senders", "_seq")

    def __init__(
        self,
        node_id: str,
        key: bytes,
        *,
        cluster: str,
        boot: bytes | None = None,
        max_senders: int = 1024,
    ) -> None:
        self._me_raw = _name(node_id, "node id")
        self._me = node_id
        if type(cluster) is not str or not cluster:
            raise ValueError(f"a cluster name is a non-empty str, not {cluster!r}")
        self._key = hmac.new(check_key(key), _LABEL + cluster.encode(), sha256).digest()
        self._boot = new_boot() if boot is None else boot
        if len(self._boot) != _BOOT:
            raise ValueError(f"a boot nonce is {_BOOT} bytes, got {len(self._boot)}")
        if max_senders < 1:
            raise ValueError(f"max_senders is at least 1, got {max_senders}")
        self._max_senders = max_senders
        self._seq = 0
        # sender -> boot -> window; both in least-recently-used order.
        self._senders: OrderedDict[bytes, OrderedDict[bytes, _Window]] = OrderedDict()

    @property
    def boot(self) -> bytes:
        """This node's boot nonce.

        >>> Envelope("a", bytes(16), cluster="c", boot=bytes(16)).boot == bytes(16)
        True

        Cost: O(1).
        """
        return self._boot

    @property
    def senders(self) -> int:
        """Senders whose windows are kept (at most ``max_senders``).

        >>> Envelope("a", bytes(16), cluster="c").senders
        0

        Cost: O(1).
        """
        return len(self._senders)

    def overhead(self, receiver: str) -> int:
        """How many bytes sealing for ``receiver`` adds to a body.

        >>> Envelope("a", bytes(16), cluster="c").overhead("bb")
        62

        Cost: O(len(receiver)).
        """
        return OVERHEAD + len(self._me_raw) + len(_name(receiver, "receiver"))

    def seal(self, receiver: str, body: bytes) -> bytes:
        """The envelope of ``body`` for ``receiver``, with the next sequence
        number. ValueError for a receiver that is not a usable node id.

        >>> a = Envelope("a", bytes(16), cluster="c")
        >>> len(a.seal("b", b"body")) == a.overhead("b") + 4
        True

        Cost: one HMAC over the frame.
        """
        to = _name(receiver, "receiver")
        if self._seq >= _MAX_SEQ:
            raise OverflowError("this boot sealed 2**64 - 1 frames: restart for a new boot")
        self._seq += 1
        sealed = b"".join((
            bytes((VERSION, len(self._me_raw))), self._me_raw, bytes((len(to),)), to,
            self._boot, self._seq.to_bytes(_SEQ, "big"), body,
        ))
        # hmac.digest: OpenSSL's one-shot HMAC, several times faster than an
        # hmac.new object for the small frames gossip sends most.
        return sealed + hmac.digest(self._key, sealed, "sha256")

    def open(self, frame: bytes, max_size: int | None = None) -> tuple[str, bytes]:
        """``(sender, body)`` of a frame sealed for this node, remembered so
        that it is taken in once; :class:`EnvelopeRefused` otherwise, with
        nothing remembered. ``max_size`` bounds the whole frame and is
        checked first.

        >>> a, b = Envelope("a", bytes(16), cluster="c"), Envelope("b", bytes(16), cluster="c")
        >>> b.open(a.seal("b", b"x"))
        ('a', b'x')
        >>> b.open(a.seal("b", bytes(100)), max_size=64)
        Traceback (most recent call last):
        ...
        replication.envelope.EnvelopeRefused: oversize: 161 bytes, over the limit of 64

        Cost: one HMAC over the frame, when it gets that far.
        """
        size = len(frame)
        if max_size is not None and size > max_size:
            raise EnvelopeRefused("oversize", f"{size} bytes, over the limit of {max_size}")
        if size < OVERHEAD + 2 or frame[0] != VERSION:
            raise EnvelopeRefused("malformed", "not an envelope of version 1")
        sender_end = 2 + frame[1]
        if sender_end >= size:
            raise EnvelopeRefused("malformed", "cut short in the sender's name")
        receiver_end = sender_end + 1 + frame[sender_end]
        body_start = receiver_end + _BOOT + _SEQ
        if body_start + _TAG > size or frame[1] == 0 or frame[sender_end] == 0:
            raise EnvelopeRefused("malformed", "cut short, or an empty name")
        view = memoryview(frame)
        tag = hmac.digest(self._key, view[:-_TAG], "sha256")
        if not hmac.compare_digest(tag, view[-_TAG:]):
            raise EnvelopeRefused("forged", "the tag does not verify")
        sender_raw = frame[2:sender_end]
        if frame[sender_end + 1 : receiver_end] != self._me_raw:
            raise EnvelopeRefused("misaddressed", "sealed for another receiver")
        if sender_raw == self._me_raw:
            raise EnvelopeRefused("impersonating", "a frame naming this node as its sender")
        try:
            sender = sender_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeRefused("malformed", "a sender name that is not UTF-8") from None
        boot = frame[receiver_end : receiver_end + _BOOT]
        seq = int.from_bytes(frame[receiver_end + _BOOT : body_start], "big")
        if seq == 0:  # never sealed: the first frame of a boot is 1
            raise EnvelopeRefused("replayed", f"frame 0 of {sender!r} was never sealed")
        window = self._window(sender_raw, boot)
        if window is None or not window.fresh(seq):
            raise EnvelopeRefused("replayed", f"frame {seq} of {sender!r} was taken in already")
        window.take(seq)
        return sender, frame[body_start:-_TAG]

    def _window(self, sender: bytes, boot: bytes) -> _Window | None:
        """The window for ``(sender, boot)``, made if the boot is new and not
        older than every boot kept (None: a stale boot, refused)."""
        senders = self._senders
        boots = senders.get(sender)
        if boots is None:
            if len(senders) >= self._max_senders:
                senders.popitem(last=False)
            boots = senders[sender] = OrderedDict()
        else:
            senders.move_to_end(sender)
        window = boots.get(boot)
        if window is not None:
            return window
        if len(boots) >= MAX_BOOTS:
            oldest = min(boots)  # boots sort by their wall-clock prefix
            if boot < oldest:
                return None
            del boots[oldest]
        window = boots[boot] = _Window()
        return window
