"""Convergence checking: sequential specifications, a seeded soak and a
Hypothesis state machine for any type.

Every update made through :class:`History` is logged with its dot and with the
dots its replica had seen on that key (what it *observed*). After the replicas
have exchanged everything, each key's value must equal its type's sequential
specification (TESTING.md) over the operations that survived, computed from
the log alone, never from the CRDT under test:

- G-Counter: the sum of the increments; PN-Counter: increments minus decrements;
- OR-Set: an element is in iff some add of it was observed by no remove of it;
- LWW-Register: the write with the greatest ``(timestamp, replica)``;
- MV-Register: the writes no other write observed;
- VectorClock: the number of increments per replica.

An operation *survives* when its dot is in the converged replicas' context for
its key; an operation *acknowledged* by another replica (its dot was in that
replica's context) must survive, whatever crashes happen.

>>> import random
>>> from replication import Replicator
>>> r = Replicator("a", [], rng=random.Random(1))
>>> h = History()
>>> h.apply(r, "cart", "ORSet", "add", "milk")
>>> h.apply(r, "cart", "ORSet", "remove", "milk")
>>> h.problems([r])
[]

The convergence machine
-----------------------
:func:`convergence_machine` builds a Hypothesis ``RuleBasedStateMachine`` for
one type: replicas over a :class:`~replication.simnet.SimulatedNetwork`, with
rules for an update at a replica, gossip rounds, loss, duplication, reordering
and long delays, partitions and heals, saving a replica's state, and crashing
a replica back to its saved copy (empty if it never saved) under a new
incarnation. At the end it heals the network, gossips until the replicas agree
(:func:`converged`, within ``max_rounds``) and asserts :meth:`History.problems`
is empty: identical bytes, every value equal to the model over the surviving
operations, nothing lost that another replica held before a crash or that any
replica held at the end. A failure shrinks to a short program of rules. In a
test module, for a built-in type::

    TestORSetConvergence = convergence_machine("ORSet").TestCase

For a type of your own (registered with ``crdts.codec``, as it crosses the
simulated wire as bytes, and with a ``value``), give a factory, a strategy of
``(kind, args)`` updates, and the model: the value a key must hold given the
operations on it that survived (a list of :class:`Operation`). ``mutate`` says
how to apply an update if not by calling the method ``kind`` with the replica
id and then ``args``. Here ``GCounter`` stands in for your type:

>>> import hypothesis.strategies as st
>>> from hypothesis import settings
>>> from hypothesis.stateful import run_state_machine_as_test
>>> from crdts import GCounter
>>> def total(ops):
...     return sum(op.args[0] for op in ops)
>>> increments = st.tuples(st.just("increment"), st.tuples(st.integers(0, 3)))
>>> Machine = convergence_machine(GCounter, increments, total)
>>> quick = settings(max_examples=5, stateful_step_count=10, database=None)
>>> run_state_machine_as_test(Machine, settings=quick)

Needs Hypothesis (``pip install 'crdtkit[testing]'``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeAlias

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from crdts import GCounter, LWWRegister, MVRegister, ORSet, PNCounter, VectorClock
from crdts.base import CRDT
from crdts.dotcontext import CausalContext
from crdts.lwwregister import _order
from replication.replicator import Replicator
from replication.simnet import Faults, SimulatedNetwork

__all__ = [
    "OPERATIONS",
    "TYPES",
    "History",
    "Model",
    "Mutate",
    "Operation",
    "TypeSpec",
    "Update",
    "converged",
    "convergence_machine",
    "expected",
    "random_operation",
]

Dot = tuple[str, int]


def _stopped_clock() -> int:
    # LWW timestamps then come from the logical half of the hybrid clock,
    # so a soak is deterministic for its seed.
    return 0


#: The built-in types by name: how to make an empty one, and its updates.
TYPES: dict[str, Callable[[], CRDT]] = {
    "GCounter": GCounter,
    "PNCounter": PNCounter,
    "ORSet": ORSet,
    "LWWRegister": lambda: LWWRegister(clock=_stopped_clock),
    "MVRegister": MVRegister,
    "VectorClock": VectorClock,
}

_CALLS: dict[tuple[str, str], Callable[[Any, str, tuple[Any, ...]], Any]] = {
    ("GCounter", "increment"): lambda s, me, a: s.increment(me, *a),
    ("PNCounter", "increment"): lambda s, me, a: s.increment(me, *a),
    ("PNCounter", "decrement"): lambda s, me, a: s.decrement(me, *a),
    ("ORSet", "add"): lambda s, me, a: s.add(a[0], me),
    ("ORSet", "remove"): lambda s, me, a: s.remove(a[0]),
    ("LWWRegister", "assign"): lambda s, me, a: s.assign(a[0], me, *a[1:]),
    ("MVRegister", "assign"): lambda s, me, a: s.assign(a[0], me),
    ("VectorClock", "increment"): lambda s, me, a: s.increment(me),
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One logged update."""

    key: str
    type_name: str
    kind: str
    args: tuple[Any, ...]
    dot: Dot
    observed: CausalContext
    delta: CRDT


