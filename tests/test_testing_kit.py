"""The law kit on users' own types: it passes a correct one and catches
planted bugs, so a green law suite means something."""

from __future__ import annotations

from typing import ClassVar

import hypothesis.strategies as st
import pytest
from hypothesis import settings

from crdts.testing import CRDTSpec, LatticeLaws, Op, check_laws


class MaxRegister:
    """A user's type: the largest int written. Not registered with the codec."""

    TYPE_TAG: ClassVar[str] = "test.MaxRegister"
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def write(self, value: int) -> MaxRegister:
        self.value = max(self.value, value)
        return type(self)(value)

    def merge(self, other: MaxRegister) -> None:
        if type(other) is not type(self):
            raise TypeError("different types")
        self.value = max(self.value, other.value)

    def copy(self) -> MaxRegister:
        return type(self)(self.value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]

    def to_payload(self) -> list[object]:
        return [self.value]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> MaxRegister:
        raise NotImplementedError


def writes(replica: str) -> st.SearchStrategy[Op]:
    return st.builds(lambda n: Op("write", (n,)), st.integers(0, 9))


class TestMaxRegisterLaws(LatticeLaws):
    spec = CRDTSpec(MaxRegister, writes, encodable=False)


class SummingRegister(MaxRegister):
    """Planted bug: merge adds instead of taking the max (not idempotent)."""

    def merge(self, other: MaxRegister) -> None:
        if type(other) is not type(self):
            raise TypeError("different types")
        self.value += other.value


class LeftBiasedRegister(MaxRegister):
    """Planted bug: merge keeps the argument's value (not commutative)."""

    def merge(self, other: MaxRegister) -> None:
        if type(other) is not type(self):
            raise TypeError("different types")
        self.value = other.value


class LossyCounter:
    """Planted bug: a grow-only counter whose delta holds the amount added
    instead of the slot's new count, so joining deltas undercounts."""

    TYPE_TAG: ClassVar[str] = "test.LossyCounter"
    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}

    def increment(self, replica: str, amount: int) -> LossyCounter:
        self.slots[replica] = self.slots.get(replica, 0) + amount
        delta = LossyCounter()
        delta.slots[replica] = amount
        return delta

    def merge(self, other: LossyCounter) -> None:
        if type(other) is not LossyCounter:
            raise TypeError("different types")
        for replica, count in other.slots.items():
            self.slots[replica] = max(count, self.slots.get(replica, 0))

    def copy(self) -> LossyCounter:
        out = LossyCounter()
        out.slots = dict(self.slots)
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is LossyCounter and other.slots == self.slots

    __hash__ = None  # type: ignore[assignment]

    def to_payload(self) -> list[object]:
        return [list(item) for item in sorted(self.slots.items())]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> LossyCounter:
        raise NotImplementedError


QUICK = settings(max_examples=200, database=None)


@pytest.mark.parametrize("broken", [SummingRegister, LeftBiasedRegister])
def test_kit_catches_a_broken_merge(broken: type[MaxRegister]) -> None:
    with pytest.raises(AssertionError):
        check_laws(CRDTSpec(broken, writes, encodable=False), QUICK)


def test_kit_catches_a_broken_delta() -> None:
    def increments(replica: str) -> st.SearchStrategy[Op]:
        return st.builds(lambda n: Op("increment", (replica, n)), st.integers(1, 3))

    with pytest.raises(AssertionError):
        check_laws(CRDTSpec(LossyCounter, increments, encodable=False), QUICK)
