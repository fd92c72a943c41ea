"""Each type declares its operations; values are checked where they enter;
the replicator's hybrid logical clock feeds LWW timestamps (issue 11, items
1 to 3). Issue 11's observations 1 to 3 are kept here as regression tests,
through a ``crdtkit node`` process where they were seen through a node.

One node process (``--import tests.usertype``, a user's own type) serves
every node test of the module; it is stopped at the end."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable, Iterator
from random import Random
from typing import Any

import pytest

import crdts.lwwregister
from crdtkit.client import Client, NodeError
from crdtkit.cluster import LocalCluster
from crdts import CRDT, GCounter, LWWRegister, MVRegister, ORSet, PNCounter, VectorClock, codec
from crdts.errors import InvalidOperation
from crdts.operations import LOGICAL, Operations, operations_of
from replication import Replicator
from replication.history import TYPES, History
from tests.crashkit import client_of

SURROGATE = "x\ud800y"


# -- the table -----------------------------------------------------------------------


def test_every_builtin_type_declares_its_operations() -> None:
    names = {name: operations_of(name)[1].names() for name in TYPES}
    assert names == {
        "GCounter": ["increment"],
        "PNCounter": ["decrement", "increment"],
        "ORSet": ["add", "remove"],
        "LWWRegister": ["assign"],
        "MVRegister": ["assign"],
        "VectorClock": ["increment"],
        "ORMap": ["remove", "update"],
    }
    for cls in TYPES.values():
        assert isinstance(cls.OPERATIONS, Operations)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("table_of", "kind", "args"),
    [
        ("PNCounter", "increment", (1,)),
        ("VectorClock", "increment", ()),
        ("ORSet", "add", ("x",)),
        ("GCounter", "decrement", (1,)),
        ("GCounter", "increment", (-1,)),
        ("GCounter", "increment", ("1",)),
        ("GCounter", "increment", (1, 2)),
    ],
)
def test_an_operation_not_of_the_keys_type_is_refused_and_changes_nothing(
    table_of: str, kind: str, args: tuple[object, ...]
) -> None:
    r = Replicator("a", [], rng=Random(1))
    h = History()
    h.apply(r, "hits", "GCounter", "increment", 2)
    before = (r.encode_keyspace(), r.ops("hits").spans, len(h.operations))
    with pytest.raises(InvalidOperation):
        h.apply(r, "hits", table_of, kind, *args)
    assert (r.encode_keyspace(), r.ops("hits").spans, len(h.operations)) == before


# -- observation 2: strings that do not encode ----------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda: ORSet[str]().add(SURROGATE, "a"),
        lambda: ORSet[str]().remove(SURROGATE),
        lambda: LWWRegister[str]().assign(SURROGATE, "a", timestamp=1),
        lambda: MVRegister[str]().assign(SURROGATE, "a"),
        lambda: GCounter().increment(SURROGATE),
        lambda: PNCounter().decrement(SURROGATE),
        lambda: VectorClock().increment(SURROGATE),
        lambda: ORSet[str]().add("x", SURROGATE),
        lambda: LWWRegister[str]().assign("x", SURROGATE),
        lambda: MVRegister[str]().assign("x", SURROGATE),
        lambda: Replicator(SURROGATE, [], rng=Random(1)),
    ],
)
def test_a_lone_surrogate_is_refused_by_every_mutator(mutate: Callable[[], object]) -> None:
    with pytest.raises(InvalidOperation, match="lone surrogate"):
        mutate()


def test_a_replicator_refuses_a_value_that_would_not_encode_and_goes_on_gossiping() -> None:
    a, b = Replicator("a", ["b"], rng=Random(1)), Replicator("b", ["a"], rng=Random(2))
    h = History()
    h.apply(a, "cart", "ORSet", "add", "milk")
    for key, type_name, kind, args in [
        ("cart", "ORSet", "add", (SURROGATE,)),
        ("reg", "LWWRegister", "assign", (SURROGATE,)),
        ("mv", "MVRegister", "assign", (SURROGATE,)),
        (SURROGATE, "GCounter", "increment", (1,)),
    ]:
        with pytest.raises(InvalidOperation):
            h.apply(a, key, type_name, kind, *args)
    with pytest.raises(InvalidOperation):
        a.update(SURROGATE, GCounter, lambda c, me: c.increment(me))
    assert a.keys() == ["cart"]
    a.encode_keyspace()  # raised UnicodeEncodeError on every call before
    frames = a.tick(0.0)
    while frames:
        dest, frame = frames.pop(0)
        frames += {"a": a, "b": b}[dest].receive(0.0, "b" if dest == "a" else "a", frame)
    assert h.problems([a, b]) == []


def test_a_value_over_the_maximum_size_is_refused_before_anything_changes() -> None:
    r = Replicator("a", [], rng=Random(1), max_state=4096)
    with pytest.raises(InvalidOperation, match="over the maximum"):
        History().apply(r, "big", "ORSet", "add", "x" * 5000)
    assert r.keys() == []


# -- observation 3 and the clock -------------------------------------------------------


def test_the_lww_register_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> int:
        raise AssertionError("a data type read the wall clock")

    monkeypatch.setattr(time, "time_ns", forbidden)
    monkeypatch.setattr(time, "time", forbidden)
    assert not hasattr(crdts.lwwregister, "time")
    r: LWWRegister[str] = LWWRegister()
    r.assign("a", "a")
    r.assign("b", "b")
    decoded = codec.decode(codec.encode(r))
    assert isinstance(decoded, LWWRegister)
    decoded.assign("c", "c")
    assert (decoded.value, decoded.timestamp) == ("c", 2)
    delta = LWWRegister.OPERATIONS.apply(decoded, "d", "assign", ["d"], LOGICAL)
    assert isinstance(delta, LWWRegister) and delta.timestamp == 3


def test_default_lww_timestamps_come_from_the_replicators_clock() -> None:
    r = Replicator("a", [], rng=Random(1))
    r.tick(5.0)
    h = History()
    h.apply(r, "reg", "LWWRegister", "assign", "v")
    reg = r.get("reg")
    assert isinstance(reg, LWWRegister) and reg.timestamp == 5_000_000_000
    h.apply(r, "reg", "LWWRegister", "assign", "w", 5_400_000_000)  # within 500 ms: taken
    with pytest.raises(InvalidOperation, match="ahead of this replica's clock"):
        h.apply(r, "reg", "LWWRegister", "assign", "frozen", 2**64 - 1)
    h.apply(r, "reg", "LWWRegister", "assign", "later")
    reg = r.get("reg")
    assert isinstance(reg, LWWRegister)
    assert (reg.value, reg.timestamp) == ("later", 5_400_000_001)
    assert h.problems([r]) == []


# -- through a node process -------------------------------------------------------------


@pytest.fixture(scope="module")
def gset() -> Iterator[type[CRDT]]:
    """The user's type, registered in this process (to decode what the node
    sends) for this module's tests only: other tests see the built-in
    registry, whatever order they run in."""
    module = importlib.import_module("tests.usertype")  # it registers itself
    cls: type[CRDT] = module.GSet
    with pytest.MonkeyPatch.context() as patch:
        for registered in (cls, module.BrokenGSet):
            patch.setitem(codec._REGISTRY, registered.TYPE_TAG, registered)
        yield cls
    for registered in (cls, module.BrokenGSet):
        codec._REGISTRY.pop(registered.TYPE_TAG, None)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, gset: type[CRDT]) -> Iterator[LocalCluster]:
    cluster = LocalCluster(1, tmp_path_factory.mktemp("node"),
                           options=["--import", "tests.usertype", "--max-offset", "2"])
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _with_client(cluster: LocalCluster, work: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        client = await client_of(cluster, "n0")
        try:
            await asyncio.wait_for(work(client), 60)
        finally:
            client.close()

    asyncio.run(main())


async def _raw_update(client: Client, key: str, type_name: str, kind: str, *args: Any) -> None:
    # Past the client's own checks: what another client could send.
    await client._call("update", key, type_name, kind, list(args), f"{key}{kind}{args}".encode())


def test_observation_1_type_confusion_is_refused_and_the_connection_stays(
    node: LocalCluster,
) -> None:
    async def work(client: Client) -> None:
        await client.update("hits", "GCounter", "increment", 2)
        for type_name, kind, args in [
            ("PNCounter", "increment", (5,)),  # applied to the G-Counter before
            ("PNCounter", "decrement", (5,)),
            ("VectorClock", "increment", ()),  # applied before
            ("ORSet", "add", ("x",)),  # an AttributeError and a dropped connection before
            ("GCounter", "decrement", (1,)),
            ("GCounter", "increment", (-1,)),
            ("GCounter", "increment", ("two",)),
            ("NoSuchType", "increment", (1,)),
        ]:
            with pytest.raises(NodeError):
                await _raw_update(client, "hits", type_name, kind, *args)
        with pytest.raises(NodeError, match="holds a GCounter"):
            await client.update("hits", "PNCounter", "increment", 1)
        hits = await client.get("hits")  # the same connection
        assert isinstance(hits, GCounter) and hits.value == 2

    _with_client(node, work)
    assert "AttributeError" not in node.log("n0")


def test_observation_3_a_timestamp_far_ahead_is_refused_at_the_node(node: LocalCluster) -> None:
    async def work(client: Client) -> None:
        with pytest.raises(NodeError, match="ahead of this replica's clock"):
            await client.update("reg", "LWWRegister", "assign", "frozen", 2**64 - 1)
        with pytest.raises(NodeError, match="at most 2000000000 allowed"):  # --max-offset 2
            await client.update("reg", "LWWRegister", "assign", "ahead", time.time_ns() + 10**10)
        now = await client.update("reg", "LWWRegister", "assign", "now", time.time_ns() + 10**9)
        later = await client.update("reg", "LWWRegister", "assign", "later")
        assert isinstance(now.delta, LWWRegister) and isinstance(later.delta, LWWRegister)
        assert (later.delta.timestamp or 0) > (now.delta.timestamp or 0)
        reg = await client.get("reg")
        assert isinstance(reg, LWWRegister) and reg.value == "later"

    _with_client(node, work)


def test_a_users_own_type_runs_through_a_node(node: LocalCluster, gset: type[CRDT]) -> None:
    async def work(client: Client) -> None:
        h = History()
        for element in ("x", "y", "x"):
            h.operations.append(await client.update("tags", "example.GSet", "add", element))
        with pytest.raises(NodeError, match="no operation 'remove'"):
            await _raw_update(client, "tags", "example.GSet", "remove", "x")
        with pytest.raises(NodeError, match="holds a GSet"):
            await client.update("tags", "ORSet", "add", "z")
        entry = await client.entry("tags")
        assert entry is not None and isinstance(entry.state, gset)
        assert entry.state.value == {"x", "y"}  # type: ignore[attr-defined]
        assert h.problems_of(lambda key: entry if key == "tags" else None) == []

    _with_client(node, work)


def test_a_bug_in_a_users_type_fails_its_update_only(node: LocalCluster) -> None:
    async def work(client: Client) -> None:
        await client.update("broken", "example.BrokenGSet", "add", "a")
        ops = await asyncio.gather(
            client.update("broken", "example.BrokenGSet", "add", "boom"),
            client.update("broken", "example.BrokenGSet", "add", "b"),
            client.update("other", "GCounter", "increment", 3),
            return_exceptions=True,
        )
        assert isinstance(ops[0], NodeError) and "a bug in a user's type" in str(ops[0])
        assert not any(isinstance(op, BaseException) for op in ops[1:])
        broken = await client.get("broken")
        assert broken is not None and broken.value == {"a", "b"}  # type: ignore[attr-defined]
        other = await client.get("other")
        assert isinstance(other, GCounter) and other.value == 3

    _with_client(node, work)


def test_the_replicator_refuses_an_update_made_for_another_type() -> None:
    r = Replicator("a", [], rng=Random(1))
    r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    with pytest.raises(InvalidOperation, match="holds a GCounter, not a PNCounter"):
        r.update("hits", PNCounter, lambda c, me: c.increment(me))
    batch = r.stage()
    with pytest.raises(InvalidOperation, match="holds a GCounter, not a VectorClock"):
        batch.update("hits", VectorClock, lambda v, me: v.increment(me))
    batch.update("hits", GCounter, lambda c, me: c.increment(me))
    with pytest.raises(InvalidOperation, match="holds a GCounter, not a PNCounter"):
        batch.update("hits", PNCounter, lambda c, me: c.increment(me))
    r.apply(batch)
    hits = r.get("hits")
    assert isinstance(hits, GCounter) and hits.value == 3