@dataclass
class History:
    """The log of every update made through :meth:`apply`."""

    operations: list[Operation] = field(default_factory=list)
    #: Types beyond the built-ins (or built-ins with another model), by type name.
    specs: dict[str, TypeSpec] = field(default_factory=dict)

    def spec(self, type_name: str) -> TypeSpec:
        """The :class:`TypeSpec` in :attr:`specs` for ``type_name``, else the
        built-in one; ValueError if there is neither."""
        spec = self.specs.get(type_name)
        return _builtin_spec(type_name) if spec is None else spec

    def apply(self, replica: Replicator, key: str, type_name: str, kind: str, *args: Any) -> None:
        """Make one update on ``replica`` and log it with what it observed."""
        spec = self.spec(type_name)
        observed = replica.ops(key)
        delta = replica.update(key, spec.new, lambda s, me: spec.mutate(s, me, kind, args))
        dot = (replica.replica_id, replica.clock.vv[replica.replica_id])
        self.operations.append(Operation(key, type_name, kind, args, dot, observed, delta))

    def acknowledged(self, replicas: Sequence[Replicator], by_others_of: str) -> set[Dot]:
        """Dots that some replica other than node ``by_others_of`` holds."""
        held: set[Dot] = set()
        for replica in replicas:
            if replica.node_id == by_others_of:
                continue
            for op in self.operations:
                if replica.ops(op.key).contains(*op.dot):
                    held.add(op.dot)
        return held

    def problems(
        self, replicas: Sequence[Replicator], must_survive: Collection[Dot] = ()
    ) -> list[str]:
        """What is wrong with the replicas now, as sentences; [] when they have
        converged to byte-identical keyspaces whose every value matches the
        specification, and every dot in ``must_survive`` survived."""
        out: list[str] = []
        encodings = {r.encode_keyspace() for r in replicas}
        if len(encodings) > 1:
            out.append(f"the replicas hold {len(encodings)} different keyspaces")
        reference = replicas[0]
        by_key: dict[str, list[Operation]] = {}
        for op in self.operations:
            by_key.setdefault(op.key, []).append(op)
        for key, ops in sorted(by_key.items()):
            context = reference.ops(key)
            survivors = [op for op in ops if context.contains(*op.dot)]
            lost = [op.dot for op in ops if op.dot in must_survive and op not in survivors]
            if lost:
                out.append(f"{key}: acknowledged operations lost: {lost[:5]}")
            state = reference.get(key)
            want = self.spec(ops[0].type_name).model(survivors)
            got = None if state is None else state.value  # type: ignore[attr-defined]
            if survivors and got != want:
                out.append(f"{key}: holds {got!r:.200}, the specification gives {want!r:.200}")
        return out


