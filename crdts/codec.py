"""Canonical CBOR for every CRDT: the only module that knows the wire format.

Every encoding is one CBOR array, the *envelope*::

    [type-tag, format-version, payload]

written as deterministic CBOR (RFC 8949, section 4.2: shortest integers and
lengths, definite lengths, no tags). Each type's payload lists its state in a
canonical order, in flat arrays, so equal states encode to identical bytes
whatever order their operations ran in, and a digest of the bytes can stand
for the state.

``decode`` treats its input as hostile. Whatever it is given it returns a valid
state or raises :class:`~crdts.errors.DecodeError`, and nothing else:

- the size is checked before anything is parsed (``max_size``);
- a pre-pass walks the heads before cbor2 builds anything: nesting is
  capped, indefinite lengths, maps, floats and every CBOR tag are refused, so
  there are no bignums, sets, shared references or dates to build;
- allocation follows the bytes actually present, never a declared length, and
  an input whose objects would cost more than a fixed multiple of its size
  (``_COST_PER_BYTE``, honest states stay under it) is refused unbuilt;
- each type checks its own invariants (positive counters, every dot inside
  the causal context, canonical order, ints where ints belong);
- the input must be the canonical encoding of what it decodes to, so trailing
  bytes, non-shortest integers and reordered entries are refused and
  ``encode(decode(b)) == b`` for every ``b`` that is accepted.

A reader upgrades older format versions through the type's ``from_payload``
and refuses newer or unknown ones.

>>> from crdts import GCounter
>>> c = GCounter(); _ = c.increment("a", 3)
>>> data = encode(c); data.hex()
'836847436f756e7465720182616103'
>>> decode(data) == c
True
>>> decode(data + b"\\x00")
Traceback (most recent call last):
...
crdts.errors.DecodeError: not the canonical encoding of its value

Cost: ``encode`` and ``decode`` are O(size), at C speed for the CBOR of flat
arrays (where states keep their bulk) and a Python loop over the other items.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import cbor2

from crdts.base import CRDT, expect_list
from crdts.errors import DecodeError
from crdts.gcounter import GCounter
from crdts.lwwregister import LWWRegister
from crdts.mvregister import MVRegister
from crdts.ormap import ORMap
from crdts.orset import ORSet
from crdts.pncounter import PNCounter
from crdts.vclock import VectorClock

__all__ = [
    "DEFAULT_MAX_SIZE",
    "FRAME_AT_ONCE",
    "FRAME_WINDOW",
    "MAX_DEPTH",
    "TYPES",
    "ItemReader",
    "decode",
    "decode_plain",
    "encode",
    "encode_plain",
    "from_plain",
    "register",
    "registered",
    "to_plain",
]

#: The largest input ``decode`` reads unless told otherwise: 16 MiB. Decoding
#: builds at most ``_COST_PER_BYTE`` (30) bytes of objects per input byte, so
#: this bounds memory near 500 MB; pass a larger ``max_size`` for larger states
#: (an OR-Set element costs ~16 bytes).
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: The deepest nesting a flat payload needs is 4; an OR-Map adds 2 per level
#: of nesting (a map of maps of OR-Sets needs 10): room for a few levels.
MAX_DEPTH = 16

_REGISTRY: dict[str, type[CRDT]] = {}

K = TypeVar("K", bound=type[CRDT])


def register(cls: K) -> K:
    """Make a CRDT class encodable under its ``TYPE_TAG`` (usable as a decorator).

    The class follows :class:`crdts.base.CRDT`: ``to_payload`` returns plain
    lists, ints, strs and bytes in a canonical order; ``from_payload`` checks
    every invariant and raises DecodeError on anything else.
    """
    tag = cls.TYPE_TAG
    if type(tag) is not str or not tag:
        raise ValueError(f"{cls.__name__}.TYPE_TAG must be a non-empty str")
    held = _REGISTRY.get(tag)
    if held is not None and held is not cls:
        raise ValueError(f"type tag {tag!r} is taken by {held.__name__}")
    _REGISTRY[tag] = cls
    return cls


#: The registered classes by type tag, a live read-only view: for readers
#: of many envelopes (a frame's entries) that look the tag up themselves.
TYPES: Mapping[str, type[CRDT]] = MappingProxyType(_REGISTRY)


def registered() -> dict[str, type[CRDT]]:
    """The registered classes by type tag (a copy)."""
    return dict(_REGISTRY)


for _cls in (GCounter, PNCounter, ORSet, LWWRegister, MVRegister, VectorClock, ORMap):
    register(_cls)


def encode(state: CRDT) -> bytes:
    """The canonical CBOR encoding of ``state``.

    >>> from crdts import VectorClock
    >>> encode(VectorClock({"b": 1, "a": 2})) == encode(VectorClock({"a": 2, "b": 1}))
    True

    Cost: O(size log size) for the canonical ordering, then C speed.
    """
    return cbor2.dumps(to_plain(state), canonical=True)


def to_plain(state: CRDT) -> list[object]:
    """The envelope ``[type-tag, format-version, payload]`` of ``state`` as
    plain data: what :func:`encode` writes, for a caller that nests it in a
    larger structure (a gossip frame), where its canonical CBOR is the same
    bytes as :func:`encode`'s.

    >>> from crdts import GCounter
    >>> c = GCounter(); _ = c.increment("a", 3)
    >>> to_plain(c)
    ['GCounter', 1, ['a', 3]]
    >>> encode_plain(["k", to_plain(c)]) == b"\\x82" + encode_plain("k") + encode(c)
    True

    Cost: the type's ``to_payload``, O(size log size).
    """
    cls = type(state)
    if _REGISTRY.get(cls.TYPE_TAG) is not cls:
        raise TypeError(f"{cls.__name__} is not registered with crdts.codec")
    return [cls.TYPE_TAG, cls.FORMAT_VERSION, state.to_payload()]


def _refuse_tag(decoder: object, *tag: object) -> object:
    raise ValueError("CBOR tags are not part of the format")


# The tags cbor2 would otherwise decode by itself (dates, bignums, sets, shared
# references, string references, ...); every other tag reaches tag_hook.
_SEMANTIC: dict[int, Any] = {
    tag: _refuse_tag
    for tag in (
        *range(0, 6), *range(21, 38), 52, 54, 100, 256, 258, 260, 261, 1004, 55799,
    )
}


# -- the structural pre-pass -------------------------------------------------------
#
# cbor2 builds every item before any check can run, and a Python object costs
# far more than the byte that names it: an empty array is one byte and a
# 56-byte list, a small negative int one byte and a 28-byte int. An array of
# 16 Mi empty arrays took a node to 1.25 GiB and 22 s (issue 9). So before
# cbor2 builds anything, ``_scan`` walks the heads and refuses what is not the
# canonical encoding of plain data or would cost more to build than
# ``_COST_PER_BYTE`` bytes of objects per input byte, or hold more than one
# item per ``_BYTES_PER_ITEM`` bytes. An array is charged for all its items at
# its head, so a flood is refused before its first item is looked at, at
# O(depth) memory. What passes costs cbor2 at most that bound: the price of
# honest data of the same size, which a decoder that builds Python objects
# cannot go below (the type's own checks then allocate a little more).
#
# The walk also does what re-encoding used to do: it refuses non-shortest
# integers and lengths, indefinite lengths, tags, floats, maps, simple values
# other than false/true/null, and trailing bytes. A text string has one UTF-8
# form, which cbor2 checks (strict), so an accepted input is canonical.
#
# Speed: walking item by item in Python would cost more than cbor2's own
# decoding, so a large array that could not break the budget even if every
# item were the costliest leaf is handed to cbor2 whole, with nesting refused
# (``max_depth=1``), and checked by re-encoding it, which also gives its end.
# That is where the bulk of every honest state lies (flat arrays); the rest is
# walked, and then decoded once with the bulk arrays spliced back in.

#: Objects cbor2 may build per input byte: at most this many bytes of them.
#: Honest data, measured with this walk's own model (docs/frames.md): the
#: built-in states 5-19x, up to ~26x for a causal context of many 2-character
#: replica ids (``"ab", 3, []``: 5 bytes, 131 bytes of objects); a gossip
#: frame's clock ~17x (``"ab", 3``), down from that ~26x since frame version
#: 4 wrote it without a dot cloud per id; membership records of 2-character
#: ids with no address ~29x (``["ab", "", 1, []]``). Was 36, for a shape no
#: wire form has (``[["ab", 3, []], ...]``, 32.5x); at 24 a 256-node
#: cluster's round openers were refused and `crdtkit demo --nodes 256` never
#: converged...
_COST_PER_BYTE = 30
#: ... and at most one item per this many bytes (a flood of 1-byte items costs
#: 8 bytes of list slot each, however cheap the item itself is). Honest data
#: is as dense as 1.25: ``["a", 3, []]`` is 4 items in 5 bytes (at 2, a
#: context of a hundred or more ids like "n42" was refused).
_BYTES_PER_ITEM = 1.25
#: Inputs up to this size get the bounds of an input this size: small states
#: are denser (``[["a", 1, []]]``) and their total cost is small anyway.
_SMALL = 1024
# What cbor2's objects cost on 64-bit CPython 3.11 (sys.getsizeof), beyond the
# 8-byte slot in the list that holds each: a list 56 (its slots are charged to
# its items), an int 28 (32 from 2**30, 36 from 2**60) unless cached (-5..256),
# bytes 33 + length, an ASCII str 49 + length (a non-ASCII one up to 27 more,
# not charged), none for b"", "", single bytes or single ASCII characters.
_LIST, _SLOT = 56, 8
#: The most a leaf of an array costs, slot included, beyond its bytes.
_LEAF = _SLOT + 49
#: Arrays of at least this many items are tried whole at C speed.
_BULK = 64
#: Inputs up to this size are decoded first and checked by re-encoding, as
#: the walk would cost more than it saves: they cannot build more than 64
#: bytes of objects per byte, 16 KiB. Like bulk arrays, they may hold
#: canonical floats and simple values (every caller checks its types).
_TINY = 256
#: Frames (``decode_plain(..., canonical=False)``) up to this size are
#: decoded without the walk: they cannot build more than 64 bytes of objects
#: per byte, 256 KiB, and the walk would cost more than the decoding.
_FRAME_TINY = 64 * 1024
#: The same, for readers of frames: larger ones are better read item by item
#: (:class:`ItemReader`) than walked.
FRAME_AT_ONCE = _FRAME_TINY
#: The tag that stands for an array decoded in bulk when the rest is decoded.
_SPLICE = 0xC9E1

# Per head byte: the size of an item that the head alone determines, else 0;
# the cost of its object; and, for an int with a one- or two-byte argument,
# the least first argument byte of its shortest form.
_SIZE = bytearray(256)
_COST = [0] * 256
_LOW = bytearray(256)
for _b in range(24):
    _SIZE[_b] = _SIZE[0x20 + _b] = 1  # ints 0..23, -1..-24
    _SIZE[0x40 + _b] = _SIZE[0x60 + _b] = 1 + _b  # strings of 0..23 bytes
    _COST[0x40 + _b] = 0 if _b < 2 else 33 + _b
    _COST[0x60 + _b] = 0 if _b < 2 else 49 + _b
for _b in range(0x25, 0x38):  # -6 .. -24: not cached
    _COST[_b] = 28
for _b, _size, _low in ((0x18, 2, 24), (0x19, 3, 1), (0x38, 2, 24), (0x39, 3, 1)):
    _SIZE[_b], _LOW[_b] = _size, _low
    _COST[_b] = 0 if _b == 0x18 else 28  # 24..255 are cached (256 is, -256 is not)
for _b in (0xF4, 0xF5, 0xF6):  # false, true, null
    _SIZE[_b] = 1
_SIZE[0x80], _COST[0x80] = 1, _LIST  # the empty array
_SIZE_OF, _LOW_OF, _COST_OF = bytes(_SIZE), bytes(_LOW), tuple(_COST)
del _SIZE, _COST, _LOW, _b, _size, _low


def _argument(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """The argument of the head at ``pos`` with additional info 24..27 and the
    position after it; DecodeError unless it is in its shortest form."""
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(data):
        raise DecodeError("malformed CBOR: truncated")
    value = int.from_bytes(data[pos + 1 : end], "big")
    if value < (24 if width == 1 else 1 << (4 * width)):
        raise DecodeError("not the canonical encoding of its value")
    return value, end


def _bulk(data: bytes, pos: int, canonical: bool) -> tuple[list[object], int] | None:
    """The flat array at ``pos`` decoded by cbor2 and its end, if it is flat
    (and, if asked, canonical); None to have it walked (which says what is
    wrong)."""
    stream = io.BytesIO(data)
    stream.seek(pos)
    try:
        items = cbor2.CBORDecoder(
            stream,
            max_depth=1,
            allow_indefinite=False,
            strict_hashable_types=True,
            tag_hook=_refuse_tag,
            semantic_decoders=_SEMANTIC,
        ).decode()
        if not canonical:
            # Its end is where cbor2 stopped; its form is not checked
            # (frames: nothing keeps or hashes their bytes).
            return (items, stream.tell()) if type(items) is list else None
        again = cbor2.dumps(items, canonical=True)
    except Exception:
        return None
    if type(items) is not list or not data.startswith(again, pos):
        return None
    # Unlike the walk, this lets canonical floats and simple values through
    # (as decode_plain always did): every caller checks the types it expects,
    # and checking 100,000 items here would cost a fifth of the decoding.
    return items, pos + len(again)


def _scan(
    data: bytes, canonical: bool = True, *, start: int = 0, depth: int = 0, whole: bool = True
) -> tuple[list[tuple[int, int, list[object]]], int]:
    """Refuse ``data`` unless it is one canonical CBOR item of plain data
    (arrays, ints, strings, false/true/null) within the depth and cost bounds;
    return the arrays decoded in bulk as ``(start, end, items)``, in order,
    and the item's end.

    Not ``whole``: the item at ``start`` of a larger input read item by item
    (:class:`ItemReader`), ``depth`` arrays deep in it; it may end before the
    data does, and the bounds are those of an input of its own size.

    Cost: O(len(data)): a Python loop over the items outside bulk arrays,
    O(depth) memory besides what the bulk arrays hold.
    """
    room = max(len(data) - start, _SMALL)
    items = int(room / _BYTES_PER_ITEM) - 1  # items left to the budget, the top one taken
    budget = room * _COST_PER_BYTE - _SLOT
    items_at_start, budget_at_start = items, budget
    deepest = MAX_DEPTH - depth
    size_of, low_of, cost_of = _SIZE_OF, _LOW_OF, _COST_OF
    bulk: list[tuple[int, int, list[object]]] = []
    stack: list[int] = []
    pos, left, end = start, 1, len(data)
    try:
        while True:
            while left:
                for done in range(left):  # the hot loop  # noqa: B007
                    head = data[pos]
                    size = size_of[head]
                    if not size:
                        break
                    low = low_of[head]
                    if low and data[pos + 1] < low:
                        raise DecodeError("not the canonical encoding of its value")
                    budget -= cost_of[head]
                    pos += size
                else:
                    left = 0
                    break
                left -= done + 1
                major, info = head >> 5, head & 31
                if info < 24:
                    value, after = info, pos + 1
                elif info < 28:
                    value, after = _argument(data, pos, info)
                elif info == 31:
                    raise DecodeError("malformed CBOR: indefinite lengths are not allowed")
                else:
                    raise DecodeError("malformed CBOR: reserved additional information")
                if major <= 1:  # an int with a four- or eight-byte argument
                    pos = after
                    budget -= 28 if value < 2**30 else 32 if value < 2**60 else 36
                elif major <= 3:  # a string of 24 bytes or more
                    pos = after + value
                    budget -= value + (33 if major == 2 else 49)
                elif major == 4:  # an array of one item or more
                    if len(stack) >= deepest:
                        raise DecodeError("malformed CBOR: nested deeper than the format allows")
                    items -= value
                    if items < 0:
                        raise DecodeError("input would cost too much to decode: refused")
                    worst = _LIST + _LEAF * value
                    if value >= _BULK and worst + end - after <= budget:
                        got = _bulk(data, pos, canonical)
                        if got is not None:
                            bulk.append((pos, got[1], got[0]))
                            budget -= worst + got[1] - after
                            pos = got[1]
                            continue
                    budget -= _LIST + _SLOT * value
                    if budget < 0:
                        raise DecodeError("input would cost too much to decode: refused")
                    stack.append(left)
                    pos, left = after, value
                elif major == 5:
                    raise DecodeError("malformed CBOR: a map is no part of the format")
                elif major == 6:
                    raise DecodeError("malformed CBOR: CBOR tags are not part of the format")
                else:
                    raise DecodeError("malformed CBOR: floats and simple values are no part of it")
            if budget < 0:
                raise DecodeError("input would cost too much to decode: refused")
            if not stack:
                break
            left = stack.pop()
    except IndexError:
        raise DecodeError("malformed CBOR: truncated") from None
    if pos > end:
        raise DecodeError("malformed CBOR: truncated")
    if whole and pos < end:
        raise DecodeError("not the canonical encoding of its value")
    if not whole:
        # Charged against the whole rest of the input; held to its own size.
        room = max(pos - start, _SMALL)
        if (
            budget_at_start - budget > room * _COST_PER_BYTE - _SLOT
            or items_at_start - items > int(room / _BYTES_PER_ITEM) - 1
        ):
            raise DecodeError("input would cost too much to decode: refused")
    return bulk, pos


def _refuse_map(*args: object) -> object:
    raise ValueError("a map is no part of the format")


#: What cbor2 is told for a whole item decoded at once: the depth cap, no
#: indefinite lengths, no tags (those it knows included), no maps.
_GUARDS: dict[str, Any] = {
    "max_depth": MAX_DEPTH,
    "allow_indefinite": False,
    "strict_hashable_types": True,
    "tag_hook": _refuse_tag,
    "object_hook": _refuse_map,
    "semantic_decoders": _SEMANTIC,
}


def _decode_tiny(data: bytes) -> object:
    """Decode ``data`` of at most ``_TINY`` bytes and refuse it unless it
    re-encodes to itself: the way every input was decoded before the walk,
    and still the faster one for the many small states of a push."""
    try:
        raw = cbor2.loads(data, **_GUARDS)
        canonical = cbor2.dumps(raw, canonical=True) == data
    except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes"
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    if not canonical:
        raise DecodeError("not the canonical encoding of its value")
    return raw


def _decode_small(data: bytes) -> object:
    """Decode ``data`` of at most ``_FRAME_TINY`` bytes with every guard but
    the canonical form (see :func:`decode_plain`): one item, nothing after it."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, **_GUARDS).decode()
    except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes"
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise DecodeError("malformed CBOR: bytes after the item")
    return value


