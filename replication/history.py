"""Operation logs and sequential specifications: what replicas must converge to.

Every update made through :class:`History` is logged with its dot and with the
operations its replica had seen on that key (what it *observed*, as per-key
dot ranges: ``replication.dotranges``). After the replicas
have exchanged everything, each key's value must equal its type's sequential
specification (TESTING.md) over the operations that survived, computed from
the log alone, never from the CRDT under test:

- G-Counter: the sum of the increments; PN-Counter: increments minus decrements;
- OR-Set: an element is in iff some add of it was observed by no remove of it;
- LWW-Register: the write with the greatest ``(timestamp, replica)``;
- MV-Register: the writes no other write observed;
- VectorClock: the number of increments per replica.

An operation *survives* when its key's bookkeeping in the converged replicas
covers its dot; an operation *acknowledged* by another replica (its dot was in that
replica's context) must survive, whatever crashes happen.

Pruning (docs/pruning.md) folds the operations of a retired replica id into
an operation of a live owner, and its markers are later dropped, so the
bookkeeping alone no longer names them. Give every replica
``on_prune=history.pruned`` (the replicator's hook): the log then records
each folding, ``(key, owner's dot) -> (retired id, last dot folded)``, and an
operation of a retired id survives when the owner's operation that folded it
survives (through chains of foldings, as owners retire in turn). For the
vector clock, whose value names replicas, the model counts a folded
operation under the owner that holds it now.

>>> import random
>>> from replication import Replicator
>>> r = Replicator("a", [], rng=random.Random(1))
>>> h = History()
>>> h.apply(r, "cart", "ORSet", "add", "milk")
>>> h.apply(r, "cart", "ORSet", "remove", "milk")
>>> h.problems([r])
[]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from crdts import GCounter, LWWRegister, MVRegister, ORMap, ORSet, PNCounter, VectorClock, codec
from crdts.base import CRDT, expect_list, expect_replica, expect_uint
from crdts.errors import DecodeError, InvalidOperation
from crdts.operations import Operations, operations_of
from replication.dotranges import DotRanges
from replication.messages import Entry
from replication.replicator import Replicator

__all__ = [
    "TYPES",
    "Dot",
    "History",
    "Model",
    "Mutate",
    "Operation",
    "TypeSpec",
    "check_update",
    "converged",
    "expected",
    "random_operation",
]

Dot = tuple[str, int]


#: The built-in types by name. Their operations, argument checks and models
#: are their own (``crdts.operations``): nothing here special-cases a type.
TYPES: dict[str, type[CRDT]] = {
    cls.TYPE_TAG: cls
    for cls in (GCounter, PNCounter, ORSet, LWWRegister, MVRegister, VectorClock, ORMap)
}


class Operation:
    """One logged update: its key, type, operation and arguments, its dot,
    what it observed on its key, and its delta.

    The delta may be given as its canonical CBOR bytes, and what it observed
    as its payload (``DotRanges.to_payload``), as a node answers them: each
    is then decoded (and checked, DecodeError) when first read, so a
    client that only logs updates, as a pipelining one does by the
    thousand, never pays for decoding what nobody reads (it was a third
    of such a client's CPU).

    >>> from crdts import GCounter, codec
    >>> delta = GCounter(); _ = delta.increment("a", 2)
    >>> op = Operation("k", "GCounter", "increment", (2,), ("a", 1), DotRanges(),
    ...                codec.encode(delta))
    >>> op.delta.value, op == Operation("k", "GCounter", "increment", (2,), ("a", 1),
    ...                                 DotRanges(), delta)
    (2, True)

    Cost: O(1); decoding a delta or observed ranges given encoded, O(their
    size), once.
    """

    __slots__ = ("_delta", "_observed", "args", "dot", "key", "kind", "type_name")

    key: str
    type_name: str
    kind: str
    args: tuple[Any, ...]
    dot: Dot
    _observed: DotRanges | list[object]
    _delta: CRDT | bytes

    def __init__(  # noqa: PLR0917 (positional, as the dataclass it was)
        self, key: str, type_name: str, kind: str, args: tuple[Any, ...], dot: Dot,
        observed: DotRanges | list[object], delta: CRDT | bytes,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "key", key)
        set_(self, "type_name", type_name)
        set_(self, "kind", kind)
        set_(self, "args", args)
        set_(self, "dot", dot)
        set_(self, "_observed", observed)
        set_(self, "_delta", delta)

    @property
    def observed(self) -> DotRanges:
        """The operations it observed on its key (decoded now if they came
        as a payload)."""
        observed = self._observed
        if type(observed) is list:
            observed = DotRanges.from_payload(observed, "observed")
            object.__setattr__(self, "_observed", observed)
        assert isinstance(observed, DotRanges)
        return observed

    @property
    def delta(self) -> CRDT:
        """The update's delta (decoded now if it came as bytes)."""
        delta = self._delta
        if type(delta) is bytes:
            delta = codec.decode(delta)
            object.__setattr__(self, "_delta", delta)
        assert isinstance(delta, CRDT)
        return delta

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Operation is frozen: cannot set {name!r}")

    def _fields(self) -> tuple[object, ...]:
        return (self.key, self.type_name, self.kind, self.args, self.dot, self.observed,
                self.delta)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Operation:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:  # (equal operations share these)
        return hash((self.key, self.type_name, self.kind, self.dot))

    def __repr__(self) -> str:
        return ("Operation(key={!r}, type_name={!r}, kind={!r}, args={!r}, dot={!r}, "
                "observed={!r}, delta={!r})".format(*self._fields()))

    def __reduce__(self) -> tuple[object, ...]:
        return (Operation, self._fields())

    def replace(self, *, dot: Dot | None = None, observed: DotRanges | None = None
                ) -> Operation:
        """This operation with another dot or observed ranges (what
        ``dataclasses.replace`` did when it was a dataclass).

        >>> from crdts import GCounter
        >>> op = Operation("k", "GCounter", "increment", (1,), ("a", 1), DotRanges(), GCounter())
        >>> op.replace(dot=("b", 1)).dot, op.dot
        (('b', 1), ('a', 1))

        Cost: O(1)."""
        return Operation(self.key, self.type_name, self.kind, self.args,
                         self.dot if dot is None else dot,
                         self._observed if observed is None else observed, self._delta)

    def entry(self) -> Entry:
        """The update as an entry: its key, its delta and its stretch (the
        writer's next operation on the key after what it observed; what a
        journal keeps of it). Cost: O(1) besides the delta, shared."""
        return Entry(self.key, self.delta, self.observed.successor(*self.dot))


@dataclass
class History:
    """The log of every update made through :meth:`apply`."""

    operations: list[Operation] = field(default_factory=list)
    #: Types beyond the built-ins (or built-ins with another model), by type name.
    specs: dict[str, TypeSpec] = field(default_factory=dict)
    #: (key, retired id) -> [(last dot folded, the owner's dot that folded them)]
    foldings: dict[tuple[str, str], list[tuple[int, Dot]]] = field(default_factory=dict)

    def pruned(self, key: str, removed: str, span: tuple[int, int], owner_dot: Dot) -> None:
        """Record a folding (the replicator's ``on_prune`` hook): ``removed``'s
        operations on ``key`` up to dot ``span[1]`` are now counted through
        the operation ``owner_dot``. Cost: O(1)."""
        self.foldings.setdefault((key, removed), []).append((span[1], owner_dot))

    def holder(self, key: str, ops: DotRanges, dot: Dot) -> str | None:
        """The replica id under which the bookkeeping ``ops`` of ``key``
        holds the operation ``dot``: its own writer, the owner it was folded
        into (and so on, through the chains of foldings), or None if it is
        not held. An operation may have been folded more than once: an
        owner that folded it and crashed before its folding spread is a
        new incarnation, which folds it again into an operation of its own.
        Cost: O(foldings reachable from ``dot``)."""
        todo, seen = [dot], {dot}
        while todo:
            dot = todo.pop()
            if ops.contains(*dot):
                return dot[0]
            writer, counter = dot
            for upto, owner in self.foldings.get((key, writer), ()):
                if counter <= upto and owner not in seen:
                    seen.add(owner)
                    todo.append(owner)
        return None

    def to_bytes(self) -> bytes:
        """The log of the built-in types' operations as canonical CBOR, for
        :meth:`from_bytes` (``crdtkit check --log`` reads it).

        >>> r = Replicator("a", [], rng=random.Random(1))
        >>> h = History()
        >>> h.apply(r, "n", "GCounter", "increment", 2)
        >>> History.from_bytes(h.to_bytes()).operations == h.operations
        True

        Cost: O(total size of the operations).
        """
        return codec.encode_plain(
            [
                _LOG_TAG,
                _LOG_VERSION,
                [
                    [
                        op.key,
                        op.type_name,
                        op.kind,
                        list(op.args),
                        *op.dot,
                        op.observed.to_payload(),
                        codec.encode(op.delta),
                    ]
                    for op in self.operations
                ],
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = 1 << 30) -> History:
        """Parse :meth:`to_bytes` output (untrusted): DecodeError unless every
        operation is a well-formed operation of a registered type (its
        table's) whose delta has that type. Cost: O(len(data))."""
        raw = expect_list(codec.decode_plain(data, max_size=max_size), "log")
        if len(raw) != 3 or raw[:2] != [_LOG_TAG, _LOG_VERSION]:
            raise DecodeError("not a crdtkit operation log")
        operations = []
        for item in expect_list(raw[2], "log"):
            fields = expect_list(item, "operation")
            if len(fields) != 8:
                raise DecodeError("operation: expected eight fields")
            key, type_name, kind, args, replica, counter, observed, delta = fields
            if not isinstance(key, str):
                raise DecodeError("operation: the key is a str")
            type_name, kind, args = check_update(type_name, kind, args)
            if type(delta) is not bytes:
                raise DecodeError("operation: the delta is not bytes")
            state = codec.decode(delta)
            if type_name != state.TYPE_TAG:
                raise DecodeError(f"operation: a {state.TYPE_TAG} delta for a {type_name}")
            operations.append(
                Operation(
                    key,
                    type_name,
                    kind,
                    tuple(args),
                    (expect_replica(replica, "dot"), expect_uint(counter, "dot", 1)),
                    _observed(observed),
                    state,
                )
            )
        return cls(operations)

    def spec(self, type_name: str) -> TypeSpec:
        """The :class:`TypeSpec` in :attr:`specs` for ``type_name``, else the
        one of the type registered under that name, from its operation
        table; ValueError if there is neither."""
        spec = self.specs.get(type_name)
        return _builtin_spec(type_name) if spec is None else spec

    def apply(self, replica: Replicator, key: str, type_name: str, kind: str, *args: Any) -> None:
        """Make one update on ``replica`` and log it with what it observed.
        Through a type's operation table, the arguments are checked first
        (InvalidOperation, and nothing changes) and logged as checked, and
        the operation is handed the replica's clock (``Replicator.hlc``)."""
        spec = self.spec(type_name)
        table = spec.operations
        mutate: Callable[[Any, str], Any]
        if table is not None:
            args = table.validate(kind, args, max_size=replica.max_state)
            clock = replica.hlc
            mutate = lambda s, me: table.apply(s, me, kind, args, clock)  # noqa: E731
        else:
            mutate = lambda s, me: spec.mutate(s, me, kind, args)  # noqa: E731
        observed = replica.ops(key)
        delta = replica.update(key, spec.new, mutate)
        dot = (replica.replica_id, replica.context.vv[replica.replica_id])
        self.operations.append(Operation(key, type_name, kind, args, dot, observed, delta))

    def acknowledged(self, replicas: Sequence[Replicator], by_others_of: str) -> set[Dot]:
        """Dots that some replica other than node ``by_others_of`` holds."""
        held: set[Dot] = set()
        for replica in replicas:
            if replica.node_id == by_others_of:
                continue
            for op in self.operations:
                if self.holder(op.key, replica.ops(op.key), op.dot) is not None:
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

        def held(key: str) -> Entry | None:
            state = reference.get(key)
            return None if state is None else Entry(key, state, reference.ops(key))

        return out + self.problems_of(held, must_survive)

    def problems_of(
        self, held: Callable[[str], Entry | None], must_survive: Collection[Dot] = ()
    ) -> list[str]:
        """What is wrong with one replica, as sentences, given ``held(key)``:
        its state and dots under a key (None if absent). [] when every value
        matches the specification over the operations that survived, and
        every dot in ``must_survive`` survived. Cost: the lookups, plus
        O(operations) and the models."""
        out: list[str] = []
        by_key: dict[str, list[Operation]] = {}
        for op in self.operations:
            by_key.setdefault(op.key, []).append(op)
        for key, ops in sorted(by_key.items()):
            entry = held(key)
            context = None if entry is None else entry.dots
            survivors = self.survivors(key, ops, context)
            kept = {
                op.dot for op in ops if context is not None and self.holder(key, context, op.dot)
            }
            lost = [op.dot for op in ops if op.dot in must_survive and op.dot not in kept]
            if lost:
                out.append(f"{key}: acknowledged operations lost: {lost[:5]}")
            want = self.spec(ops[0].type_name).model(survivors)
            got = None if entry is None else entry.state.value  # type: ignore[attr-defined]
            if survivors and got != want:
                out.append(f"{key}: holds {got!r:.200}, the specification gives {want!r:.200}")
        return out


    def survivors(
        self, key: str, ops: Sequence[Operation], held: DotRanges | None
    ) -> list[Operation]:
        """The operations of ``ops`` (logged on ``key``) that the bookkeeping
        ``held`` holds, directly or folded into an owner's operation; for
        the vector clock, a folded one is counted under its owner (its
        value names replicas). Cost: O(ops) lookups."""
        if held is None:
            return []
        folded = [
            (writer, upto, owner)
            for (k, writer), found in self.foldings.items()
            if k == key
            for upto, owner in found
        ]
        out: list[Operation] = []
        for op in ops:
            holder = self.holder(key, held, op.dot)
            if holder is None:
                continue
            if holder != op.dot[0] and self.spec(op.type_name).names_replicas:
                op = op.replace(dot=(holder, op.dot[1]))  # noqa: PLW2901
            if folded or op.observed.pruned:
                op = op.replace(observed=self._observed(key, op.observed, folded))  # noqa: PLW2901
            out.append(op)
        return out

    def _observed(
        self, key: str, observed: DotRanges, folded: list[tuple[str, int, Dot]]
    ) -> DotRanges:
        # What an update observed, with the operations folded into an
        # owner's operation it observed (or named by a marker it held) as
        # stretches again, so the models can ask ``observed.contains``.
        out = observed.copy()
        for writer, (hi, hi_dot, _, _) in observed.pruned.items():
            if writer not in out.spans:
                out.spans[writer] = (0, 0, hi, hi_dot)
        for writer, upto, owner in folded:
            span = out.spans.get(writer)
            if (span is None or span[3] < upto) and self.holder(key, observed, owner):
                out.spans[writer] = (0, 0, max(1, upto), upto) if span is None else (
                    span[0], span[1], span[2], upto
                )
        return out


_LOG_TAG, _LOG_VERSION = "crdtkit-log", 2  # 2: observed as per-key dot ranges


def _observed(raw: object) -> DotRanges:
    observed = DotRanges.from_payload(raw, "observed")
    if not observed.is_whole():
        raise DecodeError("observed: not a key's whole bookkeeping")
    return observed

def check_update(type_name: object, kind: object, args: object) -> tuple[str, str, list[object]]:
    """``(type_name, kind, args)`` if they name an operation of a type
    registered with ``crdts.codec`` with arguments it takes (from untrusted
    input; the arguments come back checked, defaults filled in, by the
    type's table: ``crdts.operations``); DecodeError otherwise.

    >>> check_update("GCounter", "increment", [2])
    ('GCounter', 'increment', [2])
    >>> check_update("GCounter", "decrement", [2])
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: a GCounter has no operation 'decrement' (it has: increment)

    Cost: O(size of args).
    """
    items = expect_list(args, "update arguments")
    try:
        _, table = operations_of(type_name)
        checked = table.validate(kind, items)
    except InvalidOperation as exc:
        raise DecodeError(str(exc)) from None
    return type_name, kind, list(checked)  # type: ignore[return-value]  # validated


def expected(type_name: str, ops: Sequence[Operation]) -> object:
    """The sequential specification of ``type_name`` over ``ops``: its
    table's model (``crdts.operations``)."""
    try:
        return operations_of(type_name)[1].model(ops)
    except InvalidOperation:
        raise ValueError(f"no specification for {type_name}") from None


def random_operation(
    rng: random.Random, keys: int = 3, types: Sequence[str] = ()
) -> tuple[str, str, str, tuple[Any, ...]]:
    """A random ``(key, type name, kind, args)`` over ``types`` (by default
    every built-in type), drawn by each type's table (``Operations.random``)
    on one of ``keys`` keys per type; the key names its type, so a key's
    type never changes. Cost: O(len(types) log len(types))."""
    type_name = rng.choice(sorted(types or TYPES))
    key = f"{type_name}-{rng.randrange(keys)}"
    kind, args = operations_of(type_name)[1].random(rng)
    return key, type_name, kind, args


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
    A type that declares an operation table (``crdts.operations``) needs
    none of this: :meth:`History.spec` makes its spec from the table
    (``operations``, through which updates are then checked and applied).

    >>> from crdts import GCounter
    >>> spec = TypeSpec(GCounter, lambda ops: sum(op.args[0] for op in ops))
    >>> spec.mutate(GCounter(), "a", "increment", (2,)).value
    2
    """

    new: Callable[[], CRDT]
    model: Model
    mutate: Mutate = _replica_first
    operations: Operations | None = None
    #: The model names replicas (see ``crdts.operations.Operations``).
    names_replicas: bool = False


def _builtin_spec(type_name: str) -> TypeSpec:
    try:
        cls, table = operations_of(type_name)
    except InvalidOperation:
        raise ValueError(
            f"no registered type {type_name!r} with operations: give History a TypeSpec for it"
        ) from None

    def mutate(state: Any, replica: str, kind: str, args: tuple[Any, ...]) -> CRDT:
        return table.apply(state, replica, kind, args)

    return TypeSpec(cls, table.model, mutate, table, table.names_replicas)


def converged(replicas: Sequence[Replicator]) -> bool:
    """Whether the replicas hold byte-identical keyspaces and the same
    operations on every key. Equal bytes alone do not say every operation has
    arrived: an update may leave the state as it was (an increment by 0, a
    write that loses to a later timestamp). Pruning markers are not
    operations (docs/pruning.md): each replica drops them on its own
    schedule, so they are not compared. Cost: O(total state size)."""
    first = replicas[0]
    encoding, keys = first.encode_keyspace(), first.keys()
    return all(
        r.encode_keyspace() == encoding
        and all(r.ops(k).spans == first.ops(k).spans for k in keys)
        for r in replicas[1:]
    )
