"""``crdtkit node``, ``crdtkit cluster`` and ``crdtkit keygen``: the commands
that run processes. Arguments arrive parsed and checked by ``crdtkit.cli``.

Cost: as long as the processes run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import shutil
import signal
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any, TextIO

from crdtkit.cli import LIMIT_OPTIONS
from crdtkit.client import Client, Gathered, live_snapshot
from crdtkit.cluster import LocalCluster, LocalNatsServer, converge, problems
from crdtkit.node import NodeService
from crdtkit.tcpnode import TcpNodeTransport
from crdtkit.transports import NodeTransport
from crdts.base import CRDT
from replication.auth import generate_key, load_key
from replication.history import History, Operation, random_operation
from replication.membership import MembershipSettings
from replication.store import StoreDamaged, StoreError
from replication.tcp import Limits
from snapshot.sec import check

__all__ = ["ask", "keygen", "request", "run_cluster", "serve"]


def _tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    paths = (args.tls_cert, args.tls_key, args.tls_ca)
    if not any(paths):
        return None, None
    if not all(paths):
        raise ValueError("mutual TLS needs --tls-cert, --tls-key and --tls-ca together")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.tls_ca)
    server.load_cert_chain(args.tls_cert, args.tls_key)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.tls_ca)
    client.load_cert_chain(args.tls_cert, args.tls_key)
    return server, client


def _tcp_transport(
    args: argparse.Namespace, key: bytes
) -> Callable[[Random], TcpNodeTransport]:
    """``crdtkit node --listen``: the built-in TCP runtime."""
    server_ssl, client_ssl = _tls(args)

    def make(rng: Random) -> TcpNodeTransport:
        return TcpNodeTransport(
            args.id, key, rng=rng, listen=args.listen, peers=dict(args.peer), seeds=args.seed,
            advertise=args.advertise, server_ssl=server_ssl, client_ssl=client_ssl,
            limits=limits_of(args),
        )

    return make


def limits_of(args: argparse.Namespace) -> Limits:
    """The connection limits ``--max-clients``, ``--max-peers``,
    ``--startups`` and ``--handshake-timeout`` ask for; ``Limits``' defaults
    for the rest. Cost: O(1).

    >>> limits_of(argparse.Namespace(max_clients=4, max_peers=None,
    ...     startups=(2, 50, 8), handshake_timeout=None)) == Limits(max_clients=4,
    ...     startups=(2, 50, 8))
    True
    """
    given = {o[2:].replace("-", "_") for o in LIMIT_OPTIONS}
    return dataclasses.replace(
        Limits(), **{f: getattr(args, f) for f in given if getattr(args, f) is not None}
    )


def nats_options(args: argparse.Namespace) -> dict[str, Any]:
    """``nats.connect``'s options from ``--nats-creds`` and ``--nats-tls-*``
    (user, password and token come in the URLs). Cost: reads the files."""
    options: dict[str, Any] = {}
    if args.nats_creds:
        if not Path(args.nats_creds).is_file():
            raise OSError(f"cannot read the NATS credentials file {args.nats_creds}")
        options["user_credentials"] = args.nats_creds
    if args.nats_tls_ca or args.nats_tls_cert:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.nats_tls_ca)
        if args.nats_tls_cert:
            context.load_cert_chain(args.nats_tls_cert, args.nats_tls_key)
        options["tls"] = context
    return options


def _nats_transport(
    args: argparse.Namespace, key: bytes
) -> Callable[[Random], NodeTransport]:
    """``crdtkit node --nats URL --cluster NAME``: through NATS."""
    from crdtkit.natsnode import NatsNodeTransport

    options = nats_options(args)

    def make(rng: Random) -> NatsNodeTransport:
        return NatsNodeTransport(
            args.id, key, rng=rng, servers=args.nats, cluster=args.cluster, peers=args.peer,
            seeds=args.seed, options=options,
        )

    return make


def serve(args: argparse.Namespace, err: TextIO) -> int:
    """Run one node until SIGTERM or SIGINT, then write what is left.
    A folder in use or a damaged store: one line on ``err``, exit 2."""
    logging.basicConfig(stream=err, level=logging.INFO, format="%(asctime)s %(message)s")
    for module in args.imports:  # a user's types register themselves on import
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"crdtkit node: --import {module}: {exc!r:.200}", file=err)
            return 2
    try:
        key = load_key(args.key_file)
        service = NodeService(
            args.id,
            Path(args.folder),
            transport=(_nats_transport if args.nats else _tcp_transport)(args, key),
            membership=MembershipSettings(
                detector=args.failure_detector,
                acceptable_pause=args.acceptable_pause,
                timeout=args.unreachable_after,
                auto_down_after=args.auto_down_after,
            ),
            leave_on_stop=args.leave,
            interval=args.interval,
            max_state=args.max_state,
            prune_after=args.prune_after,
            repair=args.repair,
        )
    except StoreDamaged as exc:
        print(f"crdtkit node: {exc}; start with --repair to keep what is intact", file=err)
        return 2
    except StoreError as exc:
        print(f"crdtkit node: {exc}", file=err)
        return 2
    service.replica.hlc.max_offset = round(args.max_offset * 1e9)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        await service.run(stop)

    try:
        asyncio.run(main())
    except Exception as exc:
        if not _unreachable(exc):
            raise
        if args.nats:
            from crdtkit.natsnode import redact

            said = redact(f"crdtkit node: cannot reach NATS at {', '.join(args.nats)}: {exc}")
        else:
            said = f"crdtkit node: {exc}"
        print(said, file=err)
        return 2
    return 0


def _unreachable(exc: BaseException) -> bool:
    """A network's failure (not a bug): no server, refused, timed out."""
    if isinstance(exc, OSError):  # TimeoutError and ConnectionError too
        return True
    try:
        from nats.errors import Error
    except ImportError:  # not installed: not on NATS
        return False
    return isinstance(exc, Error)


