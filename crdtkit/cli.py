"""``crdtkit``: the command line. The only module that parses arguments or
prints for people.

- ``crdtkit demo``: the main job (see ``crdtkit.demo``); exit 0 when the
  cluster converged to the specification and both cuts pass the SEC checker.
- ``crdtkit check FILE [--log LOG]``: the SEC verdicts on a saved snapshot
  (or a node's checkpoint, as a cut of one); exit 0 when they pass, 1 when
  one fails.
- ``crdtkit inspect PATH``: what a snapshot or a checkpoint file holds, or a
  node's folder (its store, verified; a running node's too).
- ``crdtkit node``: run one replica process on the TCP runtime (``--listen``)
  or on NATS (``--nats URL --cluster NAME``; peers and seeds are then node
  ids) (``--peer`` a static peer, ``--seed`` join a running cluster through
  a node, ``--leave`` leave the cluster on SIGTERM before stopping);
  ``crdtkit members``, ``crdtkit leave`` and ``crdtkit down NODE`` ask a
  running node (``--node``, with ``--nats`` and ``--cluster`` over NATS)
  for its members, to leave, or to down a node.
- ``crdtkit cluster``: local node processes, on TCP or (``--engine nats``)
  NATS, driven, snapshotted and checked.
- ``crdtkit ask --node HOST:PORT update KEY TYPE KIND [VALUE...] [--write
  LEVEL --timeout S]`` and ``crdtkit ask ... get KEY [--read LEVEL]``: an
  update or a read at a running node, at a consistency level (``local``,
  ``majority``, ``all``; docs/consistency.md); exit 0 when the level was
  reached, 1 when not (the update is applied at the node all the same).

A bad argument or a bad file gets one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from crdts import codec
from crdts.errors import CallerError, CrdtkitError, DecodeError
from replication.consistency import LEVELS
from replication.history import History
from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId
from snapshot.errors import SnapshotCorrupt
from snapshot.files import read_verified, write_atomic, write_snapshot
from snapshot.sec import SECReport, check, join_cut

__all__ = ["main"]


class _Usage(CallerError):
    """A bad command line: one line for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _real(low: float, high: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{what} is between {low:g} and {high:g}, got {text}")
        return value

    return parse


_probability = _real(0.0, 1.0, "a probability")
_seconds = _real(0.001, 3600.0, "an interval in seconds")


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {text}")
        return value

    return parse


#: ``crdtkit node``'s options for ``replication.tcp.Limits`` fields.
LIMIT_OPTIONS = ("--max-clients", "--max-peers", "--startups", "--handshake-timeout")


def _startups(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected START:RATE:FULL, got {text!r}")
    start, rate, full = (int(p) for p in parts)
    if not (1 <= start <= full <= 65536 and rate <= 100):
        raise argparse.ArgumentTypeError(
            f"START:RATE:FULL needs 1 <= START <= FULL <= 65536 and RATE <= 100, got {text}"
        )
    return start, rate, full


def _limit_options(node: argparse.ArgumentParser) -> None:
    """The TCP runtime's connection limits (``replication.tcp.Limits``; its
    defaults, which tests/test_cli.py checks these help texts against, apply
    to what is not given: the CLI does not import the runtime to start)."""
    node.add_argument(
        "--max-clients", type=_bounded(1, 65536), metavar="N",
        help="authenticated client connections at once (128)",
    )
    node.add_argument(
        "--max-peers", type=_bounded(1, 65536), metavar="N",
        help="authenticated inbound peer connections at once (64)",
    )
    node.add_argument(
        "--startups", type=_startups, metavar="START:RATE:FULL",
        help="connections not yet authenticated, as OpenSSH's MaxStartups: from START on, "
        "drop one with RATE%% chance, rising to all at FULL (10:30:64)",
    )
    node.add_argument(
        "--handshake-timeout", type=_seconds, metavar="SECONDS",
        help="from accept to authenticated, TLS included (5 s)",
    )


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _peer(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, address = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {text!r}")
    return name, _address(address)


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _nats_url(text: str) -> str:
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("nats", "tls", "ws", "wss") or not parsed.hostname or port == -1:
        raise argparse.ArgumentTypeError(
            f"expected a NATS URL like nats://HOST:4222 (user:password@ or token@ allowed), "
            f"got {text!r}")
    return text


def _cluster_name(text: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a cluster name is 1 to 64 of A-Z a-z 0-9 _ - (it is a NATS subject token), "
            f"got {text!r}")
    return text


def _nats_options(command: argparse.ArgumentParser, *, required: bool = False) -> None:
    """NATS's connection options, as ``crdtkit node`` and the client commands take them."""
    command.add_argument(
        "--nats", action="append", type=_nats_url, metavar="URL", required=required,
        help="run over NATS through this server (repeat for more servers of one NATS "
        "cluster); user:password@ or token@ in the URL authenticate, tls:// asks for TLS",
    )
    command.add_argument("--cluster", type=_cluster_name, metavar="NAME",
                         help="with --nats: the crdtkit cluster's name (its subjects' prefix)")
    command.add_argument("--nats-creds", metavar="PATH",
                         help="with --nats: a NATS credentials file (JWT and NKey seed)")
    command.add_argument("--nats-tls-ca", metavar="PATH",
                         help="with --nats: the CA that signs the NATS server's certificate")
    command.add_argument("--nats-tls-cert", metavar="PATH",
                         help="with --nats: a client certificate for the NATS server (PEM)")
    command.add_argument("--nats-tls-key", metavar="PATH", help="with --nats: its key (PEM)")


def _check_nats(args: argparse.Namespace) -> None:
    """NATS options only with --nats, and --cluster with it."""
    given = [name for name in ("nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key",
                               "cluster") if getattr(args, name, None)]
    if not args.nats:
        if given:
            raise _Usage(f"--{given[0].replace('_', '-')} is a NATS option: it needs --nats URL")
        return
    if not args.cluster:
        raise _Usage("--nats needs --cluster NAME (the subjects' prefix, the same on every node)")
    if bool(args.nats_tls_cert) != bool(args.nats_tls_key):
        raise _Usage("--nats-tls-cert and --nats-tls-key go together")


def _check_node(args: argparse.Namespace) -> None:
    """``crdtkit node``: over TCP, --listen and addresses; over NATS, node ids."""
    _check_nats(args)
    if args.nats:
        tcp_only = [o for o, v in (("--listen", args.listen), ("--advertise", args.advertise),
                                   ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                                   ("--tls-ca", args.tls_ca),
                                   *((o, getattr(args, o[2:].replace("-", "_")))
                                     for o in LIMIT_OPTIONS)) if v]
        if tcp_only:
            raise _Usage(f"{tcp_only[0]} is for the TCP runtime; over NATS use --nats-tls-* "
                         "(and peers and seeds are node ids)")
        for option, values in (("--peer", args.peer), ("--seed", args.seed)):
            for value in values:
                if not value or "=" in value or value.strip() != value:
                    raise _Usage(f"{option} over NATS is a node id, got {value!r}")
        return
    if args.listen is None:
        raise _Usage("crdtkit node needs --listen HOST:PORT (TCP) or --nats URL --cluster NAME")
    try:
        args.listen = _address(args.listen)
        args.peer = [_peer(p) for p in args.peer]
        args.seed = [_address(a) for a in args.seed]
        args.advertise = None if args.advertise is None else _address(args.advertise)
    except argparse.ArgumentTypeError as exc:
        raise _Usage(str(exc)) from None


def _parser() -> _Parser:
    parser = _Parser(
        prog="crdtkit",
        description="CRDT replication: simulate a cluster under faults, take consistent "
        "snapshots and check strong eventual consistency on them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser("demo", help="simulate a cluster under faults and check it")
    demo.add_argument("--nodes", type=_bounded(2, 1024), default=16, help="replicas (16)")
    demo.add_argument(
        "--operations", type=_bounded(0, 1_000_000), default=1000, help="operations (1000)"
    )
    demo.add_argument(
        "--keys", type=_bounded(1, 100_000), default=50, help="keys per type (50)"
    )
    demo.add_argument("--seed", type=_bounded(0, 2**63), default=1, help="random seed (1)")
    demo.add_argument("--loss", type=_probability, default=0.3, help="frame loss (0.3)")
    demo.add_argument(
        "--duplication", type=_probability, default=0.05, help="frame duplication (0.05)"
    )
    demo.add_argument("--no-reorder", action="store_true", help="FIFO channels")
    demo.add_argument("--no-partitions", action="store_true", help="never partition")
    demo.add_argument("--snapshot-file", metavar="PATH", help="write the mid-run cut here")
    demo.add_argument("--log-file", metavar="PATH", help="write the operation log here")
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress lines on stderr (default: when stderr is a terminal)",
    )
    check = commands.add_parser("check", help="SEC verdicts on a snapshot or checkpoint file")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--log", metavar="LOG", help="the operation log (crdtkit demo --log-file), for the "
        "join-versus-specification verdict"
    )
    inspect = commands.add_parser(
        "inspect", help="what a snapshot or checkpoint file, or a node's folder, holds"
    )
    inspect.add_argument("file", metavar="PATH")

    node = commands.add_parser("node", help="run one replica process")
    node.add_argument("--id", required=True, help="this node's id")
    node.add_argument("--listen", metavar="HOST:PORT",
                      help="run on the built-in TCP runtime, listening here")
    _nats_options(node)
    node.add_argument(
        "--peer", action="append", default=[], metavar="ID=HOST:PORT",
        help="a peer to gossip with (repeat for each); over NATS, its node id",
    )
    node.add_argument(
        "--seed", action="append", default=[], metavar="HOST:PORT",
        help="join a running cluster through the node at this address (repeat for more); "
        "over NATS, a node id",
    )
    node.add_argument(
        "--advertise", metavar="HOST:PORT",
        help="the address other members dial to reach this node (default: --listen)",
    )
    node.add_argument(
        "--leave", action="store_true",
        help="on SIGTERM or SIGINT, leave the cluster (hand off, be removed) before stopping",
    )
    node.add_argument(
        "--failure-detector", choices=["phi", "timeout"], default="phi",
        help="phi accrual (default) or a timeout with jitter",
    )
    node.add_argument(
        "--acceptable-pause", type=_seconds, default=3.0, metavar="SECONDS",
        help="phi detector: silence tolerated beyond the usual heartbeat interval (3 s)",
    )
    node.add_argument(
        "--unreachable-after", type=_seconds, default=5.0, metavar="SECONDS",
        help="timeout detector: silence before a node is unreachable (5 s, plus up to 1 s jitter)",
    )
    node.add_argument(
        "--auto-down-after", type=_seconds, metavar="SECONDS",
        help="down a member unreachable this long (off by default: both sides of a "
        "partition would down each other)",
    )
    node.add_argument("--key-file", required=True, metavar="PATH", help="the cluster key (hex)")
    node.add_argument("--folder", required=True, metavar="PATH",
                      help="its folder: the store (store.db) and the lock")
    node.add_argument("--interval", type=_seconds, default=0.2, help="gossip interval (0.2 s)")
    node.add_argument(
        "--repair", action="store_true",
        help="start on a damaged store: keep what is intact and log what is dropped",
    )
    node.add_argument(
        "--max-state", type=_bounded(1024, 1 << 40), default=64 * 1024 * 1024, metavar="BYTES",
        help="refuse updates that make a key's state larger (64 MiB)",
    )
    node.add_argument(
        "--max-offset", type=_real(0.0, 3600.0, "an offset in seconds"), default=0.5,
        metavar="SECONDS",
        help="refuse an explicit LWW timestamp further ahead of this node's clock (0.5 s)",
    )
    node.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE first: your own types, registered with crdts.codec and "
        "declaring their OPERATIONS, are then served (repeatable)",
    )
    node.add_argument(
        "--prune-after", type=_seconds, default=300.0, metavar="SECONDS",
        help="wait this long after a replica id is retired (an earlier incarnation, a "
        "removed member) before pruning it (300 s); longer than any frame is delayed",
    )
    _limit_options(node)
    for option, text in (
        ("--tls-cert", "this node's certificate (PEM)"),
        ("--tls-key", "its private key (PEM)"),
        ("--tls-ca", "the CA that signs every node's certificate"),
    ):
        node.add_argument(option, metavar="PATH", help=text + "; mutual TLS with all three")

    cluster = commands.add_parser("cluster", help="run N local node processes and check them")
    cluster.add_argument("--nodes", type=_bounded(1, 16), default=3, help="processes (3)")
    cluster.add_argument(
        "--operations", type=_bounded(0, 100_000), default=300, help="operations (300)"
    )
    cluster.add_argument("--seed", type=_bounded(0, 2**63), default=1, help="random seed (1)")
    cluster.add_argument("--folder", metavar="PATH", help="keep keys, data and logs here")
    cluster.add_argument(
        "--engine", choices=["tcp", "nats"], default="tcp",
        help="tcp: the built-in runtime (default); nats: through a NATS server (a local "
        "nats-server on loopback, started and stopped here, unless --nats URL)",
    )
    cluster.add_argument("--nats", type=_nats_url, metavar="URL",
                         help="with --engine nats: use this NATS server")

    for name, text in (
        ("members", "the members a running node sees"),
        ("leave", "make a running node leave the cluster (it stops once removed)"),
        ("down", "down a node that is gone for good: it is removed everywhere"),
    ):
        command = commands.add_parser(name, help=text)
        if name == "down":
            command.add_argument("target", metavar="NODE", help="the node id (or member id)")
        command.add_argument("--node", required=True, metavar="HOST:PORT",
                             help="a running node to ask (over NATS: its node id)")
        command.add_argument("--key-file", required=True, metavar="PATH",
                             help="the cluster key (hex)")
        _nats_options(command)

    ask = commands.add_parser("ask", help="update or read a key at a running node, at a "
                              "consistency level")
    ask.add_argument("--node", required=True, metavar="HOST:PORT",
                     help="a running node to ask (over NATS: its node id)")
    ask.add_argument("--key-file", required=True, metavar="PATH", help="the cluster key (hex)")
    _nats_options(ask)
    asks = ask.add_subparsers(dest="request", required=True, parser_class=_Parser)
    update = asks.add_parser("update", help="apply an update (durable at the node first)")
    update.add_argument("key", metavar="KEY")
    update.add_argument("type", metavar="TYPE", help="GCounter, PNCounter, ORSet, ...")
    update.add_argument("kind", metavar="KIND", help="the operation: increment, add, ...")
    update.add_argument("values", nargs="*", metavar="VALUE",
                        help="its arguments (whole numbers are ints)")
    update.add_argument("--write", choices=LEVELS, default="local",
                        help="how many members must hold it before it returns (local)")
    get = asks.add_parser("get", help="read a key")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--read", choices=LEVELS, default="local",
                     help="how many members to gather it from (local)")
    for command in (update, get):
        command.add_argument("--timeout", type=_real(0.0, 600.0, "a timeout in seconds"),
                             default=5.0, help="seconds to wait for the level (5)")

    keygen = commands.add_parser("keygen", help="write a new cluster key file")
    keygen.add_argument("file", metavar="FILE")
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the command line (``argv``, default ``sys.argv[1:]``), writing to
    ``out`` and ``err`` (default stdout and stderr); returns the exit status.

    >>> main(["check", "/nonexistent/cut.snap"], err=sys.stdout)
    crdtkit: cannot read /nonexistent/cut.snap: No such file or directory
    2

    Cost: that of the command.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = _parser().parse_args(argv)
        if args.command == "demo":
            return _demo(args, out, err)
        if args.command == "node":
            from crdtkit.serve import serve

            _check_node(args)
            return serve(args, err)
        if args.command == "cluster":
            from crdtkit.serve import run_cluster

            if args.nats and args.engine != "nats":
                raise _Usage("--nats URL goes with --engine nats")
            return run_cluster(args, out)
        if args.command in ("members", "leave", "down", "ask"):
            from crdtkit.serve import ask, request

            _check_nats(args)
            if not args.nats:
                try:
                    args.node = _address(args.node)
                except argparse.ArgumentTypeError as exc:
                    raise _Usage(str(exc)) from None
            return request(args, out) if args.command == "ask" else ask(args, out)
        if args.command == "keygen":
            from crdtkit.serve import keygen

            return keygen(args.file, out)
        if args.command == "inspect" and os.path.isdir(args.file):
            print(_inspect_folder(args.file), file=out)
            return 0
        title, snapshot = _load(args.file)
        if args.command == "check":
            report = check(snapshot, None if args.log is None else _load_log(args.log))
            print(_verdicts(f"{title} in {args.file}", report), file=out)
            return 0 if report.passed else 1
        print(_inspect(args.file, title, snapshot), file=out)
        return 0
    except _Usage as exc:
        print(f"crdtkit: {exc} (see crdtkit --help)", file=err)
        return 2
    except BrokenPipeError:
        # The reader went away (``crdtkit demo | head``): stop quietly, and
        # point stdout at nothing so the interpreter's last flush cannot fail.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CrdtkitError, OSError, ValueError) as exc:
        print(f"crdtkit: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print("crdtkit: interrupted", file=err)
        return 130


def _read(path: str) -> bytes:
    try:
        return read_verified(path)
    except OSError as exc:
        raise OSError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load(path: str) -> tuple[str, GlobalSnapshot]:
    """A snapshot file, or a checkpoint file as a cut of one replica."""
    body = _read(path)
    try:
        snapshot = GlobalSnapshot.from_bytes(body)
        return f"snapshot {snapshot.id}", snapshot
    except DecodeError as exc:
        try:
            local = LocalState.from_bytes(body)
        except DecodeError:
            raise SnapshotCorrupt(f"{path!r}: not a valid snapshot or checkpoint: {exc}") from exc
    cut = GlobalSnapshot(SnapshotId(local.replica, 1), {local.node: local})
    return f"checkpoint of {local.node} ({local.replica})", cut


def _load_log(path: str) -> History:
    body = _read(path)
    try:
        return History.from_bytes(body)
    except DecodeError as exc:
        raise SnapshotCorrupt(f"operation log {path!r}: not a valid log: {exc}") from exc


def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from crdtkit.demo import DemoConfig, run_demo

    config = DemoConfig(
        nodes=args.nodes,
        operations=args.operations,
        keys=args.keys,
        seed=args.seed,
        loss=args.loss,
        duplication=args.duplication,
        reorder=not args.no_reorder,
        partitions=not args.no_partitions,
    )
    show = err.isatty() if args.progress is None else args.progress
    report = run_demo(config, (lambda line: print(f"  .. {line}", file=err)) if show else None)
    c, net = report.config, report.network
    faults = f"{c.loss:.0%} loss, {c.duplication:.0%} duplication"
    faults += ", reordering" if c.reorder else ", FIFO channels"
    faults += f", {report.partitions} partitions" if c.partitions else ""
    lines = [
        f"crdtkit demo: {c.nodes} replicas, {c.operations:,} random operations on "
        f"{6 * c.keys} keys of 6 types, seed {c.seed}",
        f"  network     {faults}",
        f"  gossip      {report.rounds} rounds; {net.sent:,} frames sent, "
        f"{net.delivered:,} delivered, {net.lost:,} lost, {net.duplicated:,} duplicated, "
        f"{net.partitioned:,} cut by partitions",
        f"  bytes       {_size(net.bytes_sent)} sent; full-state push-pull over the same rounds: "
        f"{_size(report.full_state_bytes)} (deltas send "
        f"{net.bytes_sent / max(1, report.full_state_bytes):.1%} of it)",
    ]
    if report.rounds_to_converge is None:
        lines.append(f"  converged   NO, not within {c.max_rounds} rounds of the heal")
    else:
        lines.append(
            f"  converged   {report.rounds_to_converge} rounds after the last operation and "
            "heal: byte-identical replicas"
        )
    problems = report.specification_problems
    lines.append(
        "  values      every key equals its sequential specification"
        if not problems
        else f"  values      {len(problems)} keys differ from the specification: {problems[0]}"
    )
    if report.mid_run is None or report.mid_run_report is None:
        lines.append("  snapshot    the mid-run snapshot did not complete")
    else:
        cut = report.mid_run
        frames = sum(len(f) for f in cut.channels.values())
        entries = sum(1 for _ in cut.in_flight())
        lines.append(
            f"  snapshot    {cut.id} initiated in round {report.mid_run_started}, complete in "
            f"round {report.mid_run_completed}: {len(cut.states)} states, {frames} frames "
            f"({entries} entries) in flight; {report.markers:,} markers sent"
        )
        lines.append(_verdicts("mid-run cut", report.mid_run_report, indent="  "))
        if args.snapshot_file:
            write_snapshot(args.snapshot_file, cut)
            lines.append(f"  written     {args.snapshot_file} (crdtkit check / inspect it)")
    if args.log_file:
        write_atomic(args.log_file, report.history.to_bytes())
        lines.append(f"  written     {args.log_file} (crdtkit check --log it)")
    if report.final_report is not None:
        lines.append(_verdicts("final cut", report.final_report, indent="  "))
    lines.append(f"verdict: {'PASS' if report.passed else 'FAIL'}")
    print("\n".join(lines), file=out)
    return 0 if report.passed else 1


def _verdicts(title: str, report: SECReport, indent: str = "") -> str:
    lines = [f"{indent}SEC on the {title}:"]
    lines += [f"{indent}  {line}" for line in str(report).splitlines()]
    return "\n".join(lines)


def _inspect(path: str, title: str, snapshot: GlobalSnapshot) -> str:
    lines = [
        f"{path}: {title}, {os.path.getsize(path):,} bytes",
        f"  {len(snapshot.states)} replicas:",
    ]
    for node, local in sorted(snapshot.states.items()):
        operations = sum(local.clock.count(r) for r in local.clock.origins())
        lines.append(
            f"    {node:<12} replica {local.replica:<16} {len(local.entries):>4} keys "
            f"{operations:>7,} operations"
        )
    frames = sum(len(f) for f in snapshot.channels.values())
    lines.append(f"  {frames} frames in flight on {len(snapshot.channels)} channels:")
    for (source, destination), channel in sorted(snapshot.channels.items()):
        lines.append(f"    {source} -> {destination}: {len(channel)} frames")
    joined = join_cut(snapshot)
    lines.append(f"  {len(joined)} keys, joined over the cut and its channels:")
    for key, entry in sorted(joined.items()):
        state = entry.state
        value = repr(getattr(state, "value", state))
        size = len(codec.encode(state))
        lines.append(f"    {key} ({state.TYPE_TAG}, {size:,} bytes): {value:.60}")
    return "\n".join(lines)


def _inspect_folder(path: str) -> str:
    """A node's folder: its store, verified row by row."""
    from replication.sqlite import DATABASE, read_store

    stored = read_store(Path(path))
    meta = stored.meta
    name = meta.get("node", b"?").decode(errors="replace")
    replica = meta.get("replica", b"?").decode(errors="replace")
    files = [Path(path) / DATABASE, Path(path) / f"{DATABASE}-wal"]
    size = sum(f.stat().st_size for f in files if f.exists())
    lines = [
        f"{path}: the store of node {name} (last started as {replica}), "
        f"{size:,} bytes in {DATABASE} and its log, every row verified",
        f"  {len(stored.answers):,} answers kept for retries",
        f"  {len(stored.entries)} keys:",
    ]
    for entry in stored.entries:
        state = entry.state
        value = repr(getattr(state, "value", state))
        size = len(codec.encode(state))
        writers = len(entry.dots.origins())
        lines.append(
            f"    {entry.key} ({state.TYPE_TAG}, {size:,} bytes, {writers} writers): {value:.60}"
        )
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"

