"""The gossip protocol's messages and their wire form.

Every message is a frozen dataclass; on the wire it is the canonical CBOR array
``[kind, version, sender, ...fields]`` written by ``crdts.codec.encode_plain``,
with each CRDT state nested in it as CBOR structure: its envelope
``[type-tag, format-version, payload]``, the very bytes of its
``crdts.codec.encode``. :func:`parse` turns untrusted bytes into a message or
raises ``DecodeError``; it decodes the frame once (the codec's size cap, cost
bounds and guards, ``decode_plain``), checks every state's invariants on the
plain data (``codec.from_plain``) and validates the whole frame before
returning, so a caller never acts on half a message. The canonical form of a
frame's bytes is not checked (docs/frames.md): nothing keeps or hashes them,
and states are encoded afresh wherever bytes are kept or compared (the store,
snapshot files, ``encode_keyspace``).

The messages (see ``replication.replicator`` for the protocol):

- :class:`Push`: part of a delta interval ``(start, end]`` of the sender's log
  (``start`` -1: a catch-up, the whole log as the keys it changed), or, with
  no entries and an empty interval, the opening of a round;
- :class:`Push`'s entries carry their operations as per-key dot ranges
  (``replication.dotranges``); a frame whose ranges its sender cannot back
  (a catch-up entry that is not a whole key, operations of the sender beyond
  the sender's own clock, a clock with gaps) does not parse;
- :class:`Push`'s tally: for retired replica ids being pruned
  (docs/pruning.md), how many of their operations the sender holds and a
  digest of which (at most ``MAX_TALLY`` ids);
- :class:`Ack`: "I have your log up to ``position``" (-1: nothing of it);
- :class:`Piece`: one piece of a single entry too large for any frame: the
  entry's encoding cut in ``count`` pieces, which together make part
  ``part`` of the interval (the receiver reassembles them, and merges the
  entry only once it is whole);
- :class:`Read` and :class:`ReadResult`: a read at a consistency level
  (docs/consistency.md) asks a replica for its whole state under one key,
  and the answer carries it (or says it holds nothing there, or that the
  state is over its ``max_state``), for the asker to merge; a state too
  large for one frame travels just before the answer as a push in pieces
  that moves no log position (interval ``(-1, -1]``), and the answer
  carries the key's ranges, which the asker then checks it holds.

Frames are bounded in bytes: :func:`encode_interval` packs an interval's
entries into push frames of at most ``max_frame`` bytes, and cuts an entry
larger than that into pieces. ``MAX_FRAME`` is the most any replicator may
be configured to send; ``DEFAULT_FRAME`` what it sends unless told otherwise.

Wire form (``VERSION`` 5), fields after ``[kind, version, sender]``:

- push: ``to, start, end, part, parts, reply, clock, entries, ack, tally``;
- piece: ``to, start, end, part, parts, reply, clock, ack, index, count, chunk``;
- ack: ``position``; read: ``request, key``;
- result: ``to, request, key, status, entries or null``;

where a clock is the flat ``[id, counter, id, counter, ...]`` in id order
(a prefix clock has no dot cloud), an entry is ``[key, envelope, ranges]``
and a chunk is bytes of an entry's encoding. A round opener is a push with
no entries over an empty interval ``(h, h]``: ``h`` is how far the sender's
log holds nothing beyond its clock (its head while it holds a prefix of
every writer, else -1), which a receiver whose clock covers the sender's
takes as its position in that log. Version 4 wrote there the position the
receiver had acknowledged, which nothing read; version 4 frames are refused.
Version 3 nested each state as
bytes (CBOR in CBOR, decoded and re-encoded at every layer) and wrote the
clock as ``[id, counter, [cloud...], ...]``, an empty array per id; readers
refuse it.

Cost: encoding and parsing are O(frame size) plus each type's checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from operator import itemgetter
from typing import TypeAlias

from crdts import codec
from crdts.base import CRDT, expect_increasing, expect_list, expect_replica, expect_uint
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError
from replication.dotranges import _NO_MARKERS as NO_MARKERS
from replication.dotranges import DotRanges
from replication.dotranges import _spans_at_c_speed as fast_spans
from replication.dotranges import _whole_spans_at_c_speed as whole_spans

__all__ = [
    "DEFAULT_FRAME",
    "HELD",
    "MAX_FRAME",
    "MAX_TALLY",
    "NOTHING",
    "PUSHED",
    "TOO_LARGE",
    "Ack",
    "Entry",
    "EntryTooLarge",
    "Message",
    "Piece",
    "Push",
    "Read",
    "ReadResult",
    "Reply",
    "check_claims",
    "clock_payload",
    "encode",
    "encode_entries",
    "encode_entry",
    "encode_interval",
    "encode_keyspace",
    "entry_item",
    "parse",
    "parse_clock",
    "parse_entries",
    "parse_frame_entries",
    "sent_by",
]

#: The largest frame a replicator may be configured to send; frames above it
#: are refused before parsing.
MAX_FRAME = 16 * 1024 * 1024
#: The largest frame a replicator sends unless configured otherwise.
DEFAULT_FRAME = 1024 * 1024
#: The least ``max_frame`` a replicator accepts: room for a frame's fields and
#: a clock, and pieces large enough that an entry is not cut into thousands.
MIN_FRAME = 4096
#: 2: entries carry per-key dot ranges (``DotRanges``), not dot sets.
#: 3: a push carries a tally of retired ids (its thirteenth field), and
#: ranges may carry pruning markers (docs/pruning.md).
#: 4: states nested as CBOR structure, not bytes; clocks flat ``[id, n, ...]``.
VERSION = 5
#: The most retired ids a push's tally may name.
MAX_TALLY = 256


class EntryTooLarge(DecodeError):
    """An entry whose state is over the receiver's maximum: refused whole."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's state or delta, with the operations it carries: for each
    writer, a stretch of its operations on this key (``lo`` 0 for a whole
    key's state)."""

    key: str
    state: CRDT
    dots: DotRanges


# Setters of Entry's slots that bypass its frozen __setattr__, for the
# parser (a frame builds one Entry per entry).
set_key, set_state, set_dots = (vars(Entry)[name].__set__ for name in ("key", "state", "dots"))


class Reply(IntEnum):
    """What a :class:`Push` asks of its receiver. On the wire it is the int
    (0, 1 or 2), as it always was.

    A round opens with ``PUSH_AND_ASK`` (an empty push: the opener's clock
    alone); the receiver answers with its push asking ``PUSH``; the opener
    answers that with its own, asking ``NOTHING``, so both directions are
    filtered by a fresh clock.

    >>> Reply.PUSH_AND_ASK.answer, Reply.PUSH.answer, int(Reply.PUSH)
    (<Reply.PUSH: 1>, <Reply.NOTHING: 0>, 1)
    """

    NOTHING = 0  # no answer wanted (an ack will do)
    PUSH = 1  # answer with your push
    PUSH_AND_ASK = 2  # answer with your push, and ask for mine

    @property
    def answer(self) -> Reply:
        """What the push that answers this one asks for. Cost: O(1)."""
        return Reply(max(self - 1, 0))


@dataclass(frozen=True, slots=True)
class Push:
    """Part ``part`` of ``parts`` of the sender's log interval ``(start, end]``,
    with the sender's prefix clock (``context``: for each writer, every one of
    its operations up to that counter is held; a version vector, no gaps),
    so that the answer leaves out what the sender already has. ``reply``: what
    the sender asks of the receiver (:class:`Reply`; a round opens with an
    empty push asking ``PUSH_AND_ASK``, whose empty interval ``(h, h]``
    says the sender's log up to ``h`` holds nothing beyond ``context``, -1
    for no such claim). ``to`` is the receiver's replica id the push was
    computed for: it leaves out what that incarnation held, which a restarted
    one may have lost, so another incarnation must not take it. ``ack`` is an
    :class:`Ack` riding along: the sender holds the receiver's log up to it.
    ``tally``: for some replica ids that can never issue again (those the
    opener of the round wants to prune, docs/pruning.md), ``(id, count,
    digest)``: how many of that id's operations the sender holds and a
    digest of which, so the opener can tell when every member holds the
    same ones."""

    sender: str
    to: str
    start: int
    end: int
    part: int
    parts: int
    reply: Reply
    context: CausalContext
    entries: tuple[Entry, ...]
    ack: int = -1
    tally: tuple[tuple[str, int, int], ...] = ()


# Push's slot setters, in field order: the parser builds a push without the
# frozen dataclass's __init__ (object.__setattr__ per field: 1.6 us for the
# eleven, as much as the rest of parsing a round opener's fields).
(_SENDER, _TO, _START, _END, _PART, _PARTS, _REPLY, _CONTEXT, _ENTRIES, _ACK, _TALLY) = (
    vars(Push)[f].__set__
    for f in ("sender", "to", "start", "end", "part", "parts", "reply", "context", "entries",
              "ack", "tally")
)


def _new_push(  # noqa: PLR0917  (Push's own fields, in order)
    sender: str, to: str, start: int, end: int, part: int, parts: int, reply: Reply,
    context: CausalContext, entries: tuple[Entry, ...], ack: int,
    tally: tuple[tuple[str, int, int], ...],
) -> Push:
    # Push(...) for checked fields (see above).
    push = object.__new__(Push)
    _SENDER(push, sender)
    _TO(push, to)
    _START(push, start)
    _END(push, end)
    _PART(push, part)
    _PARTS(push, parts)
    _REPLY(push, reply)
    _CONTEXT(push, context)
    _ENTRIES(push, entries)
    _ACK(push, ack)
    _TALLY(push, tally)
    return push


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver holds everything of the sender's log up to ``position``."""

    sender: str
    position: int


@dataclass(frozen=True, slots=True)
class Piece:
    """Piece ``index`` of ``count`` of one entry's encoding (``chunk``), which
    is part ``part`` of ``parts`` of the sender's interval ``(start, end]``;
    the other fields are those of the :class:`Push` the entry would have
    travelled in, so the whole entry is handled as that push."""

    sender: str
    to: str
    start: int
    end: int
    part: int
    parts: int
    reply: Reply
    context: CausalContext
    ack: int
    index: int
    count: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Read:
    """Asks the receiver for its whole state under ``key``; ``request``, a
    number of the asker's, comes back in the answer."""

    sender: str
    request: int
    key: str


#: What a :class:`ReadResult` says of the key: nothing held under it, its
#: state (in ``entry``), a state over the sender's ``max_state``, or a
#: state too large for one frame, pushed in pieces just before (its ranges
#: in ``ranges``).
NOTHING, HELD, TOO_LARGE, PUSHED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class ReadResult:
    """The answer to a :class:`Read` of ``key`` by replica ``to`` (the
    asker's incarnation: another one's answers are of no use to it):
    ``status`` :data:`NOTHING`, :data:`HELD` with the key's whole state and
    ranges in ``entry``, :data:`TOO_LARGE`, or :data:`PUSHED` with the
    key's whole ranges in ``ranges`` (the state went ahead in pieces)."""

    sender: str
    to: str
    request: int
    key: str
    status: int
    entry: Entry | None = None
    ranges: DotRanges | None = None


Message: TypeAlias = Push | Ack | Piece | Read | ReadResult


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
    """``[[key, state bytes, dot ranges], ...]``: how entries are saved
    (snapshot and checkpoint files); frames nest the states instead."""
    return [[e.key, codec.encode(e.state), e.dots.to_payload()] for e in entries]


def _frame_entries(entries: Iterable[Entry]) -> list[object]:
    # How entries travel: [[key, envelope, dot ranges], ...].
    return [[e.key, codec.to_plain(e.state), e.dots.to_payload()] for e in entries]


def clock_payload(clock: CausalContext) -> list[object]:
    """A prefix clock as it travels: ``[id, counter, ...]`` in id order;
    ValueError for a context with a dot cloud (a prefix clock has no gaps).

    >>> c = CausalContext.from_dots([("b", 1), ("a", 1), ("a", 2)])
    >>> clock_payload(c)
    ['a', 2, 'b', 1]

    Cost: O(n log n) for n ids.
    """
    if clock.cloud:
        raise ValueError("a prefix clock has no gaps")
    out: list[object] = []
    for replica in sorted(clock.vv):
        out += (replica, clock.vv[replica])
    return out


def parse_clock(raw: object, what: str) -> CausalContext:
    """Inverse of :func:`clock_payload` for untrusted input: ids non-empty
    strs in strictly increasing order, counters ints >= 1; DecodeError
    otherwise.

    >>> parse_clock(["a", 2, "b", 1], "clock").vv
    {'a': 2, 'b': 1}

    Cost: O(n), one tight pass.
    """
    flat = expect_list(raw, what)
    vv: dict[str, int] = {}
    prev = ""  # below every non-empty str
    it = iter(flat)
    for replica, count in zip(it, it, strict=False):  # one tight pass: every frame has one
        if not (type(replica) is str and replica > prev and type(count) is int and count >= 1):
            raise DecodeError(
                f"{what}: expected non-empty replica ids in increasing order and counters >= 1"
            )
        vv[replica] = count
        prev = replica
    if len(flat) % 2:
        raise DecodeError(f"{what}: expected replica/counter pairs")
    out = object.__new__(CausalContext)  # every frame has a clock: no __init__
    out.vv, out.cloud = vv, {}
    return out


def entry_item(key: str, state: bytes, dots: DotRanges) -> bytes:
    """One entry as it travels, from its state's :func:`crdts.codec.encode`
    (which a sender has at hand to check its size): the canonical CBOR of
    ``[key, envelope, ranges]`` (see :func:`encode_entry`). Cost: O(size)."""
    return b"\x83" + codec.encode_plain(key) + state + codec.encode_plain(dots.to_payload())


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
        fields += [clock_payload(m.context), _frame_entries(m.entries), m.ack, _tally(m.tally)]
    elif isinstance(m, Piece):
        fields = ["piece", VERSION, m.sender, m.to, m.start, m.end, m.part, m.parts, m.reply]
        fields += [clock_payload(m.context), m.ack, m.index, m.count, m.chunk]
    elif isinstance(m, Read):
        fields = ["read", VERSION, m.sender, m.request, m.key]
    elif isinstance(m, ReadResult):
        held: object = None
        if m.entry is not None:
            held = _frame_entries([m.entry])
        elif m.ranges is not None:
            held = m.ranges.to_payload()
        fields = ["result", VERSION, m.sender, m.to, m.request, m.key, m.status, held]
    else:
        fields = ["ack", VERSION, m.sender, m.position]
    return codec.encode_plain(fields)


def _tally(tally: tuple[tuple[str, int, int], ...]) -> list[object]:
    return [x for row in tally for x in row]


def _parse_tally(raw: object) -> tuple[tuple[str, int, int], ...]:
    flat = expect_list(raw, "push tally")
    if len(flat) % 3 or len(flat) > 3 * MAX_TALLY:
        raise DecodeError("push tally: expected at most 256 id/count/digest triples")
    ids = [expect_replica(x, "push tally") for x in flat[0::3]]
    expect_increasing(ids, "push tally")
    counts = [expect_uint(x, "push tally") for x in flat[1::3]]
    digests = [expect_uint(x, "push tally") for x in flat[2::3]]
    return tuple(zip(ids, counts, digests, strict=True))


def _array_head(n: int) -> bytes:
    return codec.encode_plain([None] * n)[:-n] if n else b"\x80"


#: How much wider than ``0`` the ints a frame's layout leaves open (part,
#: parts, index, count: up to 9 bytes each) and an array or bytes head can be.
_SLACK = 4 * 8 + 8


def encode_interval(
    template: Push,
    entries: Iterable[bytes],
    *,
    max_frame: int = DEFAULT_FRAME,
    max_entries: int | None = None,
) -> list[bytes]:
    """The frames of ``template``'s interval: ``entries`` (each the
    :func:`encode_entry` of one key, in key order; the template's own entries,
    part and parts are ignored) packed into push frames of at most
    ``max_frame`` bytes and ``max_entries`` entries, and each entry too large
    for a frame of its own cut into :class:`Piece` frames; at least one frame
    (an empty push) even without entries.

    >>> from crdts import GCounter
    >>> c = GCounter(); _ = c.increment("a", 1)
    >>> big = GCounter()
    >>> for i in range(1000): _ = big.increment(f"replica-{i}", 1)
    >>> items = [encode_entry(Entry(k, s, CausalContext())) for k, s in (("a", c), ("b", big))]
    >>> template = Push("a", "b", -1, 3, 0, 1, 0, CausalContext(), (), -1)
    >>> frames = encode_interval(template, items, max_frame=4096)
    >>> [type(parse(f)).__name__ for f in frames], max(map(len, frames)) <= 4096
    (['Push', 'Piece', 'Piece', 'Piece', 'Piece'], True)

    Cost: O(total size); every entry is copied once into its frame.
    """
    sender, to, start, end = template.sender, template.to, template.start, template.end
    reply, clock, ack, tally = template.reply, template.context, template.ack, template.tally
    if max_frame < MIN_FRAME:
        raise ValueError(f"max_frame is at least {MIN_FRAME}")
    base = [sender, to, start, end, 0, 0, reply, clock_payload(clock)]
    opening = Push(sender, to, start, end, 0, 1, reply, clock, (), ack, tally)
    push_room = max_frame - len(encode(opening))
    piece_room = max_frame - len(codec.encode_plain(["piece", VERSION, *base, ack, 0, 0, b""]))
    push_room, piece_room = push_room - _SLACK, piece_room - _SLACK
    if piece_room < MIN_FRAME // 2:
        raise ValueError("the clock leaves no room in a frame of max_frame bytes")
    parts: list[list[bytes] | bytes] = []  # a push's entries, or one entry in pieces
    batch: list[bytes] = []
    used = 0
    for item in entries:
        if len(item) > push_room:
            if batch:
                parts.append(batch)
                batch, used = [], 0
            parts.append(item)
            continue
        if batch and (used + len(item) > push_room or len(batch) == max_entries):
            parts.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += len(item)
    if batch or not parts:
        parts.append(batch)
    frames: list[bytes] = []
    total = len(parts)
    clock_and = codec.encode_plain(base[-1:])[1:]  # the clock alone
    tally_bytes = codec.encode_plain(_tally(tally))
    for number, part in enumerate(parts):
        head = codec.encode_plain([sender, to, start, end, number, total, reply])[1:]
        if isinstance(part, list):
            frames.append(
                _array_head(13)
                + codec.encode_plain(["push", VERSION])[1:]
                + head
                + clock_and
                + _array_head(len(part))
                + b"".join(part)
                + codec.encode_plain(ack)
                + tally_bytes
            )
            continue
        count = -(-len(part) // piece_room)
        for index in range(count):
            chunk = part[index * piece_room : (index + 1) * piece_room]
            frames.append(
                _array_head(14)
                + codec.encode_plain(["piece", VERSION])[1:]
                + head
                + clock_and
                + codec.encode_plain([ack, index, count, chunk])[1:]
            )
    return frames


def encode_entry(entry: Entry) -> bytes:
    """One entry as it travels: the canonical CBOR of ``[key, envelope,
    dots]``, the state nested as CBOR structure (its envelope is the bytes
    of ``codec.encode``).

    >>> from crdts import GCounter
    >>> encode_entry(Entry("k", GCounter(), DotRanges())).hex()
    '83616b836847436f756e746572018080'

    Cost: O(size of the state).
    """
    return entry_item(entry.key, codec.encode(entry.state), entry.dots)


def _key(x: object) -> str:
    if type(x) is not str:
        raise DecodeError("a key is a str")
    return x


def parse_entries(raw: object, *, max_state: int | None = None) -> tuple[Entry, ...]:
    """Inverse of :func:`encode_entries` for untrusted input; DecodeError
    otherwise, EntryTooLarge (before decoding it) for a state of more than
    ``max_state`` bytes."""
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
        if max_state is not None and len(fields[1]) > max_state:
            raise EntryTooLarge(
                f"entry: the state of {key!r:.40} is {len(fields[1])} bytes,"
                f" over the limit of {max_state}"
            )
        state = codec.decode(fields[1], max_size=max(codec.DEFAULT_MAX_SIZE, max_state or 0))
        out.append(Entry(key, state, DotRanges.from_payload(fields[2], "entry ops")))
    return tuple(out)


def parse_frame_entries(
    raw: object,
    *,
    size: int,
    max_state: int | None = None,
    claims: tuple[str, int, CausalContext] | None = None,
) -> tuple[Entry, ...]:
    """The entries of a frame (``[[key, envelope, ranges], ...]``, decoded
    by ``codec.decode_plain`` from ``size`` bytes) for untrusted input;
    DecodeError otherwise, EntryTooLarge for a state whose encoding is over
    ``max_state`` bytes (measured only when the frame is larger than that:
    no state is larger than its frame). With ``claims`` (a push's sender,
    start and clock), :func:`check_claims` in the same pass.

    >>> from crdts import GCounter
    >>> raw = codec.decode_plain(encode_entry(Entry("k", GCounter(), DotRanges())))
    >>> parse_frame_entries([raw], size=16)[0].state
    GCounter({})

    Cost: O(size), each type's checks on its payload.
    """
    return _checked_entries(expect_list(raw, "entries"), size, max_state, claims)


def _checked_entries(
    items: Iterable[object],
    size: int,
    max_state: int | None,
    claims: tuple[str, int, CausalContext] | None,
) -> tuple[Entry, ...]:
    # parse_frame_entries over ``items``, taken one at a time: each entry is
    # checked before the next is asked for (codec.ItemReader decodes it then).
    out = []
    seen: set[str] = set()
    measure = max_state is not None and size > max_state
    from_plain, from_payload, types = codec.from_plain, DotRanges.from_payload, codec.TYPES
    # Whole keys' stretches first (a catch-up's, and most of a delta push's:
    # a log record of a key grows to the key), on the shape that needs
    # fewest checks; a delta's stretch then by the general ones.
    spans_of = fast_spans
    if claims is not None:
        sender, start, clock = claims
        if clock.cloud:
            raise DecodeError("push clock: a prefix clock has no gaps")
        own = clock.vv.get(sender, 0)
        if start == -1:
            spans_of = whole_spans  # a catch-up carries whole keys (check_claims)
    new, no_markers = object.__new__, NO_MARKERS
    for item in items:
        if type(item) is not list or len(item) != 3:
            raise DecodeError("entry: expected [key, state, ops]")
        key, envelope, dots = item
        if type(key) is not str:
            raise DecodeError("a key is a str")
        if key in seen:
            raise DecodeError(f"entry: key {key!r:.40} twice in one message")
        seen.add(key)
        if measure:
            # Rare (a max_state below the frame size): the state's encoding,
            # before its type's checks.
            try:
                length = len(codec.encode_plain(envelope))
            except Exception as exc:  # not plain data after all: bad bytes
                raise DecodeError(f"entry: the state of {key!r:.40} does not encode") from exc
            if length > max_state:  # type: ignore[operator]
                raise EntryTooLarge(
                    f"entry: the state of {key!r:.40} is {length} bytes,"
                    f" over the limit of {max_state}"
                )
        # codec.from_plain and DotRanges.from_payload, their common case
        # inline (a frame is mostly small entries, where each call layer
        # costs as much as the checks); they name what is wrong otherwise.
        state = None
        if type(envelope) is list and len(envelope) == 3:
            tag, version, payload = envelope
            cls = types.get(tag) if type(tag) is str else None
            if cls is not None and type(version) is int and 1 <= version <= cls.FORMAT_VERSION:
                try:
                    state = cls.from_payload(payload, version)
                except DecodeError:
                    raise
                except Exception:  # a registered type's own checks failed unexpectedly
                    pass  # from_plain below raises DecodeError, naming it
        if state is None:
            state = from_plain(envelope)
        if type(dots) is list and (
            (spans := whole_spans(dots)) is not None
            or (spans_of is fast_spans and (spans := fast_spans(dots)) is not None)
        ):
            ranges = new(DotRanges)
            ranges.spans, ranges.pruned = spans, no_markers
        else:
            ranges = from_payload(dots, "entry ops")
            spans = ranges.spans
            if spans_of is whole_spans and any(map(_LO, spans.values())):
                raise DecodeError(f"push: catch-up entry {key!r:.40} is not a whole key")
        # check_claims, inline: no entry holds operations of its sender
        # beyond the sender's clock.
        if claims is not None and (span := spans.get(sender)) is not None and span[3] > own:
            raise DecodeError(
                f"push: entry {key!r:.40} claims operations of its sender beyond its clock"
            )
        # Entry(key, state, ranges) without the frozen dataclass's __init__
        # (object.__setattr__ per field: 0.6 us, as much as a state's checks).
        entry = new(Entry)
        set_key(entry, key)
        set_state(entry, state)
        set_dots(entry, ranges)
        out.append(entry)
    return tuple(out)


def _parse_result(
    sender: str, f: list[object], max_state: int | None, size: int
) -> ReadResult:
    to = expect_replica(f[0], "result to")
    request, key = expect_uint(f[1], "result request"), _key(f[2])
    status = f[3]
    if type(status) is not int or status not in (NOTHING, HELD, TOO_LARGE, PUSHED):
        raise DecodeError("result: unknown status")
    if (f[4] is None) != (status not in (HELD, PUSHED)):
        raise DecodeError("result: an entry comes with a state held or pushed, and only then")
    if f[4] is None:
        return ReadResult(sender, to, request, key, status)
    if status == PUSHED:
        ranges = DotRanges.from_payload(f[4], "result ranges")
        if not ranges.is_whole():
            raise DecodeError("result: the ranges pushed are not a whole key's")
        return ReadResult(sender, to, request, key, status, None, ranges)
    entries = parse_frame_entries(f[4], size=size, max_state=max_state)
    if len(entries) != 1 or entries[0].key != key or not entries[0].dots.is_whole():
        raise DecodeError("result: the entry is not the whole key asked for")
    return ReadResult(sender, to, request, key, status, entries[0])


def check_claims(
    sender: str, start: int, clock: CausalContext, entries: tuple[Entry, ...]
) -> None:
    """DecodeError unless the entries of a push (or of its pieces, once
    reassembled) are ranges their sender can back: a prefix clock has no
    gaps; a catch-up (``start`` -1) carries whole keys; and no entry holds
    operations of the sender that its own clock says it never issued.
    Cost: O(entries)."""
    if clock.cloud:
        raise DecodeError("push clock: a prefix clock has no gaps")
    own = clock.vv.get(sender, 0)
    for entry in entries:
        if start == -1 and not entry.dots.is_whole():
            raise DecodeError(f"push: catch-up entry {entry.key!r:.40} is not a whole key")
        if entry.dots.top(sender) > own:
            raise DecodeError(
                f"push: entry {entry.key!r:.40} claims operations of its sender beyond its clock"
            )


_REPLIES = {int(r): r for r in Reply}
_LO = itemgetter(0)  # a stretch's lo: 0 for a whole key's
_ARITY = {"push": 13, "ack": 4, "piece": 14, "read": 5, "result": 8}
#: How every push frame opens: an array of 13, then "push".
_PUSH_HEAD = b"\x8d\x64push"


def parse(
    frame: bytes, *, max_size: int = MAX_FRAME, max_state: int | None = None
) -> Message:
    """The message in ``frame``; DecodeError for anything else (EntryTooLarge
    for an entry whose state is over ``max_state`` bytes).

    >>> parse(b"junk")
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(frame)); frames over ``max_size`` are refused before parsing.
    """
    if type(frame) is bytes and len(frame) > codec.FRAME_AT_ONCE and frame[:6] == _PUSH_HEAD:
        # A large push is read entry by entry, each checked before the next
        # is built, without the decoder's walk (docs/frames.md).
        return _parse_push_by_entry(frame, max_size, max_state)
    raw = expect_list(codec.decode_plain(frame, max_size=max_size, canonical=False), "frame")
    kind, sender = _kind_and_sender(raw)
    f = raw[3:]
    if kind == "read":
        return Read(sender, expect_uint(f[0], "read request"), _key(f[1]))
    if kind == "result":
        return _parse_result(sender, f, max_state, len(frame))
    if kind == "ack":
        return Ack(sender, expect_uint(f[0], "ack position", -1))
    to, start, end, part, parts, reply, clock = _interval(kind, f)
    if kind == "piece":
        ack = expect_uint(f[7], "piece ack", -1)
        index, count = expect_uint(f[8], "piece index"), expect_uint(f[9], "piece count", 1)
        if index >= count or type(f[10]) is not bytes or not f[10]:
            raise DecodeError("piece: inconsistent index or empty chunk")
        return Piece(
            sender, to, start, end, part, parts, _REPLIES[reply], clock, ack, index, count, f[10]
        )
    entries = (
        parse_frame_entries(
            f[7], size=len(frame), max_state=max_state, claims=(sender, start, clock)
        )
        if f[7] != [] or type(f[7]) is not list
        else ()  # a round opener: nothing to check (a prefix clock has no gaps)
    )
    ack = expect_uint(f[8], "push ack", -1)
    tally = _parse_tally(f[9]) if f[9] != [] else ()
    return _new_push(
        sender, to, start, end, part, parts, _REPLIES[reply], clock, entries, ack, tally
    )


def _kind_and_sender(raw: list[object]) -> tuple[str, str]:
    # The fields every message opens with: DecodeError unless they are sound
    # and the message has its kind's number of fields.
    if len(raw) < 3 or type(raw[0]) is not str or raw[0] not in _ARITY:
        raise DecodeError("frame: unknown message kind")
    kind = raw[0]
    if raw[1] != VERSION or type(raw[1]) is not int:
        raise DecodeError(f"{kind}: unknown version {raw[1]!r:.20}")
    if len(raw) != _ARITY[kind]:
        raise DecodeError(f"{kind}: expected {_ARITY[kind]} fields")
    sender = raw[2]
    if type(sender) is not str or not sender:
        raise DecodeError(f"{kind} sender: expected a non-empty replica id")
    return kind, sender


def _interval(
    kind: str, f: list[object]
) -> tuple[str, int, int, int, int, int, CausalContext]:
    # A push's or a piece's receiver, interval, parts, reply and clock. No
    # check is named until one fails: formatting every field's name cost as
    # much as the checks (an opener is parsed every round).
    to, start, end, part, parts, reply = f[:6]
    if not (
        type(to) is str
        and to
        and type(start) is int
        and type(end) is int
        and type(part) is int
        and type(parts) is int
        and -1 <= start <= end
        and 0 <= part < parts
        and type(reply) is int
        and reply in _REPLIES
    ):
        raise DecodeError(f"{kind}: bad receiver, inconsistent interval or parts")
    return to, start, end, part, parts, reply, parse_clock(f[6], "clock")


def _parse_push_by_entry(frame: bytes, max_size: int, max_state: int | None) -> Push:
    # A push read with codec.ItemReader: its fields up to the clock, then
    # each entry decoded and checked (a valid state) before the next is
    # decoded, so what accumulates is states of honest cost and at most one
    # window of plain data, the cost bound of the decoder's walk without the
    # walk. An entry larger than the reader's window is walked by itself.
    reader = codec.ItemReader(frame, max_size=max_size)
    reader.array()  # 13: the frame opens with _PUSH_HEAD
    raw = [reader.item() for _ in range(10)]
    raw += (None, None, None)  # the entries, ack and tally, read below
    _, sender = _kind_and_sender(raw)
    to, start, end, part, parts, reply, clock = _interval("push", raw[3:])
    count = reader.array()
    entries = _checked_entries(
        reader.items(count), len(frame), max_state, (sender, start, clock)
    )
    ack = expect_uint(reader.item(), "push ack", -1)
    tally = reader.item()
    reader.finish()
    return _new_push(
        sender, to, start, end, part, parts, _REPLIES[reply], clock, entries, ack,
        _parse_tally(tally) if tally != [] else (),
    )