async def _client(args: argparse.Namespace) -> tuple[Client, str]:
    """A client of ``--node`` (over NATS with ``--nats``), and how to name it."""
    key = load_key(args.key_file)
    if args.nats:
        client = await asyncio.wait_for(Client.over_nats(
            args.node, key, servers=args.nats, cluster=args.cluster,
            options=nats_options(args)), 15)
        return client, f"{args.node} (NATS cluster {args.cluster})"
    client = await asyncio.wait_for(Client.connect(args.node, key), 10)
    return client, f"{args.node[0]}:{args.node[1]}"


def ask(args: argparse.Namespace, out: TextIO) -> int:
    """``crdtkit members | leave | down NODE --node HOST:PORT``: ask a running
    node, print its answer for people. Exit 0, or 1 when a down found no such
    member."""

    async def main() -> int:
        client, where = await _client(args)
        try:
            if args.command == "leave":
                status = await asyncio.wait_for(client.leave(), 10)
                print(f"{where} is {status}; it stops once the others have removed it", file=out)
                return 0
            if args.command == "down":
                downed = await asyncio.wait_for(client.down(args.target), 10)
                if not downed:
                    print(f"{where} knows no live member {args.target!r}", file=out)
                    return 1
                print(f"downed {', '.join(downed)}; removed once every reachable member "
                      "has seen it", file=out)
                return 0
            members = await asyncio.wait_for(client.members(), 10)
            print(f"members as {where} sees them:", file=out)
            for m in members:
                flag = "  UNREACHABLE" if m.unreachable else ""
                print(f"  {m.node:<12} {m.member:<24} {m.address:<22} {m.status}{flag}", file=out)
            return 0
        finally:
            client.close()

    return asyncio.run(main())


def request(args: argparse.Namespace, out: TextIO) -> int:
    """``crdtkit ask --node HOST:PORT update|get ...``: one update or read at
    a running node, at a consistency level; print what came back for
    people. Exit 0 when the level was reached, 1 when not."""
    async def main() -> int:
        client, where = await _client(args)
        try:
            wait = args.timeout + 10  # the node answers within its timeout
            if args.request == "update":
                values = [int(v) if v.lstrip("-").isdigit() else v for v in args.values]
                call = client.update(args.key, args.type, args.kind, *values,
                                     level=args.write, timeout=args.timeout)
                done = await asyncio.wait_for(call, wait)
                op, reached = (done, None) if isinstance(done, Operation) else done
                print(f"applied {args.key} {args.type} {args.kind} {' '.join(args.values)}"
                      f"{' ' if args.values else ''}at {where} as {op.dot[0]}:{op.dot[1]}",
                      file=out)
            else:
                gathered = await asyncio.wait_for(
                    client.get(args.key, level=args.read, timeout=args.timeout), wait)
                state, reached = (
                    (gathered.state, gathered.reached) if isinstance(gathered, Gathered)
                    else (gathered, None)
                )
                print(f"{args.key} = {_shown(state)}", file=out)
            if reached is None:
                return 0
            if reached.ok:
                print(reached, file=out)
                return 0
            print(f"{reached} (waited {args.timeout:g} s)", file=out)
            if args.request == "update":
                print(f"the update is durable at {where} and spreads to the others by gossip",
                      file=out)
            return 1
        finally:
            client.close()

    return asyncio.run(main())


