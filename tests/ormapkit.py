"""How the tests drive an ORMap through ``replication.history``: the map's
operations as data (``("update", (key, type name, operation, args))`` and
``("remove", (key,))``), applied to a map, and its sequential model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st

from crdts import ORMap
from crdts.base import CRDT
from crdts.ormap import model
from replication.history import TYPES, TypeSpec, _builtin_spec, expected


def new_value(type_name: str) -> CRDT:
    return ORMap() if type_name == "ORMap" else TYPES[type_name]()


def apply_value(state: Any, actor: str, type_name: str, kind: str, args: Sequence[Any]) -> Any:
    """Apply one operation to a value of ``type_name`` on behalf of ``actor``."""
    if type_name == "ORMap":
        return mutate(state, actor, kind, tuple(args))
    return _builtin_spec(type_name).mutate(state, actor, kind, tuple(args))


def mutate(state: Any, replica: str, kind: str, args: tuple[Any, ...]) -> Any:
    """The map's operations, as ``History`` applies them."""
    if kind == "remove":
        return state.remove(args[0])
    key, type_name, op, op_args = args
    return state.update(
        replica,
        key,
        lambda: new_value(type_name),
        lambda value, actor: apply_value(value, actor, type_name, op, op_args),
    )


def value_model(type_name: str, ops: list[Any]) -> object:
    if type_name == "ORMap":
        return model(ops, value_model)
    return expected(type_name, ops)


def map_model(ops: Sequence[Any]) -> object:
    return model(ops, value_model)


SPEC = TypeSpec(ORMap, map_model, mutate)

_ELEMENTS = st.sampled_from(["x", "y", 1])

#: Map operations over a few keys, one type per key, so that updates and
#: removes of a key meet: counters, sets, registers and a nested map.
OPERATIONS: st.SearchStrategy[tuple[str, tuple[Any, ...]]] = st.one_of(
    st.tuples(
        st.just("update"),
        st.tuples(st.just("c"), st.just("GCounter"), st.just("increment"),
                  st.tuples(st.integers(0, 5)).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("s"), st.just("ORSet"), st.sampled_from(["add", "remove"]),
                  st.tuples(_ELEMENTS).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("r"), st.just("MVRegister"), st.just("assign"),
                  st.tuples(_ELEMENTS).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("l"), st.just("LWWRegister"), st.just("assign"),
                  st.tuples(_ELEMENTS, st.none() | st.integers(0, 4)).map(list)),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(
            st.just("m"), st.just("ORMap"), st.just("update"),
            st.tuples(st.sampled_from(["p", "q"]), st.just("GCounter"), st.just("increment"),
                      st.tuples(st.integers(0, 3)).map(list)).map(list),
        ),
    ),
    st.tuples(
        st.just("update"),
        st.tuples(st.just("m"), st.just("ORMap"), st.just("remove"),
                  st.tuples(st.sampled_from(["p", "q"])).map(list)),
    ),
    st.tuples(st.just("remove"), st.tuples(st.sampled_from(["c", "s", "r", "l", "m"]))),
)


def random_map_operation(rng: Any) -> tuple[str, tuple[Any, ...]]:
    """One map operation drawn from ``rng`` (a ``random.Random``), for the soak."""
    key = rng.choice(["c", "s", "m", "m"])
    if rng.random() < 0.2:
        return "remove", (key,)
    if key == "c":
        return "update", ("c", "GCounter", "increment", [rng.randint(0, 9)])
    if key == "s":
        return "update", ("s", "ORSet", rng.choice(["add", "add", "remove"]),
                          [rng.choice(["x", "y", 1])])
    inner = rng.choice(["p", "q"])
    if rng.random() < 0.2:
        return "update", ("m", "ORMap", "remove", [inner])
    return "update", ("m", "ORMap", "update", [inner, "GCounter", "increment", [rng.randint(0, 9)]])
