"""A Hypothesis state machine that checks convergence for any type.

It builds on :mod:`replication.history` (operation logs and sequential
specifications), whose names it hands on.

The convergence machine
-----------------------
:func:`convergence_machine` builds a Hypothesis ``RuleBasedStateMachine`` for
one type: replicas over a :class:`~replication.simnet.SimulatedNetwork`, with
rules for an update at a replica, gossip rounds, loss, duplication, reordering
and long delays, partitions and heals, a replica writing its changed keys to
its store (a ``replication.store.MemoryStore``), and crashing a replica back
to what its store holds (empty if it never wrote) under a new incarnation,
through the same restart path as a node. With ``membership=True`` every
replica runs beside a ``replication.membership.Membership``
(:class:`~replication.membership.MemberNode`), and the membership changes:
a spare node *joins* through one seed, a node *leaves* gracefully (what it
held must live on), a node is crashed and *downed* by an operator at another
node (what only it held may go), and a restarted node rejoins as a new
incarnation that replaces its old one. At the end it heals the network,
gossips until the leavers are gone and the replicas agree
(:func:`converged`, within ``max_rounds``) and asserts
:meth:`History.problems` is empty: identical bytes, every value equal to the
model over the surviving operations, nothing lost that another replica held
before a crash or that any replica held at the end (a leaver included).
A failure shrinks to a short program of rules. In a test module, for a
built-in type::

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
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from crdts.base import CRDT
from replication.history import (
    TYPES,
    Dot,
    History,
    Model,
    Mutate,
    Operation,
    TypeSpec,
    _builtin_spec,
    _replica_first,
    converged,
    expected,
    random_operation,
)
from replication.membership import MemberNode, Membership, MembershipSettings, Status
from replication.replicator import Replicator
from replication.simnet import Faults, SimulatedNetwork
from replication.store import MemoryStore, WriteBehind, restore

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
    membership: bool = False,
    spares: int = 2,
) -> type[RuleBasedStateMachine]:
    """A Hypothesis state machine that checks replicas of one type converge to
    ``model`` over a faulty network (see the module docstring).

    ``crdt`` is a name in :data:`TYPES` (``operations``, ``model`` and
    ``mutate`` then default to the built-in ones) or a factory of empty states
    of a type registered with ``crdts.codec`` (``operations`` and ``model`` are
    then required; ``mutate`` is as in :class:`TypeSpec`). ``replicas`` nodes
    share ``keys`` keys; the final check allows ``max_rounds`` gossip rounds
    after the heal. With ``membership``, up to ``spares`` more nodes may
    join, and nodes leave and are downed (at least two stay); without it the
    replicas are a fixed set. Bind ``Machine.TestCase`` in a test module, or call
    ``hypothesis.stateful.run_state_machine_as_test(Machine)``.
    """
    table = None
    if isinstance(crdt, str):
        builtin = _builtin_spec(crdt)
        type_name = crdt
        updates = OPERATIONS[crdt] if operations is None else operations
        model = builtin.model if model is None else model
        if mutate is None:  # through the type's table, handed each replica's clock
            mutate, table = builtin.mutate, builtin.operations
        new = builtin.new
    else:
        if operations is None or model is None:
            raise TypeError("a type of your own needs its operations and its model")
        type_name = crdt().TYPE_TAG
        updates = operations
        mutate = _replica_first if mutate is None else mutate
        new = crdt
    if replicas < 2 or keys < 1 or max_rounds < 1 or spares < 0:
        raise ValueError("replicas >= 2, keys >= 1, max_rounds >= 1 and spares >= 0")
    spec = TypeSpec(new, model, mutate, table, table is not None and table.names_replicas)
    nodes = [f"r{i}" for i in range(replicas)]
    pool = nodes + ([f"r{i}" for i in range(replicas, replicas + spares)] if membership else [])
    # Time is in rounds: a member silent for 4 to 5 rounds is unreachable.
    detector = MembershipSettings(detector="timeout", timeout=4.0, jitter=1.0)

    class ConvergenceMachine(RuleBasedStateMachine):
        seed: int
        net: SimulatedNetwork
        options: dict[str, Any]

        def __init__(self) -> None:
            super().__init__()
            self.history = History(specs={type_name: spec})
            self.replicas: dict[str, Replicator] = {}
            # Each replica writes its changed keys to its store, as a node
            # does, and restarts from the store, through the node's own path.
            self.stores = {node_id: MemoryStore() for node_id in pool}
            self.changes: dict[str, WriteBehind] = {}
            self.incarnations = dict.fromkeys(pool, 0)
            self.members: dict[str, MemberNode] = {}
            self.live: list[str] = []  # in the cluster: not downed, not left
            self.leaving: set[str] = set()
            self.spares = pool[replicas:]
            self.must_survive: set[Dot] = set()
            self.partitioned = False

        def _random(self, node: str) -> random.Random:
            # One stream per incarnation: restarting one replica leaves the
            # others' choices alone, so a failing run shrinks without them.
            return random.Random(f"{self.seed}/{node}/{self.incarnations[node]}")

        # A single-entry chunk and a short log drive the replicator down its
        # chunked and catch-up paths; both shrink to the defaults.
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
                replica = Replicator(node_id, nodes, rng=self._random(node_id), **self.options)
                self._run(replica, [n for n in nodes if n != node_id])
            self.live = list(nodes)

        def _run(self, replica: Replicator, seeds: list[str]) -> None:
            # Put a replica on the network, beside its membership if any.
            node_id = replica.node_id
            self.replicas[node_id] = replica
            self.changes[node_id] = WriteBehind(replica)
            running: Replicator | MemberNode = replica
            if membership:
                rng = random.Random(f"{self.seed}/{node_id}/{self.incarnations[node_id]}/m")
                member = Membership(
                    replica.replica_id, node_id, seeds=seeds, rng=rng, settings=detector
                )
                running = self.members[node_id] = MemberNode(replica, member)
            if node_id in self.net.nodes:
                self.net.restart(running)
            else:
                self.net.add(running)

        def _pick(self, data: st.DataObject, among: Sequence[str]) -> str:
            return data.draw(st.sampled_from(sorted(among)), label="node")

        # A few updates per step, as one rule among seven would leave few.
        # A leaver takes no more updates: what it holds must be handed off.
        @rule(
            data=st.data(),
            key=st.sampled_from([f"k{i}" for i in range(keys)]),
            ops=st.lists(updates, min_size=1, max_size=3),
        )
        def update(self, data: st.DataObject, key: str, ops: list[Update]) -> None:
            node = self._pick(data, [n for n in self.live if n not in self.leaving])
            for kind, args in ops:
                self.history.apply(self.replicas[node], key, type_name, kind, *args)

        @rule(rounds=st.integers(1, 3))
        def gossip(self, rounds: int) -> None:
            self.net.run_rounds(rounds)

        @rule(faults=_FAULTS)
        def set_faults(self, faults: Faults) -> None:
            self.net.faults = faults

        @rule(groups=_partitions(pool))
        def partition(self, groups: list[list[str]]) -> None:
            self.net.partition(groups)
            self.partitioned = True

        @precondition(lambda self: self.partitioned)
        @rule()
        def heal(self) -> None:
            self.net.heal()
            self.partitioned = False

        @rule(data=st.data())
        def save(self, data: st.DataObject) -> None:
            node = self._pick(data, self.live)
            self.changes[node].flush(self.stores[node])

        def _holders(self) -> list[Replicator]:
            # The replicas whose operations must live on: a leaver that has
            # decided to exit (it handed off what it held then) no longer counts.
            return [
                self.replicas[n]
                for n in self.live
                if not membership or self.members[n].membership.status < Status.EXITING
            ]

        def _crash(self, node: str) -> None:
            # What the others hold now must outlive the crash; what only this
            # replica held may go with it.
            replicas = self._holders()
            self.must_survive = self.history.acknowledged(replicas, by_others_of=node)
            self.leaving.discard(node)

        @rule(data=st.data())
        def crash_and_restart(self, data: st.DataObject) -> None:
            node = self._pick(data, self.live)
            self._crash(node)
            self.incarnations[node] += 1
            # Back to what its store holds: empty if it never wrote. Its new
            # incarnation rejoins, and replaces the old one among the members.
            replica = restore(
                self.stores[node].load(),
                node,
                [n for n in self.live if n != node],
                rng=self._random(node),
                incarnation=self.incarnations[node],
                **self.options,
            )
            self._run(replica, [n for n in self.live if n != node])

        @precondition(lambda self: self.spares)
        @rule(data=st.data())
        def join(self, data: st.DataObject) -> None:
            node = self.spares.pop(0)
            seed = self._pick(data, self.live)  # it knows one seed, no peer
            self._run(Replicator(node, [], rng=self._random(node), **self.options), [seed])
            self.live.append(node)

        @precondition(lambda self: membership and len(self.live) - len(self.leaving) > 2)
        @rule(data=st.data())
        def leave(self, data: st.DataObject) -> None:
            node = self._pick(data, [n for n in self.live if n not in self.leaving])
            self.members[node].membership.leave()
            self.leaving.add(node)

        def _all_joined(self) -> bool:
            # Down only once every live node knows every other: a node that
            # has not joined knows no member but its seeds, and two parts
            # that formed apart (a partition at start) know each other only
            # through some members; were those all downed, the parts could
            # never meet again (as in a real cluster: an operator's mistake).
            live = set(self.live)
            return all(live <= self.members[n].membership.live_nodes() for n in self.live)

        @precondition(
            lambda self: membership
            and len(self.live) - len(self.leaving) > 2
            and self._all_joined()
        )
        @rule(data=st.data())
        def down(self, data: st.DataObject) -> None:
            # An operator's down of a node that crashed, at another node.
            node = self._pick(data, [n for n in self.live if n not in self.leaving])
            self._crash(node)
            self.net.crash(node)
            self.live.remove(node)
            by = self._pick(data, [n for n in self.live if n not in self.leaving])
            self.members[by].membership.down(node)

        def _left(self) -> bool:
            for node in list(self.leaving):
                if self.members[node].membership.status == Status.REMOVED:
                    self.leaving.discard(node)
                    self.live.remove(node)
            return not self.leaving

        def teardown(self) -> None:
            every = self._holders()
            # Only a crash loses operations, and none comes now: whatever some
            # replica holds (a leaver's included) must survive too.
            held = {
                op.dot
                for op in self.history.operations
                if any(r.ops(op.key).contains(*op.dot) for r in every)
            }
            self.net.heal()

            def done() -> bool:
                return self._left() and converged([self.replicas[n] for n in self.live])

            rounds = self.net.run_until(done, max_rounds)
            replicas = [self.replicas[n] for n in self.live]
            problems = self.history.problems(replicas, self.must_survive | held)
            if rounds is None:
                problems.insert(0, f"no convergence within {max_rounds} rounds of the heal"
                                + (f" (still leaving: {sorted(self.leaving)})" if self.leaving
                                   else ""))
            assert not problems, "\n".join(problems)

    # The shrunk program a failure prints then opens with the type's name.
    ConvergenceMachine.__name__ = ConvergenceMachine.__qualname__ = f"{type_name}Convergence"
    return ConvergenceMachine