def _shown(state: CRDT | None) -> str:
    # A value for people: sets sorted, registers' values, counters' counts.
    if state is None:
        return "(nothing)"
    value = getattr(state, "value", None)
    if value is None and hasattr(state, "values"):
        value = state.values
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(map(repr, value))) + "}"
    return repr(value)


def keygen(path: str, out: TextIO) -> int:
    """Write a new cluster key to ``path`` (never over an existing file)."""
    target = Path(path)
    with target.open("x") as file:  # FileExistsError (an OSError) if it exists
        target.chmod(0o600)
        file.write(generate_key() + "\n")
    print(f"wrote a new cluster key to {path}; give every node and client a copy", file=out)
    return 0


def run_cluster(args: argparse.Namespace, out: TextIO) -> int:
    """Start the node processes, drive random operations through them, take
    a live snapshot, check it, and stop them."""
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="crdtkit-"))
    server = None
    nats_url = None
    if args.engine == "nats":
        nats_url = args.nats
        if nats_url is None:
            server = LocalNatsServer(folder) if args.folder else LocalNatsServer()
            folder.mkdir(parents=True, exist_ok=True)
            try:
                server.start()
            except RuntimeError as exc:
                print(f"crdtkit cluster: {exc}", file=out)
                return 2
            nats_url = server.url
    cluster = LocalCluster(args.nodes, folder, nats_url=nats_url)
    cluster.start()
    try:
        return asyncio.run(_drive(cluster, args, out))
    finally:
        codes = cluster.stop()
        if server is not None:
            server.stop()
        bad = {node: code for node, code in codes.items() if code != 0}
        if bad:
            print(f"  stopping: exit codes {bad}; logs in {folder}", file=out)
        if not args.folder and not bad:
            shutil.rmtree(folder, ignore_errors=True)


async def _drive(cluster: LocalCluster, args: argparse.Namespace, out: TextIO) -> int:
    loop = asyncio.get_running_loop()
    clients = await cluster.clients()
    if cluster.nats_url is not None:
        print(f"crdtkit cluster: {len(clients)} node processes on NATS at {cluster.nats_url}, "
              f"cluster {cluster.cluster}", file=out)
    else:
        ports = ", ".join(str(port) for _, port in cluster.addresses.values())
        print(f"crdtkit cluster: {len(clients)} node processes on 127.0.0.1 ports {ports}",
              file=out)
    rng, history = Random(args.seed), History()
    start = loop.time()
    for _ in range(args.operations):
        key, type_name, kind, values = random_operation(rng)
        node = rng.choice(cluster.ids)
        history.operations.append(await clients[node].update(key, type_name, kind, *values))
    spent = loop.time() - start
    rate = args.operations / spent if spent > 0 else 0.0
    print(
        f"  updates     {args.operations:,} random operations through the nodes in "
        f"{spent:.2f} s ({rate:,.0f}/s, each durable before it was acknowledged)",
        file=out,
    )
    cut = await live_snapshot(clients)
    frames = sum(len(f) for f in cut.channels.values())
    print(f"  snapshot    {cut.id}: {len(cut.states)} states, {frames} frames in flight",
          file=out)
    report = check(cut, history)
    for line in str(report).splitlines():
        print(f"    {line}", file=out)
    took = await converge(clients, timeout=30.0)
    if took is None:
        print("  converged   NO, not within 30 s", file=out)
        return 1
    print(f"  converged   {took:.2f} s after the last update: identical keyspaces", file=out)
    wrong = await problems(clients[cluster.ids[0]], history)
    print(
        "  values      every key equals its sequential specification; nothing lost"
        if not wrong
        else f"  values      {len(wrong)} problems: {wrong[0]}",
        file=out,
    )
    for client in clients.values():
        client.close()
    passed = report.passed and not wrong
    print(f"verdict: {'PASS' if passed else 'FAIL'}", file=out)
    return 0 if passed else 1
