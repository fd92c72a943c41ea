"""A user's own CRDT, as a user would write it: a grow-only set of strings
registered with the codec and declaring its operations, nothing else. The
node serves it with ``crdtkit node --import tests.usertype``; nothing outside
this module knows it (tests/test_operations.py, which registers it in its
own process for its own tests only; tests/conftest.py keeps pytest from
importing it to collect doctests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from crdts import codec
from crdts.base import check_text, expect_list
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import Arg, Logged, Mutator, Operations


def _element(x: object) -> str:
    if type(x) is not str:
        raise InvalidOperation(f"a GSet holds str, not {type(x).__name__}")
    return check_text(x, "an element")


def _canonical(x: str) -> tuple[int, bytes]:
    # RFC 8949's order: by encoded length, then bytewise.
    raw = x.encode()
    return len(raw), raw


@codec.register
class GSet:
    """Grow-only set: the join is the union. Cost: ``add`` O(1), ``merge`` O(other)."""

    TYPE_TAG: ClassVar[str] = "example.GSet"
    FORMAT_VERSION: ClassVar[int] = 1
    OPERATIONS: ClassVar[Operations]
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self) -> None:
        self._items: set[str] = set()

    def add(self, element: str) -> Self:
        _element(element)
        self._items.add(element)
        delta = type(self)()
        delta._items = {element}
        return delta

    @property
    def value(self) -> frozenset[str]:
        return frozenset(self._items)

    def merge(self, other: Self) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self._items |= other._items

    def copy(self) -> Self:
        out = type(self)()
        out._items = set(self._items)
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._items == other._items

    def to_payload(self) -> list[object]:
        items = sorted(self._items, key=_canonical)
        return list(items)

    @classmethod
    def from_payload(cls, payload: object, version: int) -> Self:
        items = expect_list(payload, "GSet")
        if version != 1 or not all(type(x) is str for x in items):
            raise DecodeError("GSet: version 1, an array of str")
        out = cls()
        out._items = set(items)  # type: ignore[arg-type]
        if out.to_payload() != items:
            raise DecodeError("GSet: not in canonical order")
        return out


def _model(ops: Sequence[Logged]) -> frozenset[str]:
    return frozenset(op.args[0] for op in ops)


GSet.OPERATIONS = Operations(
    [Mutator("add", lambda s, _me, _clock, x: s.add(x), (Arg("element", _element),))], _model
)


@codec.register
class BrokenGSet(GSet):
    """A planted bug, for the node's sake: ``add("boom")`` changes the state
    and then raises something no type should (the node must answer it,
    keep serving, and keep nothing of it)."""

    TYPE_TAG: ClassVar[str] = "example.BrokenGSet"

    def add(self, element: str) -> Self:
        delta = super().add(element)
        if element == "boom":
            raise RuntimeError("a bug in a user's type")
        return delta


BrokenGSet.OPERATIONS = Operations(
    [Mutator("add", lambda s, _me, _clock, x: s.add(x), (Arg("element", _element),))], _model
)
