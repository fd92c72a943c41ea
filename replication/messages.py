"""The gossip protocol's messages and their wire form.

Every message is a frozen dataclass; on the wire it is the canonical CBOR array
``[kind, version, sender, ...fields]`` written by ``crdts.codec.encode_plain``,
with each CRDT state nested as its own ``crdts.codec`` encoding (bytes), so the
hostile-input decoder checks every state. :func:`parse` turns untrusted bytes
into a message or raises ``DecodeError``; it validates the whole frame before
returning, so a caller never acts on half a message.

The messages (see ``replication.replicator`` for the protocol):

- :class:`Push`: part of a delta interval ``(start, end]`` of the sender's log
  (``start`` -1: a catch-up, the whole log as the keys it changed), or, with
  no entries and an empty interval, the opening of a round;
  each entry carries its operations as per-key dot ranges
  (``replication.dotranges``); a frame whose ranges its sender cannot back
  (a catch-up entry that is not a whole key, operations of the sender beyond
  the sender's own clock, a clock with gaps) does not parse;
- :class:`Ack`: "I have your log up to ``position``" (-1: nothing of it).

Cost: encoding and parsing are O(frame size) plus the codec's cost per state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from crdts import codec
from crdts.base import CRDT, expect_list, expect_replica, expect_uint
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from replication.dotranges import DotRanges

__all__ = [
    "MAX_FRAME",
    "Ack",
    "Entry",
    "Message",
    "Push",
    "encode",
    "encode_entries",
    "encode_keyspace",
    "parse",
    "parse_entries",
    "sent_by",
]

#: Frames above this size are refused before parsing.
MAX_FRAME = 16 * 1024 * 1024
#: 2: entries carry per-key dot ranges (``DotRanges``), not dot sets.
VERSION = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's state or delta, with the operations it carries: for each
    writer, a stretch of its operations on this key (``lo`` 0 for a whole
    key's state)."""

    key: str
    state: CRDT
    ops: DotRanges


@dataclass(frozen=True, slots=True)
class Push:
    """Part ``part`` of ``parts`` of the sender's log interval ``(start, end]``,
    with the sender's prefix clock (``clock``: for each writer, every one of
    its operations up to that counter is held; a version vector, no gaps),
    so that the answer leaves out what the sender already has. ``reply``: 0, none
    wanted; 1, answer with your push; 2, answer with your push and ask for
    mine (a round opens with an empty push, so both directions are filtered
    by a fresh clock). ``to`` is the receiver's replica id the push was
    computed for: it leaves out what that incarnation held, which a restarted
    one may have lost, so another incarnation must not take it. ``ack`` is an
    :class:`Ack` riding along: the sender holds the receiver's log up to it."""

    sender: str
    to: str
    start: int
    end: int
    part: int
    parts: int
    reply: int
    clock: CausalContext
    entries: tuple[Entry, ...]
    ack: int = -1


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver holds everything of the sender's log up to ``position``."""

    sender: str
    position: int


Message: TypeAlias = Push | Ack


def sent_by(message: Message, node: str) -> bool:
    """Whether ``message`` names node ``node`` (or one of its incarnations,
    ``node~N``) as its sender: a frame from ``node`` that names another is
    refused.

    >>> sent_by(Ack("a~3", 0), "a"), sent_by(Ack("ab", 0), "a")
    (True, False)

    Cost: O(len(node)).
    """
    claimed = message.sender
    return claimed == node or claimed.startswith(node + "~")


def encode_keyspace(states: Iterable[tuple[str, CRDT]]) -> bytes:
    """``[[key, state bytes], ...]`` as canonical CBOR, for ``(key, state)``
    pairs in key order: a keyspace's identity, equal bytes for equal states.

    >>> encode_keyspace([]).hex()
    '80'

    Cost: O(total state size).
    """
    return codec.encode_plain([[key, codec.encode(state)] for key, state in states])


def encode_entries(entries: Iterable[Entry]) -> list[object]:
    """``[[key, state bytes, dot ranges], ...]``: how entries travel and are saved."""
    return [[e.key, codec.encode(e.state), e.ops.to_payload()] for e in entries]


