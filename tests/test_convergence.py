"""The convergence machine of ``replication.testing`` on every built-in type,
on a user's own type, and on a planted bug it must catch, so that a green run
means something."""

from __future__ import annotations

import os
import unittest
from collections.abc import Sequence
from random import Random
from typing import ClassVar, Self

import hypothesis.strategies as st
import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from crdts import codec
from crdts.errors import DecodeError
from replication import Replicator
from replication.messages import Push, parse
from replication.store import MemoryStore, restore
from replication.testing import History, Operation, converged, convergence_machine

# Steps and runs per machine, bounded so that all six under the ``ci``
# profile stay within about a minute and a half on a two-core machine (at
# 500 runs they took three and a half of CI's ten minutes). The lattice laws
# keep the profile's 500 examples; longer runs: CRDTKIT_CONVERGENCE_RUNS.
STEPS = 50
RUNS = int(os.environ.get("CRDTKIT_CONVERGENCE_RUNS", "200"))


def _test_case(type_name: str) -> type[unittest.TestCase]:
    # ``Machine.TestCase`` makes a new class on every access: set its settings
    # on the one pytest collects.
    case = convergence_machine(type_name).TestCase
    runs = min(settings().max_examples, RUNS)  # the loaded profile's, at most RUNS
    case.settings = settings(stateful_step_count=STEPS, max_examples=runs)
    return case


TestGCounterConvergence = _test_case("GCounter")
TestPNCounterConvergence = _test_case("PNCounter")
TestORSetConvergence = _test_case("ORSet")
TestLWWRegisterConvergence = _test_case("LWWRegister")
TestMVRegisterConvergence = _test_case("MVRegister")
TestVectorClockConvergence = _test_case("VectorClock")


class SlotCounter:
    """A user's grow-only counter: each replica's slot holds its own count, and
    a merge takes the larger of each slot."""

    TYPE_TAG: ClassVar[str] = "test.SlotCounter"
    FORMAT_VERSION: ClassVar[int] = 1
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, slots: dict[str, int] | None = None) -> None:
        self.slots = dict(slots or {})

    @property
    def value(self) -> int:
        return sum(self.slots.values())

    def increment(self, replica: str, amount: int) -> Self:
        self.slots[replica] = self.slots.get(replica, 0) + amount
        return type(self)({replica: self.slots[replica]})

    def merge(self, other: Self) -> None:
        for replica, count in other.slots.items():
            self.slots[replica] = max(count, self.slots.get(replica, 0))

    def copy(self) -> Self:
        return type(self)(self.slots)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.slots == self.slots

    def to_payload(self) -> list[object]:
        return [[replica, count] for replica, count in sorted(self.slots.items())]

    @classmethod
    def from_payload(cls, payload: object, version: int) -> Self:
        if version != 1 or not isinstance(payload, list):
            raise DecodeError(f"{cls.TYPE_TAG}: expected version 1 and a list")
        slots: dict[str, int] = {}
        for item in payload:
            if not isinstance(item, list) or len(item) != 2:
                raise DecodeError(f"{cls.TYPE_TAG}: expected [replica, count] pairs")
            replica, count = item
            if type(replica) is not str or type(count) is not int or count < 0:
                raise DecodeError(f"{cls.TYPE_TAG}: expected [replica, count] pairs")
            slots[replica] = count
        return cls(slots)


class AddingCounter(SlotCounter):
    """Planted bug: merge adds the slots instead of taking the larger, so a
    replica that hears of the same increments twice counts them twice."""

    TYPE_TAG: ClassVar[str] = "test.AddingCounter"

    def merge(self, other: Self) -> None:
        for replica, count in other.slots.items():
            self.slots[replica] = self.slots.get(replica, 0) + count


@pytest.fixture
def codec_knows_the_test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other tests list the codec's registry and expect the built-ins alone, and
    # crdts.codec has no unregister: register the test types for one test only.
    for cls in (SlotCounter, AddingCounter):
        monkeypatch.setitem(codec._REGISTRY, cls.TYPE_TAG, cls)


