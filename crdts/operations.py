"""Operations as data: each type declares the updates it takes.

A type's ``OPERATIONS`` (an :class:`Operations` table) lists its mutators by
name, each with the method that applies it and a validator per argument, and
the type's sequential model: the value a key must hold given the logged
operations on it that survived (TESTING.md). This is riak_dt's shape (every
type module exports its operations, ``gen_op`` and ``update_expected``) and
rust ``crdts``' (an op is validated before it is applied): the node, the
client, the operation log and the SEC checker dispatch through the table and
never special-case a type, so a user's own type registered with
``crdts.codec`` works end to end by the same route.

An operation that does not belong to the state's type, or whose arguments do
not validate, raises :class:`~crdts.errors.InvalidOperation` before anything
changes:

>>> from crdts import GCounter, PNCounter
>>> table = GCounter.OPERATIONS
>>> table.validate("increment", [2])
(2,)
>>> c = GCounter(); table.apply(c, "a", "increment", (2,)).value
2
>>> table.validate("decrement", [2])
Traceback (most recent call last):
...
crdts.errors.InvalidOperation: a GCounter has no operation 'decrement' (it has: increment)
>>> PNCounter.OPERATIONS.apply(c, "a", "increment", (1,))
Traceback (most recent call last):
...
crdts.errors.InvalidOperation: the key holds a GCounter; PNCounter operations do not apply to it
>>> c.value
2

Data types never read a clock. An operation that needs a time (an LWW
write's default timestamp) asks the :class:`Clock` it is handed: a
replicator hands its hybrid logical clock (``replication.hlc``), which also
refuses explicit timestamps too far ahead; without one, :data:`LOGICAL` gives
the next integer above what the state holds.

Cost: a lookup plus the validators, O(size of the arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol

from crdts.base import CRDT, MAX_UINT
from crdts.errors import InvalidOperation, StateTooLarge

__all__ = [
    "LOGICAL",
    "SAMPLE_ATOMS",
    "Arg",
    "Clock",
    "Logged",
    "LogicalClock",
    "Mutator",
    "Operations",
    "operations_of",
]


class Clock(Protocol):
    """What an operation may ask of its replica's clock (``replication.hlc``)."""

    def timestamp(self, above: int | None) -> int:
        """A reading strictly above ``above`` (None: no floor), in [0, 2**64)."""
        ...

    def admit(self, timestamp: int) -> int:
        """``timestamp`` if a caller may write it now, else InvalidOperation."""
        ...


class LogicalClock:
    """A clock that reads no time: the next integer above the floor, and
    every explicit timestamp admitted. What a bare type uses.

    >>> LOGICAL.timestamp(None), LOGICAL.timestamp(41), LOGICAL.admit(7)
    (0, 42, 7)

    Cost: O(1).
    """

    __slots__ = ()

    def timestamp(self, above: int | None) -> int:
        out = 0 if above is None else above + 1
        if out > MAX_UINT:
            raise InvalidOperation("timestamps are exhausted")
        return out

    def admit(self, timestamp: int) -> int:
        return timestamp


LOGICAL = LogicalClock()


class _Observed(Protocol):
    def contains(self, writer: str, counter: int) -> bool: ...


