"""A node on NATS (``crdtkit.natsnode``): client requests as NATS
request/reply sealed with the cluster key, served by an in-process
``NodeService`` over a real ``nats-server`` on loopback (the ``nats_server``
fixture); hostile requests (forged, replayed, redirected, garbage) are
refused and counted, never served, never a traceback. The sealing itself is
checked without a server. Every wait is bounded."""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crdtkit.client import Client, NodeError
from crdtkit.natsnode import (
    MAX_ASSEMBLIES,
    MAX_NONCES,
    NatsChannel,
    NatsNodeTransport,
    NodeUnreachable,
    RequestRefused,
    _Asked,
    _Nonces,
    open_part,
    open_request,
    requests_subject,
    seal_parts,
    seal_request,
)
from crdtkit.node import NodeService
from crdts.errors import DecodeError

KEY = bytes(range(32))


# -- sealing, without a server ----------------------------------------------------------


def _sealed(key: bytes = KEY, to: str = "s", reply: str = "r", body: bytes = b"b") -> bytes:
    return seal_request(key, to=to, reply=reply, client="c", nonce=bytes(16), sent_ms=5,
                        body=body)


def test_a_request_opens_only_with_the_key_the_subject_and_the_reply_it_was_sealed_for() -> None:
    assert open_request(KEY, "s", "r", _sealed())[3] == b"b"
    for key, to, reply in ((bytes(32), "s", "r"), (KEY, "other", "r"), (KEY, "s", "other")):
        with pytest.raises(DecodeError, match="bad MAC"):
            open_request(key, to, reply, _sealed())
    sealed = bytearray(_sealed())
    sealed[5] ^= 1
    with pytest.raises(DecodeError):
        open_request(KEY, "s", "r", bytes(sealed))
    for junk in (b"", b"x" * 10, os.urandom(64)):
        with pytest.raises(DecodeError):
            open_request(KEY, "s", "r", junk)


def test_a_part_opens_only_with_the_key_the_subject_and_the_reply_it_was_sealed_for() -> None:
    parts = seal_parts(KEY, to="s", reply="r", client="c", nonce=bytes(16), sent_ms=5,
                       body=b"x" * 5000, room=2048)
    assert [open_part(KEY, "s", "r", p)[3:5] for p in parts] == [(0, 3), (1, 3), (2, 3)]
    assert b"".join(open_part(KEY, "s", "r", p)[5] for p in parts) == b"x" * 5000
    for key, to, reply in ((bytes(32), "s", "r"), (KEY, "other", "r"), (KEY, "s", "other")):
        with pytest.raises(DecodeError, match="bad MAC"):
            open_part(key, to, reply, parts[0])
    # A part is no request, nor a request a part: each has its own tag.
    with pytest.raises(DecodeError, match="bad MAC"):
        open_request(KEY, "s", "r", parts[0])
    with pytest.raises(DecodeError, match="bad MAC"):
        open_part(KEY, "s", "r", _sealed())


def test_a_nonce_is_taken_once_and_only_within_the_window() -> None:
    nonces = _Nonces()
    assert nonces.take(b"a" * 16, 1_000, 1_000, 100) is None
    assert nonces.take(b"a" * 16, 1_000, 1_050, 100) == "replayed"
    assert nonces.take(b"b" * 16, 800, 1_000, 100) == "stale"
    assert nonces.take(b"c" * 16, 1_200, 1_000, 100) == "stale"  # from the future
    assert nonces.take(b"a" * 16, 1_200, 1_200, 100) is None  # the first left the window


