"""The protocol every crdtkit type follows, and the checks its boundaries share.

A CRDT here is a mutable join-semilattice (Shapiro et al., 2011) in the
delta-state style (Almeida, Shoker and Baquero, 2018):

- ``merge(other)`` joins ``other`` into ``self`` in place and returns None; it is
  commutative, associative and idempotent, and only ever inflates the state;
- each mutator changes ``self`` and returns a *delta*, a state of the same type
  small enough to ship, such that joining it into the old state gives the new;
- ``copy()`` is an independent copy, ``==`` compares structure;
- ``to_payload()`` / ``from_payload()`` turn the state into plain lists, ints,
  strings and bytes and back, so that ``crdts.codec`` can write canonical CBOR
  for any registered type without knowing it.

Generic code (the replicator, the snapshot checker, ``crdts.testing``) relies on
nothing else, so a user's own type that follows :class:`CRDT` replicates too.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import islice
from typing import ClassVar, Protocol, Self, TypeAlias, TypeVar, cast, runtime_checkable

from crdts.errors import DecodeError, InvalidOperation

__all__ = [
    "CRDT",
    "MAX_UINT",
    "Atom",
    "Prunable",
    "check_amount",
    "check_atom",
    "check_replica",
    "check_text",
    "join",
    "leq",
]

#: The values an OR-Set may hold and a register may take: they have one
#: canonical CBOR encoding each and hash without attacker-chosen collisions.
Atom: TypeAlias = str | int | bytes

#: Counters, timestamps and dot counters are CBOR unsigned integers.
MAX_UINT = 2**64 - 1
_MIN_NINT = -(2**64)


@runtime_checkable
class CRDT(Protocol):
    """A state-based CRDT: what the codec, the replicator and the test kit use.

    >>> from crdts import GCounter
    >>> isinstance(GCounter(), CRDT)
    True
    """

    TYPE_TAG: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]

    def merge(self, other: Self) -> None: ...

    def copy(self) -> Self: ...

    def to_payload(self) -> list[object]: ...

    @classmethod
    def from_payload(cls, payload: object, version: int) -> Self: ...


@runtime_checkable
class Prunable(CRDT, Protocol):
    """A CRDT that can forget a replica id that will never issue again
    (Akka Distributed Data's ``RemovedNodePruning``).

    - ``prune(removed, owner) -> base`` moves everything ``removed``
      contributed to the live replica ``owner`` and forgets ``removed``: the
      value is unchanged. The counters fold the slot into the owner's (base
      0); the dotted types rename the dots into a block of the owner's
      above ``base`` (``crdts._rename``). Only ``owner`` itself may prune,
      as a local operation, and only once every replica holds every
      operation of ``removed`` (``replication.replicator`` checks both).
    - ``cleanup(removed, owner, base)`` is what every other replica does to
      its own state (and to any state it takes in) once it has seen a state
      that carries the finished pruning: the counters drop ``removed``'s
      slot (counted once, through ``owner``), the dotted types rename as the
      owner did, so a concurrent remove or overwrite still finds its dot.

    A type whose state holds no per-replica metadata that grows (a register
    that keeps one write) implements both as no-ops.

    >>> from crdts import GCounter
    >>> a = GCounter(); _ = a.increment("old", 2); _ = a.increment("me", 1)
    >>> b = a.copy()
    >>> a.prune("old", "me"), a, a.value
    (0, GCounter({'me': 3}), 3)
    >>> b.cleanup("old", "me", 0); b.merge(a); b.value          # counted once
    3
    >>> isinstance(a, Prunable)
    True
    """

    def prune(self, removed: str, owner: str) -> int: ...

    def cleanup(self, removed: str, owner: str, base: int) -> None: ...


C = TypeVar("C", bound=CRDT)


def join(a: C, b: C) -> C:
    """The join of two states as a new object; neither argument changes.

    >>> from crdts import GCounter
    >>> a, b = GCounter(), GCounter()
    >>> _ = a.increment("a", 2); _ = b.increment("b", 3)
    >>> join(a, b).value
    5

    Cost: a ``copy`` of ``a`` plus a ``merge`` of ``b``.
    """
    out = a.copy()
    out.merge(b)
    return out


def leq(a: C, b: C) -> bool:
    """Whether ``a <= b`` in the lattice order, that is ``a ⊔ b == b``.

    >>> from crdts import GCounter
    >>> a = GCounter(); _ = a.increment("a")
    >>> b = a.copy(); _ = b.increment("b")
    >>> leq(a, b), leq(b, a)
    (True, False)

    Cost: a ``copy`` of ``b``, a ``merge`` of ``a`` and a comparison.
    """
    return join(b, a) == b


def check_text(text: str, what: str) -> str:
    """Return ``text`` if it encodes to UTF-8, else raise InvalidOperation: a
    lone surrogate (``"x\\ud800"``) is a Python ``str`` that no encoder
    writes, so taking one in would make every later encoding of the state
    fail. Cost: O(len(text)), at C speed (ASCII is checked without copying).

    >>> check_text("caf\u00e9", "a value")
    'café'
    >>> check_text("x\\ud800", "a value")
    Traceback (most recent call last):
    ...
    crdts.errors.InvalidOperation: a value must be valid Unicode (no lone surrogates): 'x\\ud800'
    """
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidOperation(
                f"{what} must be valid Unicode (no lone surrogates): {text!r:.60}"
            ) from None
    return text


def check_replica(replica: object) -> str:
    """Return ``replica`` if it is a usable replica id (a non-empty str that
    encodes), else raise InvalidOperation."""
    if type(replica) is not str or not replica:
        raise InvalidOperation(f"a replica id is a non-empty str, not {replica!r:.60}")
    return check_text(replica, "a replica id")


def check_amount(amount: object) -> int:
    """Return ``amount`` if it is a non-negative int (not a bool), else raise."""
    if type(amount) is not int:
        raise InvalidOperation(f"an amount is an int, not {type(amount).__name__} {amount!r}")
    if amount < 0:
        raise InvalidOperation(f"an amount is never negative, got {amount}")
    return amount


def check_atom(value: object) -> Atom:
    """Return ``value`` if it is an :data:`Atom` that CBOR holds without a tag."""
    kind = type(value)
    if kind is str:
        return check_text(value, "a str value")  # type: ignore[arg-type]
    if kind is bytes:
        return value  # type: ignore[return-value]
    if kind is int:
        if not _MIN_NINT <= value <= MAX_UINT:  # type: ignore[operator]
            raise InvalidOperation(f"an int value must lie in [-2**64, 2**64 - 1], got {value}")
        return value  # type: ignore[return-value]
    raise InvalidOperation(f"values are str, int or bytes, not {kind.__name__} {value!r}")


# Decoding helpers: payloads come from cbor2, whose natively decoded ints never
# leave [-2**64, 2**64 - 1] (the codec refuses the bignum tags), so range checks
# below are about meaning, not about representability.


def expect_list(x: object, what: str) -> list[object]:
    if type(x) is not list:
        raise DecodeError(f"{what}: expected an array, got {type(x).__name__}")
    return x


def expect_uint(x: object, what: str, low: int = 0) -> int:
    if type(x) is not int or x < low:
        raise DecodeError(f"{what}: expected an int >= {low}, got {x!r:.40}")
    return x


#: How many ids :func:`share` keeps before it starts afresh.
SHARED_LIMIT = 1 << 16


class _Shared(dict[str, str]):
    # An id already held is found at C speed (dict lookup); only a new one
    # costs a Python call, which also keeps the table within its limit.
    __slots__ = ()

    def __missing__(self, replica: str) -> str:
        if len(self) >= SHARED_LIMIT:
            self.clear()
        self[replica] = replica
        return replica


#: Replica ids decoded from the wire, shared (see :func:`share`).
_SHARED = _Shared()


def share(replica: str) -> str:
    """The one copy of ``replica`` kept for sharing: every key a replica
    wrote names it, and an id decoded from a frame is a new string each time
    (about 50 bytes per key and writer).

    Not ``sys.intern``: interned strings were immortal in CPython 3.12.0 to
    3.12.4 (cpython#113993), so ids a peer made up would never be freed, and
    the interpreter's table only grows. This one holds at most
    ``SHARED_LIMIT`` ids and is emptied when full: sharing only saves
    memory, nothing depends on it.

    >>> a, b = "".join(["n", "1"]), "".join(["n", "1"])
    >>> a is b, share(a) is share(b)
    (False, True)

    Cost: O(len(replica)) to hash it, amortised O(1) otherwise.
    """
    return _SHARED[replica]


#: :func:`share` without its Python call, for decoders' tight loops (one call
#: per writer of every entry of a frame): a C-speed lookup of a held id.
share_at_c_speed = _SHARED.__getitem__


def expect_replica(x: object, what: str) -> str:
    if type(x) is not str or not x:
        raise DecodeError(f"{what}: expected a non-empty replica id, got {x!r:.40}")
    return x


def expect_atoms(xs: Sequence[object], what: str) -> None:
    if not set(map(type, xs)) <= {str, int, bytes}:
        bad = next(x for x in xs if type(x) not in (str, int, bytes))
        raise DecodeError(f"{what}: values are str, int or bytes, got {type(bad).__name__}")


def expect_uints(xs: Sequence[object], what: str, low: int = 0) -> None:
    """All of ``xs`` are ints >= low; C-speed checks, one pass each."""
    if not set(map(type, xs)) <= {int} or (xs and min(cast("Sequence[int]", xs)) < low):
        raise DecodeError(f"{what}: expected ints >= {low}")


def expect_increasing(xs: Sequence[object], what: str) -> None:
    """``xs`` is strictly increasing: the canonical order, with no duplicates.

    Callers have checked that the items are of one comparable type."""
    ordered = cast("Sequence[int]", xs)
    if not all(map(operator.lt, ordered, islice(ordered, 1, None))):
        raise DecodeError(f"{what}: not in strictly increasing order")