class Logged(Protocol):
    """What a model reads of one logged operation (``replication.history.Operation``)."""

    @property
    def kind(self) -> str: ...

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def dot(self) -> tuple[str, int]: ...

    @property
    def observed(self) -> _Observed: ...

    @property
    def delta(self) -> Any: ...


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a mutator: its name, its validator (returns the value
    or raises InvalidOperation) and, for an optional trailing one, its default."""

    name: str
    check: Callable[[Any], object]
    default: object = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True, slots=True)
class Mutator:
    """One operation: ``method(state, replica id, clock, *args)`` applies it
    and returns the delta; ``args`` validate its arguments first."""

    name: str
    method: Callable[..., Any]
    args: tuple[Arg, ...] = ()


#: A type's sequential specification: the value, given the surviving operations.
Model = Callable[[Sequence[Logged]], object]
#: A random operation of a type, ``(name, args)``, every choice from the
#: ``Random`` given (riak_dt's ``gen_op``): for the demo, soaks and tests.
Generate = Callable[[Random], tuple[str, tuple[Any, ...]]]

#: Few values of every atom kind, so that random adds and removes meet.
SAMPLE_ATOMS: tuple[str | int | bytes, ...] = ("x", "y", "z", 1, 2, b"b")


class Operations:
    """A type's operation table: its mutators by name and its model.

    ``names_replicas`` says the value names replica ids (a vector clock):
    an operation folded into an owner's by pruning then counts under the
    owner (``replication.history``). ``generate``, if given, draws a random
    operation (:meth:`random`).

    >>> from crdts import ORSet
    >>> ORSet.OPERATIONS.names()
    ['add', 'remove']

    Cost: see each method.
    """

    __slots__ = ("_generate", "_mutators", "model", "names_replicas")

    def __init__(self, mutators: Iterable[Mutator], model: Model, *,
                 names_replicas: bool = False, generate: Generate | None = None) -> None:
        self._mutators = {m.name: m for m in mutators}
        self.model = model
        self.names_replicas = names_replicas
        self._generate = generate

    def random(self, rng: Random) -> tuple[str, tuple[Any, ...]]:
        """A random operation ``(name, args)`` drawn from ``rng``; ValueError
        if the type declares no generator.

        >>> from crdts import PNCounter
        >>> PNCounter.OPERATIONS.random(Random(3))
        ('increment', (9,))

        Cost: the generator's, O(1) for the built-in types.
        """
        if self._generate is None:
            raise ValueError(f"{self._owner()} declares no generator of operations")
        return self._generate(rng)

    def names(self) -> list[str]:
        """The operations' names, sorted. Cost: O(n log n)."""
        return sorted(self._mutators)

    def mutator(self, name: object) -> Mutator:
        """The mutator called ``name``; InvalidOperation if there is none. Cost: O(1)."""
        found = self._mutators.get(name) if isinstance(name, str) else None
        if found is None:
            owner = self._owner()
            raise InvalidOperation(
                f"a {owner} has no operation {name!r:.40} (it has: {', '.join(self.names())})"
            )
        return found

    def _owner(self) -> str:
        from crdts import codec  # (codec imports the types, which import this)

        for tag, cls in codec.registered().items():
            if getattr(cls, "OPERATIONS", None) is self:
                return tag
        return "type"

    def validate(self, name: object, args: Sequence[object], *,
                 max_size: int | None = None) -> tuple[Any, ...]:
        """The arguments of operation ``name``, checked and with defaults
        filled in; InvalidOperation if the operation or an argument is not
        one the type takes, :class:`~crdts.errors.StateTooLarge` (one) if a
        str or bytes argument is over ``max_size`` bytes.

        >>> from crdts import LWWRegister
        >>> LWWRegister.OPERATIONS.validate("assign", ["v"])
        ('v', None)
        >>> LWWRegister.OPERATIONS.validate("assign", ["x\\ud800"])
        Traceback (most recent call last):
        ...
        crdts.errors.InvalidOperation: a str value must be valid Unicode (no lone surrogates): ...

        Cost: O(size of the arguments).
        """
        mutator = self.mutator(name)
        shape = mutator.args
        items = list(args)
        need = sum(1 for a in shape if a.required)
        if not need <= len(items) <= len(shape):
            arity = f"{need}" if need == len(shape) else f"{need} to {len(shape)}"
            raise InvalidOperation(
                f"{mutator.name} takes {arity} arguments "
                f"({', '.join(a.name for a in shape) or 'none'}), got {len(items)}"
            )
        out = []
        for i, arg in enumerate(shape):
            value = items[i] if i < len(items) else arg.default
            checked = arg.check(value)
            if max_size is not None and isinstance(checked, str | bytes):
                size = len(checked.encode() if isinstance(checked, str) else checked)
                if size > max_size:
                    raise StateTooLarge(
                        f"{mutator.name}: the {arg.name} is over the maximum of {max_size:,} bytes"
                    )
            out.append(checked)
        return tuple(out)

    def apply(self, state: CRDT, replica: str, name: str, args: Sequence[object],
              clock: Clock = LOGICAL, *, max_size: int | None = None) -> CRDT:
        """Validate operation ``name`` with ``args`` and apply it to
        ``state`` on behalf of ``replica``; return the delta. Raises
        InvalidOperation, changing nothing, if ``state`` is not of this
        table's type or the operation does not validate.

        >>> from crdts import ORSet
        >>> s: ORSet[str] = ORSet()
        >>> sorted(ORSet.OPERATIONS.apply(s, "a", "add", ["x"]))
        ['x']

        Cost: :meth:`validate` plus the mutator's.
        """
        if getattr(type(state), "OPERATIONS", None) is not self:
            raise InvalidOperation(
                f"the key holds a {type(state).__name__}; {self._owner()} operations do not "
                "apply to it"
            )
        checked = self.validate(name, args, max_size=max_size)
        delta: CRDT = self._mutators[name].method(state, replica, clock, *checked)
        return delta


def operations_of(type_name: object) -> tuple[type[CRDT], Operations]:
    """The class registered with ``crdts.codec`` as ``type_name`` and its
    operation table; InvalidOperation if there is no such type or it
    declares no operations.

    >>> cls, table = operations_of("GCounter"); cls.__name__, table.names()
    ('GCounter', ['increment'])
    >>> operations_of("Nope")
    Traceback (most recent call last):
    ...
    crdts.errors.InvalidOperation: no type 'Nope' is registered

    Cost: O(registered types).
    """
    from crdts import codec  # (codec imports the types, which import this)

    cls = codec.registered().get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise InvalidOperation(f"no type {type_name!r:.40} is registered")
    table = getattr(cls, "OPERATIONS", None)
    if not isinstance(table, Operations):
        raise InvalidOperation(f"{type_name} declares no operations (OPERATIONS)")
    return cls, table
