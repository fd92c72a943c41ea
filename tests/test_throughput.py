"""What an acknowledged update costs a node, beyond its commit (issue 9's
performance part; the figures themselves are in ``bench/processes.py``):
regression tests for work the node did per update that it need not do, and
for the commit machinery that replaced the writer task and the thread pool.

The node runs in-process (``NodeService``) on 127.0.0.1, in a temporary
folder; every wait is bounded."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from random import Random
from typing import Any

import pytest

from crdtkit import node, protocol
from crdtkit.client import Client, NodeError
from crdtkit.node import NodeService
from crdtkit.tcpnode import TcpNodeTransport
from crdts import GCounter, ORSet, codec
from crdts.base import CRDT
from crdts.errors import DecodeError
from replication.dotranges import DotRanges
from replication.history import History, Operation
from replication.messages import Entry
from replication.replicator import Replicator
from replication.sqlite import SQLiteStore, read_store
from tests.test_pipelining import KEY, _with_node


def test_an_update_copies_its_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The node checked a key's type on a copy of its state (Replicator.get)
    # before staging copied it again: O(size of the key) on the event loop
    # per update, twice where once is needed.
    copies: list[int] = []

    async def work(client: Client, service: NodeService) -> None:
        await asyncio.gather(*(client.update("big", "ORSet", "add", f"e{i}") for i in range(200)))
        copy = ORSet.copy

        def counted(self: ORSet[object]) -> ORSet[object]:
            copies.append(len(self))
            return copy(self)

        monkeypatch.setattr(ORSet, "copy", counted)
        await client.update("big", "ORSet", "add", "one more")
        monkeypatch.setattr(ORSet, "copy", copy)
        state = await client.get("big")
        assert isinstance(state, ORSet) and len(state) == 201

    _with_node(tmp_path, work)
    # Staging copies the key once; the delta's copies are one element each.
    assert [n for n in copies if n > 1] == [200]


def test_commits_run_on_the_store_thread_and_answers_come_back(tmp_path: Path) -> None:
    threads: set[threading.Thread] = set()

    async def work(client: Client, service: NodeService) -> None:
        commit = service.store.commit

        def recorded(rows: object, answers: object = (), meta: object = None) -> None:
            threads.add(threading.current_thread())
            commit(rows, answers, meta)  # type: ignore[arg-type]

        service.store.commit = recorded  # type: ignore[method-assign]
        ops = await asyncio.gather(*(client.update("k", "GCounter", "increment", 1)
                                     for _ in range(20)))
        assert len({op.dot for op in ops}) == 20
        await client.update("k", "GCounter", "increment", 1)  # one alone, after them

    _with_node(tmp_path, work)
    (thread,) = threads  # one thread, never the event loop's
    assert thread is not threading.main_thread() and thread.name == "n0-store"


def test_a_commit_that_breaks_answers_not_applied_and_the_node_goes_on(tmp_path: Path) -> None:
    # A commit that raised something other than CommitFailed (a bug) ended
    # the writer task: that update, and every one after it, was never
    # answered.
    async def work(client: Client, service: NodeService) -> None:
        commit = service.store.commit
        broken = [True]

        def once(rows: object, answers: object = (), meta: object = None) -> None:
            if broken.pop() if broken else False:
                raise RuntimeError("a bug in the store")
            commit(rows, answers, meta)  # type: ignore[arg-type]

        service.store.commit = once  # type: ignore[method-assign]
        with pytest.raises(NodeError, match="not applied"):
            await asyncio.wait_for(client.update("k", "GCounter", "increment", 5), 10)
        op = await asyncio.wait_for(client.update("k", "GCounter", "increment", 2), 10)
        assert op.key == "k"
        state = await client.get("k")
        assert isinstance(state, GCounter) and state.value == 2

    _with_node(tmp_path, work)
    store = SQLiteStore(tmp_path, node="n0")
    try:
        (entry,) = store.load().entries
        assert isinstance(entry.state, GCounter) and entry.state.value == 2
    finally:
        store.close()


def test_a_client_that_waits_for_each_answer_reads_with_one_task(tmp_path: Path) -> None:
    # Client made a reader task per call whenever no other call waited, so
    # a client sending one update at a time paid a task per update.
    readers: list[str] = []

    async def work(client: Client, service: NodeService) -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            readers.extend(["reader"] if coro.__qualname__ == "Client._read" else [])
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        try:
            for i in range(10):
                await client.update("k", "GCounter", "increment", i)
            state = await client.get("k")
            assert isinstance(state, GCounter) and state.value == 45
        finally:
            loop.set_task_factory(None)

    _with_node(tmp_path, work)
    assert len(readers) <= 1


def test_keys_changed_by_gossip_are_written_every_flush_interval(tmp_path: Path) -> None:
    # The commit machinery's timer: a key changed outside client updates
    # (as gossip changes it) reaches the store within the interval, while
    # the node runs and no client writes.
    async def main() -> None:
        service = NodeService("n0", tmp_path, flush_interval=0.05, transport=lambda rng:
                              TcpNodeTransport("n0", KEY, rng=rng, listen=("127.0.0.1", 0)))
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            for round_ in range(1, 4):
                while True:  # (refused while a commit's batch is staged)
                    try:
                        service.replica.update("g", GCounter, lambda c, me: c.increment(me, 1))
                        break
                    except RuntimeError:
                        await asyncio.sleep(0.001)
                for _ in range(200):
                    held = {e.key: e.state for e in read_store(tmp_path).entries}
                    state = held.get("g")
                    if isinstance(state, GCounter) and state.value == round_:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError(f"round {round_}: not written within 2 s")
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    asyncio.run(main())


def test_a_client_does_not_decode_the_deltas_it_only_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Client.update decoded each answer's delta into the Operation it
    # returns: a quarter of a pipelining client's CPU, for deltas that a
    # client logging its updates never reads. They are decoded when read.
    decoded: list[bytes] = []
    decode = codec.decode

    def counted(data: bytes, **kwargs: Any) -> CRDT:
        decoded.append(data)
        return decode(data, **kwargs)

    ranges: list[object] = []
    from_payload = DotRanges.from_payload

    def parsed(payload: object, what: str) -> DotRanges:
        ranges.append(payload)
        return from_payload(payload, what)

    async def work(client: Client, service: NodeService) -> None:
        monkeypatch.setattr(codec, "decode", counted)
        monkeypatch.setattr(DotRanges, "from_payload", staticmethod(parsed))
        ops = await asyncio.gather(*(client.update("k", "GCounter", "increment", 1)
                                     for _ in range(20)))
        assert decoded == [] and ranges == []
        assert isinstance(ops[5].observed, DotRanges) and len(ranges) == 1
        delta = ops[0].delta
        assert isinstance(delta, GCounter) and delta.value == 1 and len(decoded) == 1
        assert ops[0].delta is delta and len(decoded) == 1  # once
        history = History(list(ops))
        assert history.operations[0] == ops[0] and len({op.dot for op in ops}) == 20

    _with_node(tmp_path, work)


def test_a_delta_that_does_not_decode_raises_decode_error_when_read() -> None:
    op = Operation("k", "GCounter", "increment", (1,), ("a", 1), ["junk"], b"\xff")
    with pytest.raises(DecodeError):
        _ = op.delta
    with pytest.raises(DecodeError):
        _ = op.observed
    with pytest.raises(AttributeError):
        op.key = "other"


def test_a_batch_holds_and_logs_each_key_once() -> None:
    # Replicator.apply held, logged and notified every update of a batch
    # one at a time: a pipelining node's commit applies hundreds of updates
    # of a few keys. The batch's updates of a key are applied as one
    # stretch, which leaves the replica exactly as update by update does.
    staged = Replicator("a", ["b"], rng=Random(1))
    one_by_one = Replicator("a", ["b"], rng=Random(1))
    told: list[str] = []
    staged.subscribe(lambda key, state: told.append(key))
    _ = one_by_one.update("s", ORSet, lambda s, me: s.add("old", me))
    _ = staged.update("s", ORSet, lambda s, me: s.add("old", me))
    told.clear()
    batch = staged.stage()
    for i in range(30):
        for key in ("c", "s"):
            if key == "c":
                def bump(c: GCounter, me: str, n: int = i) -> GCounter:
                    return c.increment(me, n + 1)
                _ = batch.update(key, GCounter, bump)
                _ = one_by_one.update(key, GCounter, bump)
            else:
                def add(s: ORSet[str], me: str, n: int = i) -> ORSet[str]:
                    return s.add(f"e{n}", me) if n % 3 else s.remove("old")
                _ = batch.update(key, ORSet, add)
                _ = one_by_one.update(key, ORSet, add)
    staged.apply(batch)
    assert sorted(told) == ["c", "s"]  # once per key, not once per update
    assert staged.encode_keyspace() == one_by_one.encode_keyspace()
    for key in ("c", "s"):
        assert staged.ops(key) == one_by_one.ops(key)
    assert staged.context == one_by_one.context
    assert staged.stats.updates == one_by_one.stats.updates == 61
    # What gossip brings a peer is the same too.
    for replica in (staged, one_by_one):
        peer = Replicator("b", ["a"], rng=Random(2))
        _gossip({"a": replica, "b": peer})
        assert peer.encode_keyspace() == staged.encode_keyspace()
        assert peer.ops("s") == staged.ops("s") and peer.context == staged.context


def _gossip(nodes: dict[str, Replicator]) -> None:
    """A few rounds among ``nodes``, losing nothing (bounded)."""
    for now in range(1, 6):
        frames = [(node, to, frame) for node, r in nodes.items() for to, frame in r.tick(now)]
        for _ in range(10_000):
            if not frames:
                break
            source, destination, frame = frames.pop(0)
            frames += [(destination, to, reply)
                       for to, reply in nodes[destination].receive(now, source, frame)]


def test_a_batch_copies_a_keys_deltas_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Staged.update copied every update's delta for the log, and apply then
    # merged each copy in: the log takes one copy of each key's join.
    replica = Replicator("a", [], rng=Random(1))
    _ = replica.update("k", GCounter, lambda c, me: c.increment(me))
    copies: list[int] = []
    copy = GCounter.copy

    def counted(self: GCounter) -> GCounter:
        copies.append(self.value)
        return copy(self)

    monkeypatch.setattr(GCounter, "copy", counted)
    batch = replica.stage()
    deltas = [batch.update("k", GCounter, lambda c, me: c.increment(me, 2))[0]
              for _ in range(50)]
    replica.apply(batch)
    monkeypatch.setattr(GCounter, "copy", copy)
    assert len(copies) <= 2  # the key once for the batch, its join once for the log
    state = replica.get("k")
    assert isinstance(state, GCounter) and state.value == 101
    assert all(delta.value == 2 * (i + 2) - 1 for i, delta in enumerate(deltas))


def test_an_update_checks_its_keys_type_without_building_its_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node checked a key's type through Replicator.entry, which builds
    # the key's ranges from their compact form: per update, for a type.
    built: list[str] = []
    entry = Replicator.entry

    def counted(self: Replicator, key: str) -> Entry | None:
        built.append(key)
        return entry(self, key)

    async def work(client: Client, service: NodeService) -> None:
        await client.update("k", "GCounter", "increment", 1)
        monkeypatch.setattr(Replicator, "entry", counted)
        await asyncio.gather(*(client.update("k", "GCounter", "increment", 1)
                               for _ in range(20)))
        with pytest.raises(NodeError, match="holds a GCounter"):
            await client.update("k", "ORSet", "add", "x")
        monkeypatch.setattr(Replicator, "entry", entry)

    _with_node(tmp_path, work)
    assert built == []


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 1000, 65_535, 65_536])
def test_an_answer_spliced_from_the_stored_one_is_the_answer_encoded(size: int) -> None:
    # The node encoded an update's answer twice: once as the store keeps it
    # ([key, replica, counter, observed, delta]) and again as "done". It is
    # now spliced from the first; the bytes must be the same.
    key = ("é" * size)[: size // 2] + "k" * (size - size // 2)
    delta = GCounter()
    _ = delta.increment("n0~2", 5)
    done: list[object] = ["n0~2", 7, DotRanges({"n0~2": (0, 0, 3, 6)}).to_payload(),
                          codec.encode(delta)]
    answer = node._Answer(True, codec.encode_plain([key, *done]), done, 9)
    for request in (0, 23, 24, 1_000_000):
        assert node._done(request, answer, key=key) == protocol.encode("done", request, *done)
        assert node._done(request, answer) == protocol.encode("done", request, *done)


class _SharingSet:
    """A (legal, if careless) user's type: a grow-only set whose delta is its
    state itself. Never registered: the batch alone is under test."""

    def __init__(self) -> None:
        self.items: set[int] = set()

    def add(self, element: int) -> _SharingSet:
        self.items.add(element)
        return self

    def merge(self, other: _SharingSet) -> None:
        self.items |= other.items

    def copy(self) -> _SharingSet:
        out = _SharingSet()
        out.items = set(self.items)
        return out


@pytest.mark.parametrize("copies", [True, False])
def test_an_update_taken_back_never_reaches_an_earlier_delta(copies: bool) -> None:
    # The node stages over-large batches again one update at a time with
    # copies=True and takes back the ones that grow a key too far: rebuilding
    # the key from earlier deltas that share the state would bring it back.
    replica = Replicator("a", [], rng=Random(1))
    batch = replica.stage(copies=copies)
    for n in (1, 100):
        batch.update("k", _SharingSet, lambda s, me, n=n: s.add(n))  # type: ignore[misc]
    batch.undo()
    held = batch.entry("k").state.items  # type: ignore[attr-defined]
    if copies:
        assert held == {1}
    else:  # what the batch does without copies, for this type: the leak
        assert held == {1, 100}