def _spliced(bulk: list[tuple[int, int, list[object]]], args: tuple[object, ...]) -> object:
    """The tag hook that puts the bulk arrays back (cbor2 5 passes the decoder
    and the tag, cbor2 6 the tag and a flag)."""
    tag = next(arg for arg in args if isinstance(arg, cbor2.CBORTag))
    if tag.tag != _SPLICE or type(tag.value) is not int:
        raise ValueError("CBOR tags are not part of the format")
    return bulk[tag.value][2]


def _splice(
    data: bytes, bulk: list[tuple[int, int, list[object]]], at: int = 0, end: int | None = None
) -> bytes:
    """``data[at:end]`` with each bulk array replaced by tag ``_SPLICE`` over its index."""
    parts: list[bytes] = []
    for index, (start, stop, _) in enumerate(bulk):
        parts += (data[at:start], cbor2.dumps(cbor2.CBORTag(_SPLICE, index)))
        at = stop
    parts.append(data[at:end])
    return b"".join(parts)


def _build(
    data: bytes, bulk: list[tuple[int, int, list[object]]], at: int, end: int, depth: int
) -> object:
    """cbor2's decoding of the walked item ``data[at:end]``, ``depth``
    arrays deep, with the bulk arrays spliced back in."""
    try:
        if not bulk:
            return cbor2.loads(
                data[at:end] if at or end != len(data) else data,
                max_depth=MAX_DEPTH - depth,
                tag_hook=_refuse_tag,
            )
        return cbor2.loads(
            _splice(data, bulk, at, end),
            max_depth=MAX_DEPTH - depth,
            tag_hook=lambda *args: _spliced(bulk, args),
        )
    except Exception as exc:  # not expected after the walk; still "bad bytes"
        raise DecodeError(f"malformed CBOR: {exc}") from exc


