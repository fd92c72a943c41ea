"""Property checks of the lattice and delta laws, for any CRDT.

Point them at your own type and Hypothesis looks for a counterexample to each
law a state-based CRDT must obey (Shapiro et al., 2011; Almeida et al., 2018):

- merge is commutative, associative and idempotent, and only inflates;
- updates only inflate, and merge leaves its argument alone;
- the delta law: joining all the deltas a replica has seen, in any order and
  with duplicates, gives exactly its state;
- ``copy`` is independent; equal states encode to equal bytes and
  ``decode(encode(x)) == x`` (for types registered with ``crdts.codec``).

The states come from random *executions*: a few replicas that apply random
operations and merge each other's states and deltas, in and out of order. A
law is checked on replica states and deltas alike, since a delta is a state.

Describe the type with a :class:`CRDTSpec` and subclass :class:`LatticeLaws`
in a test module; pytest collects the laws as tests::

    import hypothesis.strategies as st
    from crdts import GCounter
    from crdts.testing import CRDTSpec, LatticeLaws, Op

    def gcounter_ops(replica: str) -> st.SearchStrategy[Op]:
        return st.builds(lambda n: Op("increment", (replica, n)), st.integers(0, 5))

    class TestGCounterLaws(LatticeLaws):
        spec = CRDTSpec(GCounter, gcounter_ops)

Or run every law at once from any code with :func:`check_laws`.

Needs Hypothesis (``pip install 'crdtkit[testing]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import hypothesis
import hypothesis.strategies as st
from hypothesis import given, note

from crdts import codec
from crdts.base import CRDT, join, leq

__all__ = ["CRDTSpec", "Execution", "LatticeLaws", "Op", "check_laws", "executions", "histories"]

C = TypeVar("C", bound=CRDT)


@dataclass(frozen=True, slots=True)
class Op:
    """One update: the mutator's name and its arguments.

    >>> from crdts import GCounter
    >>> c = GCounter(); Op("increment", ("a", 2)).apply(c).value
    2
    """

    name: str
    args: tuple[object, ...] = ()

    def apply(self, state: Any) -> Any:
        """Run the update on ``state``; return the delta the mutator returned."""
        return getattr(state, self.name)(*self.args)

    def __repr__(self) -> str:
        return f"{self.name}{self.args!r}"


@dataclass(frozen=True)
class CRDTSpec(Generic[C]):
    """What the laws need to know about a type.

    ``new`` makes an empty state; ``operations(replica)`` is a strategy of the
    updates that replica may issue; ``replicas`` are the ids in play;
    ``encodable`` says whether ``crdts.codec`` can encode the type.
    """

    new: Callable[[], C]
    operations: Callable[[str], st.SearchStrategy[Op]]
    replicas: Sequence[str] = ("a", "b", "c")
    encodable: bool = True
    max_steps: int = 24


@dataclass
class Execution(Generic[C]):
    """A random run: each replica's state, every delta issued, and which
    deltas lie in each replica's causal past."""

    states: list[C]
    deltas: list[C] = field(default_factory=list)
    seen: list[set[int]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def universe(self) -> list[C]:
        """Every state the run produced: replica states, then deltas."""
        return [*self.states, *self.deltas]


@st.composite
def executions(draw: st.DrawFn, spec: CRDTSpec[C]) -> Execution[C]:
    """A strategy of :class:`Execution` for ``spec``, checking on the way that
    each update inflates its replica and returns a delta that joins to it."""
    n = len(spec.replicas)
    execution: Execution[C] = Execution(
        [spec.new() for _ in range(n)], seen=[set() for _ in range(n)]
    )
    states, deltas, seen = execution.states, execution.deltas, execution.seen
    replica = st.integers(0, n - 1)
    for _ in range(draw(st.integers(0, spec.max_steps))):
        kind = draw(st.sampled_from(["update", "update", "merge", "delta"]))
        i = draw(replica)
        if kind == "update":
            op = draw(spec.operations(spec.replicas[i]))
            before = states[i].copy()
            delta = op.apply(states[i])
            execution.log.append(f"{spec.replicas[i]}: {op!r} -> delta {len(deltas)}")
            assert leq(before, states[i]), f"{op!r} did not inflate the state"
            assert join(before, delta) == states[i], f"{op!r}: old state ⊔ delta != new state"
            seen[i].add(len(deltas))
            deltas.append(delta)
        elif kind == "merge":
            j = draw(replica)
            execution.log.append(f"{spec.replicas[i]}: merge state of {spec.replicas[j]}")
            states[i].merge(states[j])
            seen[i] |= seen[j]
        elif deltas:
            k = draw(st.integers(0, len(deltas) - 1))
            execution.log.append(f"{spec.replicas[i]}: merge delta {k}")
            states[i].merge(deltas[k])
            seen[i].add(k)
    return execution


#: The old name of :func:`executions`.
histories = executions


class LatticeLaws:
    """The laws as test methods. Subclass it with ``spec = CRDTSpec(...)``.

    Each ``check_<law>(data)`` method states one law; every subclass gets its
    own Hypothesis test ``test_<law>`` for each, so that examples saved for
    one type never replay against another.
    """

    spec: ClassVar[CRDTSpec[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in [n for n in dir(cls) if n.startswith("check_")]:
            setattr(cls, "test_" + name.removeprefix("check_"), _law_test(cls, name))

    def _states(self, data: st.DataObject, count: int) -> list[Any]:
        execution = data.draw(executions(self.spec), label="execution")
        note("\n".join(execution.log))
        universe = execution.universe
        picks = data.draw(
            st.lists(st.integers(0, len(universe) - 1), min_size=count, max_size=count),
            label="picked states (replica states first, then deltas)",
        )
        return [universe[k].copy() for k in picks]

    def check_merge_commutative(self, data: st.DataObject) -> None:
        a, b = self._states(data, 2)
        assert join(a, b) == join(b, a)

    def check_merge_associative(self, data: st.DataObject) -> None:
        a, b, c = self._states(data, 3)
        assert join(join(a, b), c) == join(a, join(b, c))

    def check_merge_idempotent(self, data: st.DataObject) -> None:
        (a,) = self._states(data, 1)
        assert join(a, a) == a
        alias = a.copy()
        alias.merge(alias)
        assert alias == a

    def check_merge_inflates(self, data: st.DataObject) -> None:
        a, b = self._states(data, 2)
        joined = join(a, b)
        assert leq(a, joined)
        assert leq(b, joined)

    def check_merge_leaves_argument_unchanged(self, data: st.DataObject) -> None:
        a, b = self._states(data, 2)
        before = b.copy()
        a.merge(b)
        assert b == before

    def check_merge_rejects_other_types(self, data: st.DataObject) -> None:
        (a,) = self._states(data, 1)
        before = a.copy()
        try:
            a.merge(_Stranger())
        except TypeError:
            pass
        else:
            raise AssertionError("merging a different type did not raise TypeError")
        assert a == before

    def check_delta_law(self, data: st.DataObject) -> None:
        execution = data.draw(executions(self.spec), label="execution")
        note("\n".join(execution.log))
        for state, seen in zip(execution.states, execution.seen, strict=True):
            indices = data.draw(st.permutations(sorted(seen)))
            duplicates = data.draw(st.lists(st.sampled_from(indices))) if indices else []
            joined = self.spec.new()
            for k in [*indices, *duplicates]:
                joined.merge(execution.deltas[k])
            assert joined == state, f"deltas {indices} + {duplicates} do not join to the state"
            if self.spec.encodable:
                assert codec.encode(joined) == codec.encode(state)

    def check_copy_is_independent(self, data: st.DataObject) -> None:
        a, other = self._states(data, 2)
        before, clone = a.copy(), a.copy()
        assert clone == a
        op = data.draw(self.spec.operations(self.spec.replicas[0]), label="update on the copy")
        op.apply(clone)
        clone.merge(other)
        assert a == before, "updating or merging into a copy changed the original"

    def check_codec_round_trip(self, data: st.DataObject) -> None:
        if not self.spec.encodable:
            return
        (a,) = self._states(data, 1)
        encoded = codec.encode(a)
        decoded = codec.decode(encoded)
        assert decoded == a
        assert type(decoded) is type(a)
        assert codec.encode(decoded) == encoded

    def check_equal_states_encode_equal(self, data: st.DataObject) -> None:
        if not self.spec.encodable:
            return
        a, b, c = self._states(data, 3)
        left, right = join(join(a, b), c), join(c, join(b, a))
        assert left == right
        assert codec.encode(left) == codec.encode(right)


class _Stranger:
    """An object of no CRDT type, for the merge-type check."""


def _law_test(cls: type[LatticeLaws], name: str) -> Callable[[LatticeLaws], None]:
    def test(self: LatticeLaws, data: st.DataObject) -> None:
        getattr(self, name)(data)

    test.__name__ = "test_" + name.removeprefix("check_")
    test.__qualname__ = f"{cls.__qualname__}.{test.__name__}"
    test.__doc__ = getattr(cls, name).__doc__
    return given(data=st.data())(test)


def check_laws(spec: CRDTSpec[Any], settings: hypothesis.settings | None = None) -> None:
    """Run every law of :class:`LatticeLaws` on ``spec`` (under ``settings``,
    else the active Hypothesis profile); the first law that fails raises its
    shrunk counterexample.

    >>> import hypothesis.strategies as st
    >>> from hypothesis import settings
    >>> from crdts import GCounter
    >>> def ops(replica):
    ...     return st.builds(lambda n: Op("increment", (replica, n)), st.integers(0, 3))
    >>> check_laws(CRDTSpec(GCounter, ops), settings(max_examples=5))
    """
    laws = type("Laws", (LatticeLaws,), {"spec": spec})
    for name in sorted(vars(laws)):
        if name.startswith("test_"):
            law = getattr(laws, name)
            if settings is not None:
                law = settings(law)
            law(laws())