def test_the_nonces_kept_are_bounded() -> None:
    nonces = _Nonces()
    for n in range(MAX_NONCES + 10):
        assert nonces.take(n.to_bytes(16, "big"), 1_000 + n // 1000, 1_000, 10**6) is None
    assert len(nonces._seen) <= MAX_NONCES
    # Older than anything it still remembers: it cannot tell, so it refuses.
    assert nonces.take(b"z" * 16, 999, 1_000, 10**6) == "stale"


# -- a node on a real server ------------------------------------------------------------


@dataclass
class _Msg:
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None


def _with_node(server_url: str, folder: Path, cluster: str,
               work: Callable[[NodeService, NatsNodeTransport], Awaitable[None]]) -> None:
    async def main() -> None:
        made: list[NatsNodeTransport] = []

        def transport(rng: Any) -> NatsNodeTransport:
            made.append(NatsNodeTransport("n0", KEY, rng=rng, servers=[server_url],
                                          cluster=cluster))
            return made[0]

        service = NodeService("n0", folder, transport=transport, interval=0.05)
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            await asyncio.wait_for(work(service, made[0]), 30)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    asyncio.run(main())


def test_requests_over_nats_are_served_and_their_answers_checked(nats_server: Any,
                                                                 tmp_path: Path) -> None:
    async def work(service: NodeService, transport: NatsNodeTransport) -> None:
        client = await Client.over_nats("n0", KEY, servers=[nats_server.url], cluster="rq1")
        try:
            ops = await asyncio.gather(*(client.update("hits", "GCounter", "increment", 1)
                                         for _ in range(50)))
            assert len({op.dot for op in ops}) == 50
            state = await client.get("hits")
            assert getattr(state, "value", None) == 50
            retry = await client.update("hits", "GCounter", "increment", 1,
                                        request_id=b"once")
            again = await client.update("hits", "GCounter", "increment", 1,
                                        request_id=b"once")
            assert retry.dot == again.dot  # answered again, applied once
            with pytest.raises(NodeError, match="does not answer"):
                await client._call("members", "extra")  # a request the node cannot serve
            # A request larger than a NATS message (1 MiB) travels in parts:
            # it was refused before ("over the NATS server's max_payload").
            large = "y" * 1_500_000
            await client.update("big", "ORSet", "add", large)
            held = await client.get("big")
            assert held is not None and list(held) == [large]  # type: ignore[call-overload]
            # An answer larger than a NATS message travels in chunks.
            big = "x" * 700_000
            await client.update("a", "MVRegister", "assign", big)
            await client.update("b", "MVRegister", "assign", big)
            assert await client.keyspace() == service.replica.encode_keyspace()
            stats = await client.stats()
            assert stats["requests_served"] >= 58 and stats["requests_refused"] == 0
        finally:
            client.close()

    _with_node(nats_server.url, tmp_path, "rq1", work)


def test_hostile_requests_are_refused_and_counted_never_served(nats_server: Any,
                                                               tmp_path: Path) -> None:
    import nats

    async def work(service: NodeService, transport: NatsNodeTransport) -> None:
        subject = requests_subject("rq2", "n0")
        honest = await Client.over_nats("n0", KEY, servers=[nats_server.url], cluster="rq2")
        forger = await Client.over_nats("n0", bytes(32), servers=[nats_server.url],
                                        cluster="rq2")
        spy = await nats.connect(servers=[nats_server.url])
        seen: list[Any] = []
        tap = await spy.subscribe(subject, cb=functools.partial(_append, seen))
        try:
            # The wrong key: refused, and the client is told why.
            with pytest.raises(RequestRefused, match="bad MAC"):
                await forger.update("k", "GCounter", "increment", 1)
            # An honest request, recorded on the wire and replayed as it was.
            await honest.update("k", "GCounter", "increment", 1)
            await spy.flush()
            recorded = seen[-1]
            inbox = spy.new_inbox()
            answers: list[Any] = []
            await spy.subscribe(recorded.reply, cb=functools.partial(_append, answers))
            await spy.publish(subject, recorded.data, reply=recorded.reply)
            # ... and redirected to answer on another subject.
            await spy.publish(subject, recorded.data, reply=inbox)
            # Sent to another node's subject: its MAC names n0's.
            await spy.publish(requests_subject("rq2", "n1"), recorded.data,
                              reply=recorded.reply)
            # Garbage, with and without a reply subject.
            for junk in (b"", b"\x00" * 40, os.urandom(300)):
                await spy.publish(subject, junk, reply=inbox)
                await spy.publish(subject, junk)
            await spy.flush()
            refused = await _refusals(transport, 9)
            assert refused.get("replayed") == 1 and refused.get("bad MAC", 0) >= 2, refused
            assert sum(refused.values()) == 9, refused
            state = await honest.get("k")
            assert getattr(state, "value", None) == 1  # applied once
            assert service.replica.stats.updates == 1
            assert (await honest.stats())["requests_refused"] == 9
        finally:
            await tap.unsubscribe()
            await spy.close()
            honest.close()
            forger.close()

    _with_node(nats_server.url, tmp_path, "rq2", work)


def test_requests_in_parts_are_checked_part_by_part_and_bounded(nats_server: Any,
                                                                 tmp_path: Path) -> None:
    import nats

    async def work(service: NodeService, transport: NatsNodeTransport) -> None:
        subject = requests_subject("rq4", "n0")
        honest = await Client.over_nats("n0", KEY, servers=[nats_server.url], cluster="rq4")
        spy = await nats.connect(servers=[nats_server.url])
        seen: list[Any] = []
        tap = await spy.subscribe(subject, cb=functools.partial(_append, seen))
        try:
            await honest.update("big", "ORSet", "add", "z" * 1_200_000)
            await spy.flush()
            parts = seen[-2:]
            assert len(seen) == 2 and all(len(m.data) <= (1 << 20) for m in parts)
            # Replayed whole, and with a part forged by a key it lacks.
            for msg in parts:
                await spy.publish(subject, msg.data, reply=msg.reply)
            forged = seal_parts(bytes(32), to=subject, reply=parts[0].reply, client="c",
                                nonce=bytes(16), sent_ms=0, body=b"q" * 2000, room=1024)
            await spy.publish(subject, forged[0], reply=parts[0].reply)
            # First parts of more requests than the node puts together at once:
            # the oldest are dropped, never served.
            inbox = spy.new_inbox()
            now_ms = int(time.time() * 1000)
            for n in range(MAX_ASSEMBLIES + 3):
                first = seal_parts(KEY, to=subject, reply=inbox, client="c",
                                   nonce=n.to_bytes(16, "big"), sent_ms=now_ms,
                                   body=b"q" * 2048, room=1024)[0]
                await spy.publish(subject, first, reply=inbox)
            await spy.flush()
            refused = await _refusals(transport, 5)
            assert refused == {"replayed": 1, "bad MAC": 1, "parts dropped for room": 3}, \
                refused
            assert len(transport._assemblies) == MAX_ASSEMBLIES
            assert service.replica.stats.updates == 1
        finally:
            await tap.unsubscribe()
            await spy.close()
            honest.close()

    _with_node(nats_server.url, tmp_path, "rq4", work)


async def _refusals(transport: NatsNodeTransport, at_least: int) -> dict[str, int]:
    """The node's refusals by reason, once they count ``at_least`` (or after 2 s)."""
    for _ in range(100):  # bounded: at most 2 s
        if sum(transport.refusals.values()) >= at_least:
            break
        await asyncio.sleep(0.02)
    return dict(transport.refusals)


async def _append(into: list[Any], msg: Any) -> None:
    into.append(msg)


def test_a_node_that_is_not_there_is_unreachable_not_a_hang(nats_server: Any) -> None:
    async def main() -> None:
        client = await Client.over_nats("nobody", KEY, servers=[nats_server.url],
                                        cluster="rq3")
        try:
            with pytest.raises(NodeUnreachable, match="no node listens"):
                await asyncio.wait_for(client.stats(), 5)
        finally:
            client.close()

    asyncio.run(main())


def test_forged_and_foreign_answers_are_dropped_by_the_client() -> None:
    async def main() -> NatsChannel:
        class Connection:
            max_payload = 1 << 20

            def new_inbox(self) -> str:
                return "_INBOX.test"

        channel = NatsChannel(Connection(), KEY, "n0", "crdtkit.c.requests.n0", owned=False)
        channel._asked[b"n" * 16] = (_Asked(b"q", [b"n" * 16]), {})
        await channel._on_answer(_Msg(b"junk"))
        from crdtkit.natsnode import _answers, _client_key

        wrong = _answers(_client_key(bytes(32)), "n0", b"n" * 16, b"hi", 1024)[0]
        other = _answers(_client_key(KEY), "n1", b"n" * 16, b"hi", 1024)[0]
        unasked = _answers(_client_key(KEY), "n0", b"u" * 16, b"hi", 1024)[0]
        for data in (wrong, other, unasked):
            await channel._on_answer(_Msg(data))
        assert channel.dropped == 4 and channel._answers.empty()
        for part in _answers(_client_key(KEY), "n0", b"n" * 16, b"0123456789", 3):
            await channel._on_answer(_Msg(part))
        assert await channel.recv() == b"0123456789"
        return channel

    asyncio.run(main())


def test_an_unanswered_request_is_sent_again_under_a_new_nonce_and_answered_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Core NATS may lose a request (at most once delivery): the channel sends
    # it again, and whichever copy is answered first is the answer.
    from crdtkit import natsnode
    from crdtkit.natsnode import _answers, _client_key

    monkeypatch.setattr(natsnode, "RETRY_AFTER", (0.01,))

    async def main() -> None:
        sent: list[bytes] = []

        class Connection:
            max_payload = 1 << 20

            def new_inbox(self) -> str:
                return "_INBOX.test"

            async def publish(self, subject: str, data: bytes, reply: str) -> None:
                sent.append(data)

        channel = NatsChannel(Connection(), KEY, "n0", "crdtkit.c.requests.n0", owned=False)
        channel._subscription = object()  # as if open() had subscribed
        await channel.send(b"body")
        for _ in range(500):  # bounded: the retry runs on the loop
            if len(sent) >= 3:
                break
            await asyncio.sleep(0.005)
        nonces = list(channel._asked)
        assert len(nonces) >= 3 and channel.resent >= 2
        # An answer to the first copy ends the retries; the others' are dropped.
        await channel._on_answer(_Msg(_answers(_client_key(KEY), "n0", nonces[0], b"ok", 64)[0]))
        assert await channel.recv() == b"ok" and not channel._asked
        await channel._on_answer(_Msg(_answers(_client_key(KEY), "n0", nonces[1], b"ok", 64)[0]))
        assert channel._answers.empty() and channel.dropped == 1
        count = len(sent)
        await asyncio.sleep(0.05)
        assert len(sent) == count  # no more copies once answered
        channel._subscription = None
        channel.close()

    asyncio.run(main())


# -- the command line -------------------------------------------------------------------


def test_crdtkit_refuses_bad_nats_arguments_in_one_line(tmp_path: Path) -> None:
    from crdtkit.cli import main

    key = tmp_path / "k.key"
    assert main(["keygen", str(key)], io.StringIO()) == 0
    node = ["node", "--id", "a", "--key-file", str(key), "--folder", str(tmp_path / "a")]
    url = ["--nats", "nats://127.0.0.1:1"]
    cases = [
        (node, "needs --listen HOST:PORT (TCP) or --nats URL"),
        (node + url, "--nats needs --cluster NAME"),
        ([*node, "--nats", "http://h:1", "--cluster", "c"], "expected a NATS URL"),
        (node + url + ["--cluster", "a.b"], "a cluster name is"),
        (node + url + ["--cluster", "c", "--listen", "127.0.0.1:1"], "--listen is for the TCP"),
        (node + url + ["--cluster", "c", "--peer", "b=h:1"], "--peer over NATS is a node id"),
        ([*node, "--listen", "127.0.0.1:0", "--cluster", "c"], "needs --nats URL"),
        (node + url + ["--cluster", "c", "--nats-tls-cert", "x"], "go together"),
        (node + url + ["--cluster", "c", "--nats-creds", str(tmp_path / "no")],
         "cannot read the NATS credentials"),
        (["members", "--node", "n1", "--key-file", str(key), *url], "--nats needs --cluster"),
        (["cluster", "--nats", "nats://h:1"], "goes with --engine nats"),
    ]
    for args, message in cases:
        said = io.StringIO()
        assert main(args, said, said) == 2, (args, said.getvalue())
        assert said.getvalue().count("\n") == 1 and message in said.getvalue(), said.getvalue()


def test_crdtkit_cluster_on_nats_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    from crdtkit.cli import main
    from crdtkit.cluster import nats_server_binary

    if nats_server_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is not installed (.ci/run installs it)")
        pytest.skip("nats-server is not installed")
    said = io.StringIO()
    args = ["cluster", "--engine", "nats", "--nodes", "2", "--operations", "30",
            "--folder", str(tmp_path)]
    assert main(args, said, said) == 0, said.getvalue()
    assert "on NATS at nats://127.0.0.1:" in said.getvalue()
    assert "verdict: PASS" in said.getvalue()
    assert "Server is ready" in (tmp_path / "nats-server.log").read_text()


def test_nats_tls_and_a_password_pass_through_to_node_and_commands(tmp_path: Path) -> None:
    from crdtkit.cli import main
    from tests.conftest import start_nats_server, stop_nats_server

    certs = Path(__file__).parent / "certs"
    server = start_nats_server(
        "--tls", "--tlscert", str(certs / "node.pem"), "--tlskey", str(certs / "node.key"),
        "--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--user", "crdt", "--pass", "pw",
    )
    try:
        key = tmp_path / "k.key"
        assert main(["keygen", str(key)], io.StringIO()) == 0
        tls = ["--nats-tls-ca", str(certs / "ca.pem"), "--nats-tls-cert",
               str(certs / "client.pem"), "--nats-tls-key", str(certs / "client.key")]
        url = f"tls://crdt:pw@127.0.0.1:{server.port}"

        async def main_async() -> None:
            from crdtkit.serve import nats_options

            args = argparse.Namespace(nats_creds=None, nats_tls_ca=tls[1], nats_tls_cert=tls[3],
                                      nats_tls_key=tls[5])
            options = nats_options(args)
            service = NodeService("t0", tmp_path / "t0", transport=lambda rng: NatsNodeTransport(
                "t0", bytes.fromhex(key.read_text().strip()), rng=rng, servers=[url],
                cluster="tls", options=options))
            stop, ready = asyncio.Event(), asyncio.Event()
            running = asyncio.create_task(service.run(stop, ready))
            try:
                await asyncio.wait_for(ready.wait(), 10)
                said = io.StringIO()
                ask = ["members", "--node", "t0", "--cluster", "tls", "--key-file", str(key)]
                assert await asyncio.to_thread(main, [*ask, "--nats", url, *tls], said, said) \
                    == 0, said.getvalue()
                assert "crdtkit.tls.requests.t0 up" in said.getvalue()
                said = io.StringIO()
                wrong = url.replace(":pw@", ":wrong@")
                assert await asyncio.to_thread(main, [*ask, "--nats", wrong, *tls], said, said) \
                    == 2
                assert "took the connection" in said.getvalue() and "wrong" not in said.getvalue()
            finally:
                stop.set()
                await asyncio.wait_for(running, 30)

        asyncio.run(main_async())
    finally:
        stop_nats_server(server.process)
