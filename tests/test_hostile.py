"""Hostile connections against the TCP runtime (issue 12, item 4): silent and
trickled handshakes from one address and from many, TLS handshakes left open,
floods of refusals. Honest clients and peers still get in within 1 s, the log
stays short, file descriptors stay under the limit; and a client told its key
was refused or its node is gone says which.

Attackers use other loopback addresses (127.0.0.2 and up: Linux routes all of
127/8 to the loopback), so that "another address" is real. Every flood is
bounded in count and time, and every connection is closed at the end.
``CRDTKIT_HOSTILE_SECONDS=60`` runs the node-process flood for a minute (the
acceptance's "under 100 lines a minute"); by default it runs 1.5 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from crdtkit.client import AuthenticationFailed, Client, NodeUnavailable
from crdtkit.cluster import HOST, _free_port
from crdtkit.node import NodeService
from crdtkit.tcpnode import TcpNodeTransport
from replication.auth import Handshake, generate_key
from replication.tcp import Channel, Limits, PeerClosed, TcpEndpoint, connect
from tests.flood import Holders, attackers, open_from

KEY = bytes(range(32))
CERTS = Path(__file__).parent / "certs"
T = TypeVar("T")
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(test: Callable[[], Awaitable[T]], limit: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(test(), limit))


async def echo(channel: Channel) -> None:
    """A client handler: answers every frame with itself."""
    with __import__("contextlib").suppress(PeerClosed):
        while True:
            await channel.send(await channel.recv())


async def server(**options: object) -> TcpEndpoint:
    endpoint = TcpEndpoint("b", KEY, rng=random.Random(2), drop_rng=random.Random(3),
                           on_client=echo, **options)  # type: ignore[arg-type]
    await endpoint.start()
    return endpoint


async def is_closed(reader: asyncio.StreamReader, seconds: float = 0.0) -> bool:
    """Whether the other side has closed (waiting at most ``seconds``)."""
    try:
        return await asyncio.wait_for(reader.read(1 << 16), seconds or 0.001) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def honest_client(address: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
    """Connect as a client and get an answer, within 1 s."""
    async with asyncio.timeout(1.0):
        channel = await connect(address, KEY, "honest", ssl_context=tls)
        await channel.send(b"ping")
        assert await channel.recv() == b"ping"
        channel.close()


async def honest_peer(b: TcpEndpoint, tls: ssl.SSLContext | None = None) -> None:
    """A peer restarted a moment ago reaches ``b``, within 1 s."""
    a = TcpEndpoint("a", KEY, rng=random.Random(1), client_ssl=tls)
    await a.start()
    try:
        a.add_peer("b", b.address)
        a.send("b", b"back again")
        got: list[tuple[str, bytes]] = []
        for _ in range(100):  # bounded: 1 s
            got += b.receive()
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [("a", b"back again")]
    finally:
        await a.close()


def _server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=CERTS / "ca.pem")
    context.load_cert_chain(CERTS / "node.pem", CERTS / "node.key")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=CERTS / "ca.pem")
    context.load_cert_chain(CERTS / "client.pem", CERTS / "client.key")
    return context


# -- half-open connections -------------------------------------------------------------


def test_silent_connections_from_one_address_do_not_lock_it_out() -> None:
    # Seen on main: 8 silent connections from one address locked it out (no
    # client got in; a restarted peer could not reconnect for 24 s). Here
    # they come from the honest nodes' own address.
    async def test() -> None:
        b = await server()
        held = [await open_from(b.address, HOST) for _ in range(8)]
        try:
            await honest_client(b.address)
            await honest_peer(b)
            assert b.stats.refused["evicted"] == 1  # the oldest silent one
            assert b.half_open == 7
        finally:
            for _, writer in held:
                writer.close()
            await b.close()

    run(test)


def test_a_flood_from_many_addresses_does_not_lock_out_anyone() -> None:
    # Seen on main: 64 silent connections from 8 addresses locked out everyone.
    async def test() -> None:
        b = await server()
        flood = Holders(b.address, attackers(8), 8)
        try:
            for _ in range(300):  # bounded: 3 s
                if flood.opened >= 64:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the flood reopens what is dropped
            await honest_client(b.address)
            await honest_peer(b)
            assert b.half_open <= Limits().startups[2]
            assert flood.opened > 64  # it kept opening; the budget held
        finally:
            await flood.stop()
            await b.close()

    run(test)


def test_a_trickled_handshake_ends_at_one_deadline() -> None:
    # Seen on main: a handshake trickled a byte at a time held a slot for
    # 18.5 s, each read having its own timeout. Every read here comes in
    # within the deadline (0.5 s), and the whole handshake takes longer.
    async def test() -> None:
        b = await server(limits=Limits(handshake_timeout=0.5))
        reader, writer = await open_from(b.address, attackers(1)[0])
        shake = Handshake(KEY, "slow", "peer", os.urandom(32), initiator=True)

        async def trickle(body: bytes) -> None:
            frame = len(body).to_bytes(4, "big") + body
            for i in range(0, len(frame), max(1, len(frame) // 4)):
                writer.write(frame[i:i + max(1, len(frame) // 4)])
                await asyncio.sleep(0.1)

        try:
            await trickle(shake.hello())
            length = int.from_bytes(await reader.readexactly(4), "big")
            proof = shake.receive_hello(await reader.readexactly(length))
            await trickle(proof)
            # Closed at the deadline, before its proof was answered (on main
            # the node answered it, 0.8 s in: no read had taken 0.5 s).
            assert await is_closed(reader, 2.0)
            assert b.stats.refused["timed out"] == 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed before its hello was even answered: also the deadline
        finally:
            writer.close()
            assert b.stats.refused["timed out"] == 1
            await b.close()

    run(test)


def test_tls_handshakes_count_against_the_half_open_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Seen on main: TLS handshakes were not counted (file descriptors reached
    # 1,003 of 1,024, with 5,825 tracebacks logged in 20 s).
    async def test() -> None:
        b = await server(server_ssl=_server_tls(), client_ssl=_client_tls())
        opened = [await open_from(b.address, source) for source in attackers(25)
                  for _ in range(4)]  # 100 connections that never say hello
        try:
            await asyncio.sleep(0.2)
            still_open = [s for s in opened if not await is_closed(s[0])]
            assert len(still_open) <= Limits().startups[2]
            assert b.half_open <= Limits().startups[2]
            await honest_client(b.address, _client_tls())
            await honest_peer(b, _client_tls())
            tls = await open_from(b.address, attackers(26)[-1])
            tls[1].write(b"\x16\x03\x01\x00\x05hello")  # not a TLS ClientHello
            assert await is_closed(tls[0], 2.0)
            tls[1].close()
        finally:
            for _, writer in opened:
                writer.close()
            await b.close()
        assert b.stats.refused["TLS"] >= 1
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
    run(test)


def test_refusals_are_logged_once_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Seen on main: a line for every refused connection (38,646 in 20 s).
    async def test() -> None:
        b = await server()

        async def bad_hello(source: str) -> None:
            reader, writer = await open_from(b.address, source)
            writer.write((5).to_bytes(4, "big") + b"hello")  # not a crdtkit hello
            await is_closed(reader, 2.0)
            writer.close()

        try:
            for _ in range(6):  # 300 refusals
                await asyncio.gather(*[bad_hello(s) for s in attackers(50)])
            assert b.stats.refused["failed authentication"] == 300
        finally:
            await b.close()

    with caplog.at_level(logging.INFO, logger="crdtkit.tcp"):
        run(test)
    lines = [r.getMessage() for r in caplog.records if r.name == "crdtkit.tcp"]
    assert len(lines) == 2, lines  # the first, and the count of the rest at close
    assert lines[1] == 'b: 299 more like "failed authentication", not logged'


def test_a_client_flood_does_not_lock_out_peers_nor_a_peer_flood_clients() -> None:
    async def test() -> None:
        b = await server(limits=Limits(max_clients=4, max_peers=4))
        held: list[Channel] = []
        try:
            held = [await connect(b.address, KEY, f"c{i}") for i in range(4)]
            await honest_peer(b)
            extra = await connect(b.address, KEY, "one client too many")
            with pytest.raises((PeerClosed, ConnectionError)):
                await extra.recv(timeout=2.0)
            assert b.stats.refused["too many clients"] == 1
            for channel in held:
                channel.close()
            held = [await connect(b.address, KEY, f"m{i}", role="peer") for i in range(4)]
            await asyncio.sleep(0.1)  # a's connection is gone, the four are counted
            await honest_client(b.address)
            extra = await connect(b.address, KEY, "one peer too many", role="peer")
            with pytest.raises((PeerClosed, ConnectionError)):
                await extra.recv(timeout=2.0)
            assert b.stats.refused["too many peers"] == 1
        finally:
            for channel in held:
                channel.close()
            await b.close()

    run(test)


# -- what a client is told -------------------------------------------------------------


def test_a_client_is_told_its_key_was_refused_or_its_node_is_gone(tmp_path: Path) -> None:
    # Seen on main: both raised a bare PeerClosed.
    async def test() -> None:
        transport = TcpNodeTransport("n", KEY, rng=random.Random(1), listen=(HOST, 0))
        service = NodeService("n", tmp_path, transport=lambda rng: transport)
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 10)
        address = transport.endpoint.address
        with pytest.raises(AuthenticationFailed, match="refused our cluster key"):
            await Client.connect(address, bytes(32))
        client = await Client.connect(address, KEY)
        await client.update("hits", "GCounter", "increment", 1)
        stop.set()
        await asyncio.wait_for(running, 30)
        with pytest.raises(NodeUnavailable, match="closed the connection"):
            await client.update("hits", "GCounter", "increment", 1)
        with pytest.raises(NodeUnavailable, match="closed the connection"):
            await client.get("hits")  # and every later call
        client.close()
        with pytest.raises(NodeUnavailable, match="no node at"):
            await Client.connect(address, KEY)

    run(test)


# -- a node process under a flood --------------------------------------------------------


FILE_LIMIT = 512


def test_a_node_under_a_tls_flood_serves_keeps_its_files_and_its_log_short(
    tmp_path: Path,
) -> None:
    # 600 connections that never start TLS, from 75 addresses (8 each), each
    # opened again as soon as the node closes it, against a node allowed 512
    # files: more than it may hold. The flood runs in a process of its own,
    # as an attacker elsewhere would.
    seconds = float(os.environ.get("CRDTKIT_HOSTILE_SECONDS", "1.5"))
    key_file = tmp_path / "cluster.key"
    key_file.write_text(generate_key() + "\n")
    key = bytes.fromhex(key_file.read_text().strip())
    port = _free_port()
    log_path = tmp_path / "node.log"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))

    command = [
        sys.executable, "-m", "crdtkit", "node", "--id", "n0", "--listen", f"{HOST}:{port}",
        "--key-file", str(key_file), "--folder", str(tmp_path / "n0"),
        "--tls-cert", str(CERTS / "node.pem"), "--tls-key", str(CERTS / "node.key"),
        "--tls-ca", str(CERTS / "ca.pem"),
    ]
    with log_path.open("wb") as log:
        node = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                preexec_fn=limit_files)  # noqa: PLW1509 (no threads yet)
    flood: subprocess.Popen[bytes] | None = None

    def files() -> int:
        return len(os.listdir(f"/proc/{node.pid}/fd"))

    async def honest() -> None:
        client = await Client.connect((HOST, port), key, ssl_context=_client_tls())
        try:
            await client.update("hits", "GCounter", "increment", 1)
        finally:
            client.close()

    async def test() -> tuple[int, list[float], int]:
        nonlocal flood
        for _ in range(300):  # bounded: 30 s for the node to start
            try:
                await honest()
                break
            except (NodeUnavailable, ssl.SSLError):
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the node did not start")
        before = len(log_path.read_text().splitlines())
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.flood", HOST, str(port), "75", "8", str(seconds + 0.7)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).parent.parent,
        )
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.5)  # under way
        most, took = 0, []
        end = loop.time() + seconds
        while loop.time() < end:
            most = max(most, files())
            began = loop.time()
            async with asyncio.timeout(1.0):  # an honest client, within 1 s
                await honest()
            took.append(loop.time() - began)
            await asyncio.sleep(0.1)
        lines = len(log_path.read_text().splitlines()) - before
        return most, took, lines

    try:
        most, took, lines = run(test, 60 + seconds)
        assert flood is not None
        opened = int(flood.communicate(timeout=30)[0].split()[1])
    finally:
        for process in (flood, node):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        print(log_path.read_text()[-5000:])  # shown if the test fails
    text = log_path.read_text()
    print(f"flood of {seconds} s: {opened:,} connections opened, the node held at most {most} "
          f"files of {FILE_LIMIT}; {len(took)} honest clients, slowest {max(took or [0]):.3f} s, "
          f"median {sorted(took or [0])[len(took) // 2]:.3f} s; {lines} log lines")
    assert opened > 600  # the flood kept opening what the node dropped
    assert "Traceback" not in text
    assert most < FILE_LIMIT
    assert took and max(took) < 1.0
    # At most one line per reason per 10 s: a few reasons, a minute or less.
    assert lines < max(10, 100 * seconds / 60), text[-3000:]
