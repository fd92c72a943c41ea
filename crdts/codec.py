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
- nesting is capped, indefinite lengths and every CBOR tag are refused, so
  there are no bignums, sets, shared references or dates to build;
- allocation follows the bytes actually present, never a declared length;
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

Cost: ``encode`` and ``decode`` are O(size), at C speed for the CBOR itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

import cbor2

from crdts.base import CRDT, expect_list
from crdts.errors import DecodeError
from crdts.gcounter import GCounter
from crdts.lwwregister import LWWRegister
from crdts.mvregister import MVRegister
from crdts.orset import ORSet
from crdts.pncounter import PNCounter
from crdts.vclock import VectorClock

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_DEPTH",
    "decode",
    "decode_plain",
    "encode",
    "encode_plain",
    "register",
    "registered",
]

#: The largest input ``decode`` reads unless told otherwise: 16 MiB. A hostile
#: payload of many tiny arrays costs cbor2 about 70 bytes of memory per input
#: byte before any check can run, so this also bounds memory near 1.2 GB; pass
#: a larger ``max_size`` for larger states (an OR-Set element costs ~16 bytes).
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: The deepest nesting any registered payload needs is 4; leave some room.
MAX_DEPTH = 8

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


def registered() -> dict[str, type[CRDT]]:
    """The registered classes by type tag (a copy)."""
    return dict(_REGISTRY)


for _cls in (GCounter, PNCounter, ORSet, LWWRegister, MVRegister, VectorClock):
    register(_cls)


def encode(state: CRDT) -> bytes:
    """The canonical CBOR encoding of ``state``.

    >>> from crdts import VectorClock
    >>> encode(VectorClock({"b": 1, "a": 2})) == encode(VectorClock({"a": 2, "b": 1}))
    True

    Cost: O(size log size) for the canonical ordering, then C speed.
    """
    cls = type(state)
    if _REGISTRY.get(cls.TYPE_TAG) is not cls:
        raise TypeError(f"{cls.__name__} is not registered with crdts.codec")
    envelope = [cls.TYPE_TAG, cls.FORMAT_VERSION, state.to_payload()]
    return cbor2.dumps(envelope, canonical=True)


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


def encode_plain(value: object) -> bytes:
    """Canonical CBOR of plain data (lists, ints, strs, bytes): the framing of
    protocol messages above this layer.

    >>> encode_plain(["digest", 1, bytes(1)]).hex()
    '8366646967657374014100'

    Cost: O(size), at C speed.
    """
    return cbor2.dumps(value, canonical=True)


def decode_plain(
    data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE
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

    Cost: O(len(data)).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"input of {len(data)} bytes is over the limit of {max_size}")
    try:
        raw = cbor2.loads(
            data,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            # No map is part of the format; refusing non-str/bytes keys stops
            # a map of hash-colliding keys (tuples) from taking quadratic time.
            strict_hashable_types=True,
            tag_hook=_refuse_tag,
            semantic_decoders=_SEMANTIC,
        )
        canonical = cbor2.dumps(raw, canonical=True) == data
    except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes"
        raise DecodeError(f"malformed CBOR: {exc}") from exc
    if not canonical:
        raise DecodeError("not the canonical encoding of its value")
    return raw


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE) -> CRDT:
    """The state that ``data`` encodes; DecodeError if it is anything else.

    >>> decode(bytes([0x83]))  # an array of three, then nothing
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(data)); the input is refused before parsing if it is over
    ``max_size`` bytes.
    """
    envelope = expect_list(decode_plain(data, max_size=max_size), "envelope")
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
