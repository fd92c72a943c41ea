"""Consistency levels between real ``crdtkit node`` processes on loopback
(issue 12's acceptance): with 2 of 5 nodes stopped, an update at
``majority`` succeeds and one at ``all`` comes back, in time, saying what it
reached; after an update at ``majority`` returns, a read at ``majority``
from any other node sees it. Every wait is bounded; every process started
is stopped."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from crdtkit.cli import main
from crdtkit.client import Client, Gathered, NodeError, Written
from crdtkit.cluster import LocalCluster
from crdts import GCounter, ORSet

LIVE = ("n0", "n1", "n2")
STOPPED = ("n3", "n4")


async def _all_up(cluster: LocalCluster, timeout: float = 20.0) -> None:
    """Until every node sees five members up (bounded)."""
    clients = await cluster.clients()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            views = [await c.members() for c in clients.values()]
            if all(sum(m.status == "up" for m in view) == 5 for view in views):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"members not all up after {timeout} s: {views}")
    finally:
        for client in clients.values():
            client.close()


async def _levels(cluster: LocalCluster) -> None:
    clients: dict[str, Client] = {node: await cluster.client(node) for node in LIVE}
    try:
        written = await clients["n0"].update(
            "hits", "GCounter", "increment", 1, level="majority", timeout=10
        )
        assert isinstance(written, Written) and written.reached.ok, written.reached
        assert written.reached.reached == LIVE and written.reached.members[3:] == STOPPED

        everyone = await clients["n1"].update(
            "hits", "GCounter", "increment", 2, level="all", timeout=0.5
        )
        assert not everyone.reached.ok
        assert everyone.reached.reached == LIVE and everyone.reached.missing == STOPPED
        assert str(everyone.reached).startswith("all not reached: 3 of 5 members (n0, n1, n2)")
        # Not reached, but applied and durable at n1: a local read there sees it.
        held = await clients["n1"].get("hits")
        assert isinstance(held, GCounter) and held.value == 3

        # A majority write through each live node, then a majority read from
        # each other live node: it always sees the write.
        for n, origin in enumerate(LIVE):
            key = f"cart-{origin}"
            done = await clients[origin].update(
                key, "ORSet", "add", f"milk-{n}", level="majority", timeout=10
            )
            assert done.reached.ok
            for reader in LIVE:
                if reader == origin:
                    continue
                gathered = await clients[reader].get(key, level="majority", timeout=10)
                assert isinstance(gathered, Gathered) and gathered.reached.ok
                assert isinstance(gathered.state, ORSet)
                assert sorted(gathered.state) == [f"milk-{n}"], (reader, gathered)

        # A bad level or timeout from a client is refused, changes nothing,
        # and the connection stays up.
        node = clients["n0"]
        with pytest.raises(NodeError, match="consistency level"):
            await node._call("update", "bad", "GCounter", "increment", [1], b"r" * 8, "most", 9)
        with pytest.raises(NodeError, match="timeout"):
            await node._call("get", "hits", "majority", 10**9)
        assert await node.get("bad") is None

        # A read at all with two members down: what it gathered, and that it fell short.
        partial = await clients["n2"].get("hits", level="all", timeout=0.5)
        assert not partial.reached.ok and partial.reached.missing == STOPPED
        assert isinstance(partial.state, GCounter) and partial.state.value == 3
    finally:
        for client in clients.values():
            client.close()


def test_levels_with_two_of_five_nodes_stopped(tmp_path: Path) -> None:
    cluster = LocalCluster(5, tmp_path, interval=0.1)
    cluster.start()
    try:
        asyncio.run(_all_up(cluster))
        for node in STOPPED:
            cluster.kill(node)
        asyncio.run(_levels(cluster))
        # The command line says the same, and exits 1 when the level falls short.
        host, port = cluster.addresses["n2"]
        base = ["ask", "--node", f"{host}:{port}", "--key-file", str(cluster.key_file)]
        out = io.StringIO()
        assert main([*base, "update", "cli", "PNCounter", "increment", "4",
                     "--write", "majority", "--timeout", "10"], out=out) == 0, out.getvalue()
        assert "majority reached: 3 of 5 members (n0, n1, n2); needed 3; not n3, n4" \
            in out.getvalue()
        out = io.StringIO()
        assert main([*base, "update", "cli", "PNCounter", "increment", "1",
                     "--write", "all", "--timeout", "0.5"], out=out) == 1
        text = out.getvalue()
        assert "all not reached: 3 of 5 members (n0, n1, n2); needed 5; not n3, n4" in text
        assert "durable at" in text
        out = io.StringIO()
        assert main([*base, "get", "cli", "--read", "majority"], out=out) == 0
        assert out.getvalue().startswith("cli = 5\n"), out.getvalue()
    finally:
        codes = cluster.stop()
        assert all(code == 0 for code in codes.values()), (codes, cluster.log("n0"))


def test_ask_refuses_a_bad_level_or_timeout_in_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_text("00" * 32 + "\n")
    base = ["ask", "--node", "127.0.0.1:9", "--key-file", str(key_file)]
    for argv in (
        [*base, "get", "k", "--read", "most"],
        [*base, "update", "k", "GCounter", "increment", "1", "--timeout", "-1"],
        [*base, "update", "k", "GCounter", "increment", "1", "--timeout", "601"],
    ):
        err = io.StringIO()
        assert main(argv, out=io.StringIO(), err=err) == 2
        assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("crdtkit: ")


async def _read_a_big_key(cluster: LocalCluster) -> Gathered:
    writer, reader = await cluster.client("n0"), await cluster.client("n1")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while sum(m.status == "up" for m in await reader.members()) < 3:  # bounded
            assert loop.time() < deadline, "members not all up"
            await asyncio.sleep(0.05)
        # 1.5 MiB in 15 elements: larger than a frame between peers (1 MiB).
        await asyncio.gather(*(
            writer.update("big", "ORSet", "add", f"{i:02}" + "x" * 100_000) for i in range(15)
        ))
        return await reader.get("big", level="all", timeout=10)
    finally:
        writer.close()
        reader.close()


def test_a_key_larger_than_a_frame_is_read_at_a_level(tmp_path: Path) -> None:
    """It was answered "too large" by every member, so a read at a level of
    such a key always came back not reached; it travels in pieces now."""
    cluster = LocalCluster(3, tmp_path, interval=0.1)
    cluster.start()
    try:
        gathered = asyncio.run(_read_a_big_key(cluster))
    finally:
        codes = cluster.stop()
    assert gathered.reached.ok, gathered.reached
    assert isinstance(gathered.state, ORSet) and len(list(gathered.state)) == 15
    assert all(code == 0 for code in codes.values()), codes