def expected(type_name: str, ops: Sequence[Operation]) -> object:
    """The sequential specification of ``type_name`` over ``ops``."""
    if type_name == "GCounter":
        return sum(op.args[0] for op in ops)
    if type_name == "PNCounter":
        return sum(op.args[0] if op.kind == "increment" else -op.args[0] for op in ops)
    if type_name == "VectorClock":
        counts: dict[str, int] = {}
        for op in ops:
            counts[op.dot[0]] = counts.get(op.dot[0], 0) + 1
        return counts
    if type_name == "ORSet":
        removes = [op for op in ops if op.kind == "remove"]
        return frozenset(
            op.args[0]
            for op in ops
            if op.kind == "add"
            and not any(r.args[0] == op.args[0] and r.observed.contains(*op.dot) for r in removes)
        )
    if type_name == "MVRegister":
        return frozenset(
            op.args[0]
            for op in ops
            if not any(other is not op and other.observed.contains(*op.dot) for other in ops)
        )
    if type_name == "LWWRegister":
        writes = [op.delta._write for op in ops]  # type: ignore[attr-defined]
        return max(writes, key=_order)[2] if writes else None
    raise ValueError(f"no specification for {type_name}")


_ELEMENTS = ("x", "y", "z", 1, 2, b"b")


def random_operation(rng: random.Random) -> tuple[str, str, str, tuple[Any, ...]]:
    """A random ``(key, type name, kind, args)`` over every built-in type; the
    key names its type, so a key's type never changes."""
    type_name = rng.choice(sorted(TYPES))
    key = f"{type_name}-{rng.randrange(3)}"
    element = rng.choice(_ELEMENTS)
    if type_name == "GCounter":
        return key, type_name, "increment", (rng.randint(0, 9),)
    if type_name == "PNCounter":
        return key, type_name, rng.choice(["increment", "decrement"]), (rng.randint(0, 9),)
    if type_name == "ORSet":
        return key, type_name, rng.choice(["add", "add", "remove"]), (element,)
    if type_name == "LWWRegister":
        timestamp = rng.choice([None, None, rng.randrange(5)])
        return key, type_name, "assign", (element, timestamp)
    if type_name == "MVRegister":
        return key, type_name, "assign", (element,)
    return key, type_name, "increment", ()


# -- a user's own types --------------------------------------------------------------

#: The sequential specification of one type: the value a key must hold, given
#: the logged operations on it that survived.
Model: TypeAlias = Callable[[Sequence[Operation]], object]
#: ``mutate(state, replica id, kind, args)`` applies one update, returns its delta.
Mutate: TypeAlias = Callable[[Any, str, str, tuple[Any, ...]], CRDT]


def _replica_first(state: Any, replica: str, kind: str, args: tuple[Any, ...]) -> CRDT:
    # The counters' and the vector clock's convention; a type whose mutators
    # take the replica id elsewhere (or not at all) brings its own ``mutate``.
    delta: CRDT = getattr(state, kind)(replica, *args)
    return delta


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """What :class:`History` needs to know about a type: how to make an empty
    one, how to apply an update ``(kind, args)`` on behalf of a replica (by
    default the method ``kind``, called with the replica id and then ``args``),
    and its model. The value compared with the model is the state's ``value``.

    >>> from crdts import GCounter
    >>> spec = TypeSpec(GCounter, lambda ops: sum(op.args[0] for op in ops))
    >>> spec.mutate(GCounter(), "a", "increment", (2,)).value
    2
    """

    new: Callable[[], CRDT]
    model: Model
    mutate: Mutate = _replica_first


def _builtin_spec(type_name: str) -> TypeSpec:
    if type_name not in TYPES:
        raise ValueError(f"no built-in type {type_name!r}: give History a TypeSpec for it")

    def mutate(state: Any, replica: str, kind: str, args: tuple[Any, ...]) -> CRDT:
        delta: CRDT = _CALLS[(type_name, kind)](state, replica, args)
        return delta

    return TypeSpec(TYPES[type_name], partial(expected, type_name), mutate)


# -- the convergence machine -----------------------------------------------------------