def total(operations: Sequence[Operation]) -> int:
    """The model of both counters: the sum of the increments that survived."""
    return sum(op.args[0] for op in operations)


INCREMENTS = st.tuples(st.just("increment"), st.tuples(st.integers(1, 3)))
# Few, short, reproducible runs: these tests are about the kit, not the types.
# No shrinking: a planted bug is found in a few runs, but shrinking runs that
# never converge (each spends every round it is allowed) takes many seconds.
QUICK = settings(
    max_examples=25,
    stateful_step_count=20,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@pytest.mark.usefixtures("codec_knows_the_test_types")
def test_machine_passes_a_correct_user_type() -> None:
    run_state_machine_as_test(convergence_machine(SlotCounter, INCREMENTS, total), settings=QUICK)


@pytest.mark.usefixtures("codec_knows_the_test_types")
def test_machine_catches_a_merge_that_adds() -> None:
    machine = convergence_machine(AddingCounter, INCREMENTS, total)
    with pytest.raises(AssertionError, match=r"different keyspaces|the specification gives"):
        run_state_machine_as_test(machine, settings=QUICK)


def test_machine_needs_a_model_for_a_type_of_ones_own() -> None:
    with pytest.raises(TypeError, match="operations and its model"):
        convergence_machine(SlotCounter)


# -- regressions the machine found ------------------------------------------------------

Frame = tuple[str, str, bytes]  # (source, destination, frame)


def _exchange(
    nodes: dict[str, Replicator], frames: list[Frame], *, hold_pushes_to: str | None = None
) -> list[Frame]:
    """Deliver ``frames`` and every reply they cause, in order, losing none;
    pushes carrying entries for ``hold_pushes_to`` stay in flight: returned."""
    held: list[Frame] = []
    while frames:
        source, destination, frame = frames.pop(0)
        message = parse(frame)
        if destination == hold_pushes_to and isinstance(message, Push) and message.entries:
            held.append((source, destination, frame))
            continue
        replies = nodes[destination].receive(0.0, source, frame)
        frames += [(destination, to, reply) for to, reply in replies]
    return held


def _round(nodes: dict[str, Replicator], *, hold_pushes_to: str | None = None) -> list[Frame]:
    frames = [(node, to, frame) for node, r in nodes.items() for to, frame in r.tick(0.0)]
    return _exchange(nodes, frames, hold_pushes_to=hold_pushes_to)


def test_a_push_meant_for_a_previous_incarnation_keeps_each_origins_order() -> None:
    history = History()
    nodes = {"a": Replicator("a", ["b"], rng=Random(1)), "b": Replicator("b", ["a"], rng=Random(2))}
    saved = {node: MemoryStore.of(r).load() for node, r in nodes.items()}  # both empty
    history.apply(nodes["a"], "hits", "GCounter", "increment", 1)
    for _ in range(3):
        _round(nodes)  # b now holds a's first increment, and says so
    history.apply(nodes["a"], "hits", "GCounter", "increment", 1)
    # a pushes b only the second increment (b holds the first); the push is delayed.
    in_flight = _round(nodes, hold_pushes_to="b")
    # Both crash back to their saved copies; then the push reaches b's new incarnation.
    for number, (node, peer) in enumerate([("a", "b"), ("b", "a")], start=3):
        nodes[node] = restore(saved[node], node, [peer], rng=Random(number), incarnation=1)
    _exchange(nodes, in_flight[:1])
    for _ in range(3):
        _round(nodes)
    replicas = list(nodes.values())
    assert converged(replicas)
    # Regression (found by the GCounter machine): the held push, computed for
    # b's old incarnation, left out the first increment that b had held, and
    # b's new incarnation took it, so the value counted an operation whose dot
    # no replica held ("hits: holds 2, the specification gives 1"). Pushes now
    # name the incarnation they were computed for, and another one refuses them.
    assert history.problems(replicas) == []
