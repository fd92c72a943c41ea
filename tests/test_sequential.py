"""One client that waits for each answer (issue 9: one sequential client
within 2x of one process committing each update itself): what a round trip
costs in turns of the event loop and in tasks, beside the commit. The
figures are in ``bench/processes.py``; these are regression tests for the
turns that were cut.

The node runs in-process (``NodeService``) on 127.0.0.1 in the client's
event loop, in a temporary folder; every wait is bounded."""

from __future__ import annotations

import asyncio
import selectors
from pathlib import Path
from typing import Any

import pytest

from crdtkit.client import Client
from crdtkit.node import NodeService
from crdts import GCounter
from replication.auth import Hello, Session
from replication.tcp import Channel, FrameReader, Limits, PeerClosed
from tests.test_pipelining import KEY, _with_node

UPDATES = 40


def _turns(loop: asyncio.AbstractEventLoop) -> list[int]:
    """A counter of the loop's turns: one per wait on its selector."""
    count = [0]
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def counted(timeout: float | None = None) -> list[Any]:
        count[0] += 1
        return select(timeout)

    selector.select = counted  # type: ignore[method-assign]
    return count


def test_a_sequential_update_takes_few_turns_of_the_event_loop(tmp_path: Path) -> None:
    # A round trip took 9 turns of the loop the client and the node share
    # here: the client's write waited for a turn, then its reader task woke
    # the caller in another; the node started the commit a turn after
    # reading the request and wrote the answer a turn after the commit.
    per_update: list[float] = []

    async def work(client: Client, service: NodeService) -> None:
        for i in range(5):  # warm: the connection's first calls
            await client.update(f"w{i}", "GCounter", "increment", 1)
        turns = _turns(asyncio.get_running_loop())
        for _ in range(UPDATES):
            await client.update("k", "GCounter", "increment", 1)
        per_update.append(turns[0] / UPDATES)
        state = await client.get("k")
        assert isinstance(state, GCounter) and state.value == UPDATES

    _with_node(tmp_path, work)
    assert per_update[0] <= 6, per_update


def test_a_client_waiting_for_each_answer_makes_no_task(tmp_path: Path) -> None:
    # The client's one reader task woke each caller a turn after reading its
    # answer; a caller alone now reads its own answer.
    tasks: list[str] = []

    async def work(client: Client, service: NodeService) -> None:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            tasks.append(coro.__qualname__)
            if factory is not None:
                return factory(loop, coro, **kwargs)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        try:
            for i in range(10):
                await client.update("k", "GCounter", "increment", i)
            await client.stats()
        finally:
            loop.set_task_factory(factory)

    _with_node(tmp_path, work)
    assert [t for t in tasks if t.startswith("Client.")] == []


def test_a_frame_readers_deadlines_share_one_timer() -> None:
    # FrameReader kept each read's deadline with an asyncio.timeout (a timer
    # made and cancelled per frame); one timer now moves with the reads.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        frames = FrameReader(reader)
        timers: list[float] = []
        call_at = loop.call_at

        def counted(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            timers.append(when)
            return call_at(when, *args, **kwargs)

        loop.call_at = counted  # type: ignore[method-assign, assignment]
        try:
            for i in range(50):
                loop.call_soon(reader.feed_data, b"\x00\x00\x00\x01" + bytes([i]))
                assert await frames.next(16, 10.0, 10.0) == bytes([i])
            assert len(timers) == 1
            # Silence: the deadline of the read waiting, and TimeoutError.
            started = loop.time()
            with pytest.raises(TimeoutError):
                await frames.next(16, 0.05, 0.05)
            assert 0.04 <= loop.time() - started < 5
            # A cancel from elsewhere stays a cancel.
            task = asyncio.create_task(frames.next(16, 10.0, 10.0))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # A deadline that moved on: the timer waits for it.
            first = asyncio.create_task(frames.next(16, 0.02, 0.02))
            loop.call_later(0.01, reader.feed_data, b"\x00\x00\x00\x01!")
            assert await first == b"!"
            second = asyncio.create_task(frames.next(16, 0.2, 0.2))
            loop.call_later(0.05, reader.feed_data, b"\x00\x00\x00\x01?")
            assert await second == b"?"
            reader.feed_eof()
            with pytest.raises(PeerClosed):
                await frames.next(16, 1.0, 1.0)
        finally:
            loop.call_at = call_at  # type: ignore[method-assign]

    asyncio.run(main())


def test_a_channel_writes_a_turns_first_frame_at_once_and_the_rest_together() -> None:
    # Channel.send_nowait wrote every frame a turn of the loop later; the
    # first of a turn goes out at once now, the others of the turn in one
    # write at its end.
    class Writer:
        transport = None

        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    async def main() -> None:
        ha = Hello("a", "client", bytes(32)).to_bytes()
        hb = Hello("b", "client", bytes([1]) * 32).to_bytes()
        session = Session(KEY, ha, hb, initiator=True)
        peer = Session(KEY, ha, hb, initiator=False)
        writer = Writer()
        channel = Channel(asyncio.StreamReader(), writer, session, Limits())  # type: ignore[arg-type]
        channel.send_nowait(b"first")
        assert len(writer.writes) == 1
        channel.send_nowait(b"second")
        channel.send_nowait(b"third")
        assert len(writer.writes) == 1
        await asyncio.sleep(0)
        assert len(writer.writes) == 2
        stream = asyncio.StreamReader()
        stream.feed_data(b"".join(writer.writes))
        frames = FrameReader(stream)
        got = [peer.open(await frames.next(1024, 1.0, 1.0)) for _ in range(3)]
        assert got == [b"first", b"second", b"third"]
        channel.send_nowait(b"next turn")
        assert len(writer.writes) == 3

    asyncio.run(main())


def test_calls_that_each_wait_in_turn_share_one_connection(tmp_path: Path) -> None:
    # Many senders on one client, each sending its next update once the
    # last is answered (the bench's pipelining row): a call that read its
    # own answer handed reading to a task that had not run yet, and a call
    # made meanwhile read too ("read() called while another coroutine is
    # already waiting").
    async def work(client: Client, service: NodeService) -> None:
        async def sender(i: int) -> None:
            for _ in range(5):
                await client.update(f"k{i % 7}", "GCounter", "increment", 1)

        await asyncio.gather(*(sender(i) for i in range(64)))
        total = 0
        for k in range(7):
            state = await client.get(f"k{k}")
            assert isinstance(state, GCounter)
            total += state.value
        assert total == 64 * 5

    _with_node(tmp_path, work)


def test_a_client_hears_of_its_commit_before_the_node_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node applied a commit's batch, then answered: a client waiting
    # for each answer waited for the apply on every update. It answers
    # first now, in the same callback, so the client's next request (a read
    # of what it wrote included) still comes after the apply.
    held: list[int] = []  # the key's value at the node as each answer goes out

    async def work(client: Client, service: NodeService) -> None:
        send_nowait = Channel.send_nowait

        def sending(self: Channel, body: bytes, *, alone: bool = False) -> None:
            if body.startswith(b"\x86\x64done"):  # the node's answer to an update
                state = service.replica.get("k")
                held.append(state.value if isinstance(state, GCounter) else 0)
            send_nowait(self, body, alone=alone)

        monkeypatch.setattr(Channel, "send_nowait", sending)
        for i in range(3):
            await client.update("k", "GCounter", "increment", 1)
            state = await client.get("k")  # what it wrote, applied
            assert isinstance(state, GCounter) and state.value == i + 1

    _with_node(tmp_path, work)
    assert held == [0, 1, 2]