def converged(replicas: Sequence[Replicator]) -> bool:
    """Whether the replicas hold byte-identical keyspaces and the same
    operations on every key. Equal bytes alone do not say every operation has
    arrived: an update may leave the state as it was (an increment by 0, a
    write that loses to a later timestamp). Cost: O(total state size)."""
    first = replicas[0]
    encoding, keys = first.encode_keyspace(), first.keys()
    return all(
        r.encode_keyspace() == encoding and all(r.ops(k) == first.ops(k) for k in keys)
        for r in replicas[1:]
    )


#: One update as the machine draws it: the mutator's name and its arguments
#: (the replica id is the replicator's to give, as it changes on a restart).
Update: TypeAlias = tuple[str, tuple[Any, ...]]

_AMOUNTS = st.integers(0, 9)
_FEW_ELEMENTS = st.sampled_from(["x", "y", 1, b"b"])  # few, so adds and removes meet

#: Updates for each built-in type, like :func:`random_operation`'s.
OPERATIONS: dict[str, st.SearchStrategy[Update]] = {
    "GCounter": st.tuples(st.just("increment"), st.tuples(_AMOUNTS)),
    "PNCounter": st.tuples(st.sampled_from(["increment", "decrement"]), st.tuples(_AMOUNTS)),
    "ORSet": st.tuples(st.sampled_from(["add", "remove"]), st.tuples(_FEW_ELEMENTS)),
    # An explicit timestamp makes equal readings and clocks stepping backwards.
    "LWWRegister": st.tuples(
        st.just("assign"), st.tuples(_FEW_ELEMENTS, st.none() | st.integers(0, 4))
    ),
    "MVRegister": st.tuples(st.just("assign"), st.tuples(_FEW_ELEMENTS)),
    "VectorClock": st.just(("increment", ())),
}

# Every fault shrinks away to the first choice: none.
_FAULTS = st.builds(
    Faults,
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplication=st.sampled_from([0.0, 0.05, 0.3]),
    reorder=st.booleans(),
    long_delay=st.sampled_from([0.0, 0.05]),
)


@st.composite
def _partitions(draw: st.DrawFn, nodes: Sequence[str]) -> list[list[str]]:
    order = draw(st.permutations(nodes))
    cuts = sorted(draw(st.sets(st.integers(1, len(nodes) - 1), min_size=1, max_size=3)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(nodes)], strict=True)]


