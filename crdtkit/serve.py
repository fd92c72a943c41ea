"""``crdtkit node``, ``crdtkit cluster`` and ``crdtkit keygen``: the commands
that run processes. Arguments arrive parsed and checked by ``crdtkit.cli``.

Cost: as long as the processes run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import shutil
import signal
import ssl
import tempfile
from pathlib import Path
from random import Random
from typing import TextIO

from crdtkit.client import Client, Gathered, live_snapshot
from crdtkit.cluster import LocalCluster, converge, problems
from crdtkit.node import NodeService
from crdts.base import CRDT
from replication.auth import generate_key, load_key
from replication.history import History, Operation, random_operation
from replication.membership import MembershipSettings
from replication.store import StoreDamaged, StoreError
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


def serve(args: argparse.Namespace, err: TextIO) -> int:
    """Run one node until SIGTERM or SIGINT, then write what is left.
    A folder in use or a damaged store: one line on ``err``, exit 2."""
    logging.basicConfig(stream=err, level=logging.INFO, format="%(asctime)s %(message)s")
    server_ssl, client_ssl = _tls(args)
    for module in args.imports:  # a user's types register themselves on import
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"crdtkit node: --import {module}: {exc!r:.200}", file=err)
            return 2
    try:
        service = NodeService(
            args.id,
            load_key(args.key_file),
            Path(args.folder),
            listen=args.listen,
            peers=dict(args.peer),
            seeds=args.seed,
            advertise=args.advertise,
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
            server_ssl=server_ssl,
            client_ssl=client_ssl,
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

    asyncio.run(main())
    return 0


def ask(args: argparse.Namespace, out: TextIO) -> int:
    """``crdtkit members | leave | down NODE --node HOST:PORT``: ask a running
    node, print its answer for people. Exit 0, or 1 when a down found no such
    member."""

    async def main() -> int:
        client = await asyncio.wait_for(Client.connect(args.node, load_key(args.key_file)), 10)
        try:
            where = f"{args.node[0]}:{args.node[1]}"
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
    where = f"{args.node[0]}:{args.node[1]}"

    async def main() -> int:
        client = await asyncio.wait_for(Client.connect(args.node, load_key(args.key_file)), 10)
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
    cluster = LocalCluster(args.nodes, folder)
    cluster.start()
    try:
        return asyncio.run(_drive(cluster, args, out))
    finally:
        codes = cluster.stop()
        bad = {node: code for node, code in codes.items() if code != 0}
        if bad:
            print(f"  stopping: exit codes {bad}; logs in {folder}", file=out)
        if not args.folder and not bad:
            shutil.rmtree(folder, ignore_errors=True)


async def _drive(cluster: LocalCluster, args: argparse.Namespace, out: TextIO) -> int:
    loop = asyncio.get_running_loop()
    clients = await cluster.clients()
    ports = ", ".join(str(port) for _, port in cluster.addresses.values())
    print(f"crdtkit cluster: {len(clients)} node processes on 127.0.0.1 ports {ports}", file=out)
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
