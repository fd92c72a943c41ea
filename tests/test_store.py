"""What every :class:`~replication.store.Store` must do, and what the SQLite
store and the node do with a store that fails or is damaged.

:class:`StoreConformance` holds the checks; a store runs them by subclassing
it (as ``Test...``) and implementing :meth:`~StoreConformance.open`, which
opens the store of one place again (what a restart reads).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from crdtkit.client import Client, NodeError
from crdtkit.node import NodeService
from crdtkit.tcpnode import TcpNodeTransport
from crdts import GCounter, ORSet
from replication.messages import Entry
from replication.replicator import Replicator
from replication.sqlite import DATABASE, SQLiteStore
from replication.store import (
    AnswerWindow,
    CommitFailed,
    FolderInUse,
    MemoryStore,
    Store,
    StoreDamaged,
    WriteBehind,
    encode_row,
    restore,
)
from replication.tcp import TcpEndpoint

KEY = bytes(range(32))


def value(state: object) -> Any:
    return cast(Any, state).value


def counter_row(key: str, amount: int, replica: str = "a") -> bytes:
    r = Replicator(replica, [], rng=random.Random(1))
    r.update(key, GCounter, lambda c, me: c.increment(me, amount))
    entry = r.entry(key)
    assert entry is not None
    return encode_row(entry)


class StoreConformance:
    """The checks. ``open`` returns the store of the test's one place,
    opened again after the previous one was closed."""

    def open(self) -> Store:
        raise NotImplementedError

    def test_empty_then_everything_committed_comes_back(self) -> None:
        store = self.open()
        stored = store.load()
        assert stored.entries == [] and not stored.answers
        store.commit([("b", counter_row("b", 2)), ("a", counter_row("a", 1))],
                     [(b"r1", b"one")], {"node": b"a"})
        store.close()
        store = self.open()
        stored = store.load()
        assert [(e.key, value(e.state)) for e in stored.entries] == [("a", 1), ("b", 2)]
        assert dict(stored.answers) == {b"r1": b"one"}
        assert stored.meta["node"] == b"a"
        store.close()

    def test_a_row_replaces_the_row_of_its_key(self) -> None:
        store = self.open()
        store.commit([("k", counter_row("k", 1))])
        store.commit([("k", counter_row("k", 7))], meta={"node": b"a"})
        store.commit([], meta={"other": b"x"})  # metadata adds up
        store.close()
        store = self.open()
        stored = store.load()
        assert [(e.key, value(e.state)) for e in stored.entries] == [("k", 7)]
        assert stored.meta["node"] == b"a" and stored.meta["other"] == b"x"
        store.close()

    def test_answers_are_kept_newest_first_up_to_the_bound(self) -> None:
        store = self.open()
        for i in range(5):
            store.commit([], [(f"r{i}".encode(), f"{i}".encode())])
        store.commit([], [(b"r1", b"again")])  # a request answered again is the newest
        store.close()
        store = self.open()
        answers = store.load().answers
        assert list(answers) == [b"r3", b"r4", b"r1"]  # the bound here is 3
        assert answers[b"r1"] == b"again"
        store.close()

    def test_restarts_never_reuse_an_incarnation(self) -> None:
        store = self.open()
        seen = set()
        for seed in range(20):
            replica = restore(store.load(), "a", [], rng=random.Random(seed))
            assert replica.replica_id not in seen and replica.replica_id.startswith("a~")
            seen.add(replica.replica_id)
        store.close()

    def test_write_behind_writes_only_what_changed(self) -> None:
        store = self.open()
        r = Replicator("a", [], rng=random.Random(1))
        changes = WriteBehind(r)
        for key in ("x", "y", "z"):
            r.update(key, GCounter, lambda c, me: c.increment(me))
        changes.flush(store)
        r.update("y", GCounter, lambda c, me: c.increment(me, 5))
        assert changes.keys == {"y"}
        changes.flush(store)
        store.close()
        store = self.open()
        back = restore(store.load(), "a", [], rng=random.Random(2))
        assert {k: value(back.get(k)) for k in ("x", "y", "z")} == {"x": 1, "y": 6, "z": 1}
        assert back.context == r.context
        store.close()


class TestMemoryStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _one_place(self) -> None:
        self.store = MemoryStore(window=AnswerWindow(count=3))

    def open(self) -> Store:
        return self.store


class TestSQLiteStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _one_place(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "node"

    def open(self) -> Store:
        return SQLiteStore(self.folder, node="a", window=AnswerWindow(count=3))


# -- the SQLite store: its folder, and damage ---------------------------------------


def filled(folder: Path, keys: int = 30) -> dict[str, int]:
    store = SQLiteStore(folder, node="a")
    values = {f"k{i:03d}": i + 1 for i in range(keys)}
    for key, value in values.items():
        store.commit([(key, counter_row(key, value))], meta={"node": b"a"})
    store.close()
    return values


def crashed_copy(folder: Path, into: Path, commits: int = 20) -> dict[str, int]:
    """A copy of ``folder`` taken while its store is open after ``commits``
    more commits: what a SIGKILL leaves (a write-ahead log not yet folded in)."""
    store = SQLiteStore(folder, node="a")
    values = {}
    for i in range(commits):
        key = f"w{i:03d}"
        store.commit([(key, counter_row(key, 100 + i) + b"")])
        values[key] = 100 + i
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("lock"))
    store.close()
    return values


def values_in(folder: Path, *, repair: bool = False) -> tuple[dict[str, int], list[str]]:
    store = SQLiteStore(folder, node="a", repair=repair)
    try:
        return {e.key: value(e.state) for e in store.load().entries}, store.repairs
    finally:
        store.close()


def test_a_second_process_on_the_folder_is_refused_with_the_holder_named(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path, node="a")
    with pytest.raises(FolderInUse, match=rf"in use by pid {os.getpid()} \(node a\)"):
        SQLiteStore(tmp_path, node="b")
    store.close()
    SQLiteStore(tmp_path, node="b").close()  # released on close


def test_a_torn_log_tail_drops_only_the_unfinished_commit(tmp_path: Path) -> None:
    before = filled(tmp_path / "a")
    after = crashed_copy(tmp_path / "a", tmp_path / "crash")
    size = (tmp_path / "crash" / f"{DATABASE}-wal").stat().st_size
    rng = random.Random(4)
    work = tmp_path / "work"
    for cut in rng.sample(range(32, size), 12):
        shutil.copytree(tmp_path / "crash", work)
        os.truncate(work / f"{DATABASE}-wal", cut)
        held, repairs = values_in(work)
        assert repairs == []
        # A prefix of the commits, each one whole.
        assert {k: v for k, v in held.items() if k in before} == before
        got = sorted(k for k in held if k in after)
        assert got == sorted(after)[: len(got)]
        assert all(held[k] == after[k] for k in got)
        # Commits after a torn tail are read back after the next crash.
        crashed_copy(work, tmp_path / "again", commits=3)
        again, _ = values_in(tmp_path / "again")
        assert {"w000", "w001", "w002"} <= again.keys()
        shutil.rmtree(tmp_path / "again")
        shutil.rmtree(work)


def test_garbage_after_the_log_is_not_damage(tmp_path: Path) -> None:
    filled(tmp_path / "a")
    after = crashed_copy(tmp_path / "a", tmp_path / "crash")
    wal = tmp_path / "crash" / f"{DATABASE}-wal"
    with wal.open("ab") as f:
        f.write(random.Random(1).randbytes(10_000))
    held, _ = values_in(tmp_path / "crash")
    assert after.items() <= held.items()


def test_a_log_damaged_in_the_middle_refuses_to_start_and_repair_keeps_the_rest(
    tmp_path: Path,
) -> None:
    before = filled(tmp_path / "a")
    crashed_copy(tmp_path / "a", tmp_path / "crash")
    wal = tmp_path / "crash" / f"{DATABASE}-wal"
    data = bytearray(wal.read_bytes())
    data[len(data) // 3] ^= 0x40
    wal.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match=f"{wal}.* is damaged: a committed transaction"):
        values_in(tmp_path / "crash")
    held, repairs = values_in(tmp_path / "crash", repair=True)
    assert before.items() <= held.items()
    assert repairs[0].startswith("found:") and "kept" in repairs[-1]
    assert (tmp_path / "crash" / f"{DATABASE}.damaged-wal").exists()
    assert values_in(tmp_path / "crash")[0] == held  # and it opens as usual now


def test_a_changed_row_refuses_to_start_and_repair_drops_exactly_it(tmp_path: Path) -> None:
    before = filled(tmp_path)
    data = bytearray((tmp_path / DATABASE).read_bytes())
    # The row of k017 holds the value 18; change it in place, as bit rot would.
    at = data.find(counter_row("k017", 18)[-8:])
    assert at > 0
    data[at + 3] ^= 0x01
    (tmp_path / DATABASE).write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match=rf"{tmp_path / DATABASE} is damaged: the row of 'k017'"):
        values_in(tmp_path)
    held, repairs = values_in(tmp_path, repair=True)
    assert held == {k: v for k, v in before.items() if k != "k017"}
    assert any("dropped the key 'k017'" in line for line in repairs)


@pytest.mark.parametrize("seed", range(6))
def test_damage_anywhere_is_refused_or_harmless_never_silent(tmp_path: Path, seed: int) -> None:
    before = filled(tmp_path, keys=60)
    rng = random.Random(seed)
    data = bytearray((tmp_path / DATABASE).read_bytes())
    for _ in range(8):
        data[rng.randrange(100, len(data))] ^= 1 << rng.randrange(8)
    (tmp_path / DATABASE).write_bytes(bytes(data))
    try:
        held, _ = values_in(tmp_path)
    except StoreDamaged:
        held, repairs = values_in(tmp_path, repair=True)
        dropped = before.keys() - held.keys()
        assert held.items() <= before.items()
        named = " ".join(repairs)
        assert all(repr(k) in named for k in dropped) or "unreadable" in named
    else:
        assert held == before  # a flip in free space or padding changes nothing


def test_a_log_without_its_database_is_refused(tmp_path: Path) -> None:
    filled(tmp_path / "a")
    crashed_copy(tmp_path / "a", tmp_path / "crash")
    (tmp_path / "crash" / DATABASE).unlink()
    with pytest.raises(StoreDamaged, match="is missing, but"):
        values_in(tmp_path / "crash")
    held, repairs = values_in(tmp_path / "crash", repair=True)
    assert held == {} and "kept 0 keys" in repairs[-1]


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DATABASE).write_bytes(b"\x00" * 100 + b"junk" * 2000)
    with pytest.raises(StoreDamaged, match=f"{tmp_path / DATABASE} is damaged"):
        values_in(tmp_path)


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, node="a")
    store.commit([("k", counter_row("k", 1))])
    # A transaction held open by another connection: the commit cannot take
    # the write lock, as on a read-only or failing disk it cannot write.
    import sqlite3

    other = sqlite3.connect(tmp_path / DATABASE, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(CommitFailed, match="cannot write"):
        store._db.execute("PRAGMA busy_timeout=0")
        store.commit([("k", counter_row("k", 2)), ("j", counter_row("j", 3))])
    other.execute("ROLLBACK")
    other.close()
    store.close()
    assert values_in(tmp_path)[0] == {"k": 1}


# -- the node with a store that fails ------------------------------------------------


def _tcp(rng: random.Random) -> TcpNodeTransport:
    return TcpNodeTransport("n", KEY, rng=rng, listen=("127.0.0.1", 0))


def _address(service: NodeService) -> tuple[str, int]:
    endpoint = service.transport.endpoint
    assert isinstance(endpoint, TcpEndpoint)
    return endpoint.address


async def with_node(
    folder: Path, test: Callable[[NodeService, Client], Awaitable[None]], **options: int
) -> None:
    service = NodeService("n", folder, transport=_tcp,
                          flush_interval=0.05, **options)  # type: ignore[arg-type]
    stop, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(service.run(stop, ready))
    await asyncio.wait_for(ready.wait(), 10)
    client = await Client.connect(_address(service), KEY)
    try:
        await asyncio.wait_for(test(service, client), 60)
    finally:
        client.close()
        stop.set()
        await asyncio.wait_for(running, 30)


def failing(store: Store, when: Callable[[], bool]) -> None:
    commit = store.commit

    def fail_or_commit(*args: object, **kwargs: object) -> None:
        if when():
            raise CommitFailed("cannot write (the test's full disk)")
        commit(*args, **kwargs)  # type: ignore[arg-type]

    store.commit = fail_or_commit  # type: ignore[method-assign]


def test_an_update_whose_commit_fails_is_not_applied_and_a_retry_applies_it_once(
    tmp_path: Path,
) -> None:
    full = [False]

    async def test(service: NodeService, client: Client) -> None:
        await client.update("hits", "GCounter", "increment", 1, request_id=b"first")
        failing(service.store, lambda: full[0])
        full[0] = True
        with pytest.raises(NodeError, match="not applied: cannot write"):
            await client.update("hits", "GCounter", "increment", 10, request_id=b"second")
        assert (await client.get("hits")).value == 1  # type: ignore[union-attr]
        assert service.replica.stats.updates == 1
        full[0] = False
        op = await client.update("hits", "GCounter", "increment", 10, request_id=b"second")
        again = await client.update("hits", "GCounter", "increment", 10, request_id=b"second")
        assert again == op
        assert (await client.get("hits")).value == 11  # type: ignore[union-attr]

    asyncio.run(with_node(tmp_path, test))

    async def after_restart(service: NodeService, client: Client) -> None:
        assert (await client.get("hits")).value == 11  # type: ignore[union-attr]
        await client.update("hits", "GCounter", "increment", 10, request_id=b"second")
        assert (await client.get("hits")).value == 11  # type: ignore[union-attr]
        assert service.replica.replica_id.startswith("n~")

    asyncio.run(with_node(tmp_path, after_restart))


def test_concurrent_updates_share_commits_and_each_is_acknowledged_durable(
    tmp_path: Path,
) -> None:
    async def test(service: NodeService, client: Client) -> None:
        # Seven connections from one address: the node's default limit is eight.
        clients = [await Client.connect(_address(service), KEY) for _ in range(6)]
        before = service.store.commit  # count the commits
        commits = [0]

        def counted(*args: object, **kwargs: object) -> None:
            commits[0] += 1
            before(*args, **kwargs)  # type: ignore[arg-type]

        service.store.commit = counted  # type: ignore[method-assign]

        async def send(c: Client, i: int) -> None:
            for j in range(30):
                await c.update("set", "ORSet", "add", f"{i}-{j}")

        await asyncio.gather(*(send(c, i) for i, c in enumerate(clients)))
        for c in clients:
            c.close()
        assert len(await client.get("set")) == 180  # type: ignore[arg-type]
        assert commits[0] < 180  # group commit

    asyncio.run(with_node(tmp_path, test))
    held, _ = values_in_node(tmp_path)
    assert len(held["set"]) == 180  # type: ignore[arg-type]


def values_in_node(folder: Path) -> tuple[dict[str, object], list[str]]:
    store = SQLiteStore(folder, node="n")
    try:
        return {e.key: e.state for e in store.load().entries}, store.repairs
    finally:
        store.close()


def test_an_update_over_the_maximum_state_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    async def test(service: NodeService, client: Client) -> None:
        await client.update("s", "ORSet", "add", "x" * 1000)
        with pytest.raises(NodeError, match="over the maximum of 4,096"):
            await client.update("s", "ORSet", "add", "y" * 5000)
        await client.update("s", "ORSet", "add", "z")  # the next update is fine
        state = await client.get("s")
        assert isinstance(state, ORSet) and sorted(state) == ["x" * 1000, "z"]

    asyncio.run(with_node(tmp_path, test, max_state=4096))
    held, _ = values_in_node(tmp_path)
    assert sorted(held["s"]) == ["x" * 1000, "z"]  # type: ignore[call-overload]


def test_an_update_over_the_maximum_in_a_shared_commit_is_refused_alone(tmp_path: Path) -> None:
    # Pipelined, so the three share a batch: the batch's rows are encoded
    # once, the big one's row comes out too large, and the batch is staged
    # again one at a time so that only that update is refused.
    async def test(service: NodeService, client: Client) -> None:
        small, big, other = await asyncio.gather(
            client.update("s", "ORSet", "add", "x"),
            client.update("s", "ORSet", "add", "y" * 5000),
            client.update("s", "ORSet", "add", "z"),
            return_exceptions=True,
        )
        assert isinstance(big, NodeError) and "over the maximum of 4,096" in str(big)
        assert not isinstance(small, BaseException) and not isinstance(other, BaseException)
        state = await client.get("s")
        assert isinstance(state, ORSet) and sorted(state) == ["x", "z"]

    asyncio.run(with_node(tmp_path, test, max_state=4096))
    held, _ = values_in_node(tmp_path)
    assert sorted(held["s"]) == ["x", "z"]  # type: ignore[call-overload]


def test_a_node_refuses_a_folder_in_use(tmp_path: Path) -> None:
    async def test(service: NodeService, client: Client) -> None:
        with pytest.raises(FolderInUse, match="in use by pid"):
            NodeService("n", tmp_path, transport=_tcp)

    asyncio.run(with_node(tmp_path, test))


def test_a_store_of_another_node_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, node="other")
    store.commit([], meta={"node": b"other"})
    store.close()
    with pytest.raises(StoreDamaged, match="belongs to node 'other'"):
        NodeService("n", tmp_path, transport=_tcp)
    SQLiteStore(tmp_path, node="n").close()  # and the folder was released


def test_a_wiped_folder_never_reissues_a_dot(tmp_path: Path) -> None:
    dots: list[tuple[str, int]] = []

    async def test(service: NodeService, client: Client) -> None:
        for _ in range(3):
            dots.append((await client.update("c", "GCounter", "increment", 1)).dot)

    for _ in range(3):
        asyncio.run(with_node(tmp_path, test))
        shutil.rmtree(tmp_path)
    assert len(set(dots)) == 9
    assert len({replica for replica, _ in dots}) == 3


def test_restored_rows_are_entries_of_the_replica(tmp_path: Path) -> None:
    r = Replicator("a", [], rng=random.Random(1))
    r.update("s", ORSet, lambda s, me: s.add("x", me))
    entry = r.entry("s")
    assert isinstance(entry, Entry)
    store = SQLiteStore(tmp_path, node="a")
    store.commit([("s", encode_row(entry))])
    back = restore(store.load(), "a", [], rng=random.Random(2))
    store.close()
    assert back.ops("s") == r.ops("s") and back.get("s") == r.get("s")


def test_after_a_repair_a_retry_of_a_dropped_update_applies_it_again(tmp_path: Path) -> None:
    ops = {}

    async def first(service: NodeService, client: Client) -> None:
        ops["a"] = await client.update("a", "GCounter", "increment", 3, request_id=b"x")
        ops["b"] = await client.update("b", "GCounter", "increment", 4, request_id=b"y")

    asyncio.run(with_node(tmp_path, first))
    data = bytearray((tmp_path / DATABASE).read_bytes())
    old = counter_row("a", 3, ops["a"].dot[0])
    at = data.find(old[-10:])
    assert at > 0
    data[at + 4] ^= 0x01
    (tmp_path / DATABASE).write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match="the row of 'a'"):
        NodeService("n", tmp_path, transport=_tcp)

    async def retried(service: NodeService, client: Client) -> None:
        assert await client.get("a") is None  # dropped by the repair
        again = await client.update("a", "GCounter", "increment", 3, request_id=b"x")
        assert again.dot != ops["a"].dot  # applied again, as it was lost
        assert await client.update("b", "GCounter", "increment", 4, request_id=b"y") == ops["b"]
        assert value(await client.get("a")) == 3 and value(await client.get("b")) == 4

    asyncio.run(with_node(tmp_path, retried, repair=True))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_answers_are_bounded_in_bytes_too(tmp_path: Path, kind: str) -> None:
    # An answer carries its update's delta: 1 MiB values must not pile up.
    def make() -> Store:
        window = AnswerWindow(count=1000, size=3 * 1024)
        if kind == "memory":
            return memory
        return SQLiteStore(tmp_path, node="a", window=window)

    memory = MemoryStore(window=AnswerWindow(count=1000, size=3 * 1024))
    store = make()
    for i in range(10):
        store.commit([], [(f"r{i}".encode(), bytes(1000))])
    store.close()
    store = make()
    assert list(store.load().answers) == [b"r7", b"r8", b"r9"]
    store.commit([], [(b"r10", bytes(2500))])
    assert list(store.load().answers) == [b"r10"]
    store.close()