def encode(message: Message) -> bytes:
    """The frame for ``message``.

    >>> frame = encode(Ack("a", 7)); parse(frame)
    Ack(sender='a', position=7)

    Cost: O(size of the message).
    """
    m = message
    fields: list[object]
    if isinstance(m, Push):
        fields = ["push", VERSION, m.sender, m.to, m.start, m.end, m.part, m.parts, m.reply]
        fields += [m.clock.to_payload(), encode_entries(m.entries), m.ack]
    else:
        fields = ["ack", VERSION, m.sender, m.position]
    return codec.encode_plain(fields)


def _key(x: object) -> str:
    if type(x) is not str:
        raise DecodeError("a key is a str")
    return x


def parse_entries(raw: object) -> tuple[Entry, ...]:
    """Inverse of :func:`encode_entries` for untrusted input; DecodeError otherwise."""
    out = []
    seen: set[str] = set()
    for item in expect_list(raw, "entries"):
        fields = expect_list(item, "entry")
        if len(fields) != 3 or type(fields[1]) is not bytes:
            raise DecodeError("entry: expected [key, state, ops]")
        key = _key(fields[0])
        if key in seen:
            raise DecodeError(f"entry: key {key!r:.40} twice in one message")
        seen.add(key)
        state = codec.decode(fields[1])
        out.append(Entry(key, state, DotRanges.from_payload(fields[2], "entry ops")))
    return tuple(out)


def _check_claims(
    sender: str, start: int, clock: CausalContext, entries: tuple[Entry, ...]
) -> None:
    # Ranges the sender cannot back make the whole frame malformed: a prefix
    # clock has no gaps; a catch-up carries whole keys; and no entry holds
    # operations of the sender that its own clock says it never issued.
    if clock.cloud:
        raise DecodeError("push clock: a prefix clock has no gaps")
    own = clock.vv.get(sender, 0)
    for entry in entries:
        if start == -1 and not entry.ops.is_whole():
            raise DecodeError(f"push: catch-up entry {entry.key!r:.40} is not a whole key")
        if entry.ops.top(sender) > own:
            raise DecodeError(
                f"push: entry {entry.key!r:.40} claims operations of its sender beyond its clock"
            )


_ARITY = {"push": 12, "ack": 4}


def parse(frame: bytes, *, max_size: int = MAX_FRAME) -> Message:
    """The message in ``frame``; DecodeError for anything else.

    >>> parse(b"junk")
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(frame)); frames over ``max_size`` are refused before parsing.
    """
    raw = expect_list(codec.decode_plain(frame, max_size=max_size), "frame")
    if len(raw) < 3 or type(raw[0]) is not str or raw[0] not in _ARITY:
        raise DecodeError("frame: unknown message kind")
    kind = raw[0]
    if raw[1] != VERSION or type(raw[1]) is not int:
        raise DecodeError(f"{kind}: unknown version {raw[1]!r:.20}")
    if len(raw) != _ARITY[kind]:
        raise DecodeError(f"{kind}: expected {_ARITY[kind]} fields")
    sender = expect_replica(raw[2], f"{kind} sender")
    f = raw[3:]
    if kind == "push":
        to = expect_replica(f[0], "push to")
        start, end = expect_uint(f[1], "push start", -1), expect_uint(f[2], "push end")
        part, parts = expect_uint(f[3], "push part"), expect_uint(f[4], "push parts", 1)
        if start > end or part >= parts or type(f[5]) is not int or f[5] not in (0, 1, 2):
            raise DecodeError("push: inconsistent interval or parts")
        clock = CausalContext.from_payload(f[6], "push clock")
        entries, ack = parse_entries(f[7]), expect_uint(f[8], "push ack", -1)
        _check_claims(sender, start, clock, entries)
        return Push(sender, to, start, end, part, parts, f[5], clock, entries, ack)
    return Ack(sender, expect_uint(f[0], "ack position", -1))