def convergence_machine(
    crdt: str | Callable[[], CRDT],
    operations: st.SearchStrategy[Update] | None = None,
    model: Model | None = None,
    *,
    mutate: Mutate | None = None,
    replicas: int = 4,
    keys: int = 2,
    max_rounds: int = 30,
) -> type[RuleBasedStateMachine]:
    """A Hypothesis state machine that checks replicas of one type converge to
    ``model`` over a faulty network (see the module docstring).

    ``crdt`` is a name in :data:`TYPES` (``operations``, ``model`` and
    ``mutate`` then default to the built-in ones) or a factory of empty states
    of a type registered with ``crdts.codec`` (``operations`` and ``model`` are
    then required; ``mutate`` is as in :class:`TypeSpec`). ``replicas`` nodes
    share ``keys`` keys; the final check allows ``max_rounds`` gossip rounds
    after the heal. Bind ``Machine.TestCase`` in a test module, or call
    ``hypothesis.stateful.run_state_machine_as_test(Machine)``.
    """
    if isinstance(crdt, str):
        builtin = _builtin_spec(crdt)
        type_name = crdt
        updates = OPERATIONS[crdt] if operations is None else operations
        model = builtin.model if model is None else model
        mutate = builtin.mutate if mutate is None else mutate
        new = builtin.new
    else:
        if operations is None or model is None:
            raise TypeError("a type of your own needs its operations and its model")
        type_name = crdt().TYPE_TAG
        updates = operations
        mutate = _replica_first if mutate is None else mutate
        new = crdt
    if replicas < 2 or keys < 1 or max_rounds < 1:
        raise ValueError("replicas >= 2, keys >= 1 and max_rounds >= 1")
    spec = TypeSpec(new, model, mutate)
    nodes = [f"r{i}" for i in range(replicas)]
    node = st.sampled_from(nodes)

    class ConvergenceMachine(RuleBasedStateMachine):
        seed: int
        net: SimulatedNetwork
        options: dict[str, int]

        def __init__(self) -> None:
            super().__init__()
            self.history = History(specs={type_name: spec})
            self.replicas: dict[str, Replicator] = {}
            self.saved: dict[str, bytes] = {}
            self.incarnations = dict.fromkeys(nodes, 0)
            self.must_survive: set[Dot] = set()
            self.partitioned = False

        def _random(self, node: str) -> random.Random:
            # One stream per incarnation: restarting one replica leaves the
            # others' choices alone, so a failing run shrinks without them.
            return random.Random(f"{self.seed}/{node}/{self.incarnations[node]}")

        # A single-entry chunk and a short log drive the replicator down its
        # chunked-sync and log-overflow paths; both shrink to the defaults.
        @initialize(
            seed=st.integers(0, 2**32 - 1),
            fanout=st.sampled_from([1, 2]),
            chunk_size=st.sampled_from([500, 1]),
            log_limit=st.sampled_from([10_000, 3]),
        )
        def start(self, seed: int, fanout: int, chunk_size: int, log_limit: int) -> None:
            self.seed = seed
            self.options = {"fanout": fanout, "chunk_size": chunk_size, "log_limit": log_limit}
            self.net = SimulatedNetwork(seed=seed)
            for node_id in nodes:
                self.replicas[node_id] = Replicator(
                    node_id, nodes, rng=self._random(node_id), **self.options
                )
                self.net.add(self.replicas[node_id])

        # A few updates per step, as one rule among seven would leave few.
        @rule(
            node=node,
            key=st.sampled_from([f"k{i}" for i in range(keys)]),
            ops=st.lists(updates, min_size=1, max_size=3),
        )
        def update(self, node: str, key: str, ops: list[Update]) -> None:
            for kind, args in ops:
                self.history.apply(self.replicas[node], key, type_name, kind, *args)

        @rule(rounds=st.integers(1, 3))
        def gossip(self, rounds: int) -> None:
            self.net.run_rounds(rounds)

        @rule(faults=_FAULTS)
        def set_faults(self, faults: Faults) -> None:
            self.net.faults = faults

        @rule(groups=_partitions(nodes))
        def partition(self, groups: list[list[str]]) -> None:
            self.net.partition(groups)
            self.partitioned = True

        @precondition(lambda self: self.partitioned)
        @rule()
        def heal(self) -> None:
            self.net.heal()
            self.partitioned = False

        @rule(node=node)
        def save(self, node: str) -> None:
            self.saved[node] = self.replicas[node].save()

        @rule(node=node)
        def crash_and_restart(self, node: str) -> None:
            # What the others hold now must outlive the crash; what only this
            # replica held may go with it.
            replicas = list(self.replicas.values())
            self.must_survive = self.history.acknowledged(replicas, by_others_of=node)
            self.incarnations[node] += 1
            number, saved = self.incarnations[node], self.saved.get(node)
            if saved is None:  # it never wrote its state down: back empty
                replica = Replicator(
                    node, nodes, rng=self._random(node), incarnation=number, **self.options
                )
            else:
                replica = Replicator.restore(
                    saved, nodes, rng=self._random(node), incarnation=number, **self.options
                )
            self.replicas[node] = replica
            self.net.restart(replica)

        def teardown(self) -> None:
            replicas = list(self.replicas.values())
            # Only a crash loses operations, and none comes now: whatever some
            # replica holds must survive too.
            held = {
                op.dot
                for op in self.history.operations
                if any(r.ops(op.key).contains(*op.dot) for r in replicas)
            }
            self.net.heal()
            rounds = self.net.run_until(lambda: converged(replicas), max_rounds)
            problems = self.history.problems(replicas, self.must_survive | held)
            if rounds is None:
                problems.insert(0, f"no convergence within {max_rounds} rounds of the heal")
            assert not problems, "\n".join(problems)

    # The shrunk program a failure prints then opens with the type's name.
    ConvergenceMachine.__name__ = ConvergenceMachine.__qualname__ = f"{type_name}Convergence"
    return ConvergenceMachine
