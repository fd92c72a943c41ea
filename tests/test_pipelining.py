"""One client connection, many requests in flight: the node serves them
concurrently and the client matches each answer to its call, so pipelined
updates share commits and each is acknowledged once, after its commit.

The node runs in-process (``NodeService``) on 127.0.0.1, in a temporary
folder; every wait is bounded."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from crdtkit.client import Client
from crdtkit.node import NodeService
from crdtkit.tcpnode import TcpNodeTransport
from crdts import GCounter, ORSet
from replication.sqlite import SQLiteStore

KEY = bytes(range(32))


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _with_node(folder: Path, work: Callable[[Client, NodeService], Awaitable[None]]) -> None:
    async def main() -> None:
        port = _port()
        service = NodeService("n0", folder, transport=lambda rng: TcpNodeTransport(
            "n0", KEY, rng=rng, listen=("127.0.0.1", port)))
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            client = await Client.connect(("127.0.0.1", port), KEY)
            try:
                await asyncio.wait_for(work(client, service), 60)
            finally:
                client.close()
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    asyncio.run(main())


def test_pipelined_updates_share_commits_and_each_is_answered(tmp_path: Path) -> None:
    commits: list[int] = []

    async def work(client: Client, service: NodeService) -> None:
        commit = service.store.commit

        def counting(rows: object, answers: object = (), meta: object = None) -> None:
            commits.append(len(answers))  # type: ignore[arg-type]
            commit(rows, answers, meta)  # type: ignore[arg-type]

        service.store.commit = counting  # type: ignore[method-assign]
        ops = await asyncio.gather(
            *(client.update("hits", "GCounter", "increment", 1) for _ in range(50)),
            *(client.update("cart", "ORSet", "add", f"item{i}") for i in range(50)),
        )
        assert len({op.dot for op in ops}) == 100
        assert [op.key for op in ops] == ["hits"] * 50 + ["cart"] * 50
        hits, cart = await client.get("hits"), await client.get("cart")
        assert isinstance(hits, GCounter) and hits.value == 50
        assert isinstance(cart, ORSet) and len(cart.value) == 50

    _with_node(tmp_path, work)
    assert sum(commits) == 100
    assert max(commits) > 1  # some updates shared a commit
    store = SQLiteStore(tmp_path, node="n0")
    try:
        assert {e.key for e in store.load().entries} == {"hits", "cart"}
    finally:
        store.close()


def test_a_request_retried_while_in_flight_is_applied_once(tmp_path: Path) -> None:
    async def work(client: Client, service: NodeService) -> None:
        first, again, *_ = await asyncio.gather(
            client.update("hits", "GCounter", "increment", 3, request_id=b"same"),
            client.update("hits", "GCounter", "increment", 3, request_id=b"same"),
            client.update("other", "GCounter", "increment", 1),
        )
        assert first.dot == again.dot
        hits = await client.get("hits")
        assert isinstance(hits, GCounter) and hits.value == 3

    _with_node(tmp_path, work)


def test_a_caller_that_gives_up_leaves_the_connection_usable(tmp_path: Path) -> None:
    async def work(client: Client, service: NodeService) -> None:
        waiting = asyncio.ensure_future(client.update("k", "GCounter", "increment", 1))
        await asyncio.sleep(0)
        waiting.cancel()
        op = await client.update("k", "GCounter", "increment", 2)
        assert op.key == "k"
        assert (await client.keyspace()) == service.replica.encode_keyspace()

    _with_node(tmp_path, work)


def test_a_connection_in_flight_is_bounded_in_requests_and_bytes() -> None:
    from crdtkit.tcpnode import _Room

    async def main() -> None:
        room = _Room(3, 100)
        await room.take(200)  # alone: over the bytes, but one request always goes
        second = asyncio.ensure_future(room.take(10))
        await asyncio.sleep(0)
        assert not second.done()  # 210 bytes would be over 100
        room.give(200)
        await asyncio.wait_for(second, 1)
        for _ in range(2):
            await room.take(1)
        fourth = asyncio.ensure_future(room.take(1))
        await asyncio.sleep(0)
        assert not fourth.done()  # 3 requests in flight already
        room.give(1)
        await asyncio.wait_for(fourth, 1)

    asyncio.run(main())