def encode_plain(value: object) -> bytes:
    """Canonical CBOR of plain data (lists, ints, strs, bytes): the framing of
    protocol messages above this layer.

    >>> encode_plain(["digest", 1, bytes(1)]).hex()
    '8366646967657374014100'

    Cost: O(size), at C speed.
    """
    return cbor2.dumps(value, canonical=True)


def decode_plain(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    canonical: bool = True,
) -> object:
    """Parse untrusted bytes that must be the canonical CBOR of plain data.

    The same guards as :func:`decode` (size cap first, depth cap, no tags, no
    indefinite lengths, canonical form only) but no type checks: the caller
    validates the structure it expects and raises DecodeError otherwise.

    >>> decode_plain(bytes.fromhex("8366646967657374014100"))
    ['digest', 1, b'\\x00']
    >>> decode_plain(bytes.fromhex("1801"))  # 1 written in two bytes
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: not the canonical encoding of its value

    With ``canonical=False`` (gossip frames: decoded once, their states
    handed on as plain data, never kept or hashed as bytes) the form is not
    checked where checking costs a second pass: inputs up to ``_FRAME_TINY``
    bytes are decoded without the walk (their cost is bounded by their
    size), and bulk arrays are not re-encoded. Every other guard holds.

    Cost: O(len(data)), and at most ``_COST_PER_BYTE`` bytes of objects per
    byte of input: anything costlier is refused before it is built.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise DecodeError(f"input of {size} bytes is over the limit of {max_size}")
    if type(data) is not bytes:
        data = bytes(data)  # one copy; cbor2 would make it anyway
    if not canonical and size <= _FRAME_TINY:
        return _decode_small(data)
    if size <= _TINY:
        return _decode_tiny(data)
    bulk, end = _scan(data, canonical)  # before cbor2 builds anything; it checks the form too
    return _build(data, bulk, 0, end, 0)


#: The window of :class:`ItemReader`: an item is decoded at once only if it
#: ends within this many bytes of the window's start, so a window builds at
#: most 64 bytes of objects per byte of it, 256 KiB, before the caller checks
#: what it got. (At 64 KiB, the window's objects would be 4 MiB for an entry
#: of 1 MiB of empty arrays, which is refused for 0.06 MiB when walked.)
FRAME_WINDOW = 4096


class ItemReader:
    """Untrusted CBOR read one item at a time, for a caller that checks each
    item before the next is built (a large gossip frame's entries).

    The walk (``_scan``) bounds what cbor2 may build from a whole input
    before it builds anything, and costs a Python loop over every array
    head: a third of parsing a large frame. Read item by item instead, the
    bound holds without the walk for items that fit a window: cbor2 is
    handed ``window`` bytes at a time, so a window builds at most 64 bytes
    of objects per byte of it, and the caller turns each item into a valid
    state of honest cost (dropping the plain data) before it asks for the
    next. An item that does not fit a window is walked by itself, with the
    bounds of an input of its size, then built. The guards are those of
    :func:`decode_plain` with ``canonical=False``: the depth cap (counted
    from the top of the input), no tags, no maps, no indefinite lengths;
    the form is not checked. Anything malformed raises
    :class:`~crdts.errors.DecodeError`.

    >>> reader = ItemReader(encode_plain([1, ["a", "b"], "x" * 100]), window=64)
    >>> reader.array(), reader.item(), reader.array(), reader.item(), reader.item()
    (3, 1, 2, 'a', 'b')
    >>> len(reader.item()); reader.finish()  # over the window: walked, then built
    100

    Cost: O(len(data)) over the items read: each byte is decoded at most
    twice (an item cut by a window's end is decoded again from the next
    window), and walked instead where an item is larger than a window.
    """

    __slots__ = ("_base", "_data", "_decoder", "_depth", "_pos", "_stream", "_window")

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        window: int = FRAME_WINDOW,
    ) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > max_size:
            raise DecodeError(f"input of {size} bytes is over the limit of {max_size}")
        self._data = data if type(data) is bytes else bytes(data)
        self._window = window
        self._depth = 0  # arrays opened by array()
        self._pos = 0  # where the next item starts, while no window is open
        self._base = 0
        self._stream: io.BytesIO | None = None
        self._decoder: Any = None

    def _position(self) -> int:
        stream = self._stream
        return self._pos if stream is None else self._base + stream.tell()

    def _open(self, at: int) -> io.BytesIO:
        # A decoder on the window from ``at``: cbor2 cannot read past it.
        self._base = at
        self._stream = stream = io.BytesIO(self._data[at : at + self._window])
        self._decoder = cbor2.CBORDecoder(
            stream, **{**_GUARDS, "max_depth": MAX_DEPTH - self._depth}
        )
        return stream

    def array(self) -> int:
        """The length of the array whose head is next (its items are read
        next); DecodeError for anything else. Cost: O(1)."""
        data = self._data
        pos = self._position()
        if pos >= len(data):
            raise DecodeError("malformed CBOR: truncated")
        head = data[pos]
        if head >> 5 != 4:
            raise DecodeError("expected an array")
        if self._depth >= MAX_DEPTH:
            raise DecodeError("malformed CBOR: nested deeper than the format allows")
        info = head & 31
        if info < 24:
            length, after = info, pos + 1
        elif info < 28:
            length, after = _argument(data, pos, info)
        else:
            raise DecodeError("malformed CBOR: indefinite lengths are not allowed")
        self._pos, self._stream = after, None
        self._depth += 1
        return length

    def item(self) -> object:
        """The next item, decoded; DecodeError if it is malformed or over the
        cost bounds. Cost: O(its size)."""
        stream = self._stream
        if stream is None:
            stream = self._open(self._pos)
        start = stream.tell()
        for _ in range(2):
            try:
                return self._decoder.decode()
            except cbor2.CBORDecodeEOF:
                # Cut by the window's end: decoded again from a window at its
                # start, walked if it is larger than a window (or truncated).
                if not start:
                    break
                stream, start = self._open(self._base + start), 0
            except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes"
                raise DecodeError(f"malformed CBOR: {exc}") from exc
        at = self._base
        bulk, end = _scan(self._data, False, start=at, depth=self._depth, whole=False)
        self._pos, self._stream = end, None
        return _build(self._data, bulk, at, end, self._depth)

    def items(self, count: int) -> Iterator[object]:
        """The next ``count`` items, each decoded when asked for (as by
        :meth:`item`, one layer less per item: a frame has thousands).
        Cost: O(their size)."""
        for _ in range(count):
            stream = self._stream
            if stream is not None:
                start = stream.tell()
                try:
                    yield self._decoder.decode()
                    continue
                except cbor2.CBORDecodeEOF:
                    # Cut by the window's end: item() starts over from it.
                    self._open(self._base + start)
                except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes"
                    raise DecodeError(f"malformed CBOR: {exc}") from exc
            yield self.item()

    def finish(self) -> None:
        """DecodeError unless every byte has been read. Cost: O(1)."""
        if self._position() != len(self._data):
            raise DecodeError("malformed CBOR: bytes after the item")


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE) -> CRDT:
    """The state that ``data`` encodes; DecodeError if it is anything else.

    >>> decode(bytes([0x83]))  # an array of three, then nothing
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(data)); the input is refused before parsing if it is over
    ``max_size`` bytes.
    """
    return from_plain(decode_plain(data, max_size=max_size))


def from_plain(value: object) -> CRDT:
    """The state whose envelope is ``value`` (plain data from
    :func:`decode_plain`, or nested in a frame); DecodeError if it is
    anything else. The inverse of :func:`to_plain`: every invariant of the
    type is checked, as by :func:`decode`, but not the form of the bytes it
    came from.

    >>> from_plain(["GCounter", 1, ["a", 3]]).value
    3
    >>> from_plain(["GCounter", 1, ["a", -3]])
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: GCounter: expected ints >= 1

    Cost: the type's ``from_payload``, O(size).
    """
    envelope = expect_list(value, "envelope")
    if len(envelope) != 3:
        raise DecodeError("envelope: expected [type-tag, format-version, payload]")
    tag, version, payload = envelope
    cls = _REGISTRY.get(tag) if type(tag) is str else None
    if cls is None:
        raise DecodeError(f"unknown type tag {tag!r:.40}")
    if type(version) is not int or not 1 <= version <= cls.FORMAT_VERSION:
        raise DecodeError(f"{tag}: unknown format version {version!r:.20}")
    try:
        return cls.from_payload(payload, version)
    except DecodeError:
        raise
    except Exception as exc:  # a registered type's own checks failed unexpectedly
        raise DecodeError(f"{tag}: invalid payload: {exc!r:.200}") from exc
