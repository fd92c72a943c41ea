"""A cluster of ``crdtkit node`` processes on this machine's loopback: what
``crdtkit cluster`` runs, and what the multi-process tests drive.

:class:`LocalCluster` writes a key file into its folder, picks free loopback
ports, starts one ``python -m crdtkit node`` process per node (each with its
own snapshot folder and log file), and can kill (SIGKILL), restart and stop
(SIGTERM) them; :meth:`LocalCluster.join` starts one more that joins the
running cluster through seeds. :meth:`LocalCluster.clients` connects a
:class:`~crdtkit.client.Client` to every node; :func:`converge` waits until
every node holds the same keyspace.

Nothing here listens anywhere but 127.0.0.1, and every wait is bounded.

Cost: a process per node; the rest is the nodes'.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from crdtkit.client import Client
from replication.auth import generate_key, load_key
from replication.history import History

__all__ = ["LocalCluster", "converge", "problems"]

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class LocalCluster:
    """``size`` node processes named ``n0``, ``n1``, ... under ``folder``.

    Cost: see the module docstring.
    """

    def __init__(
        self, size: int, folder: Path, *, interval: float = 0.1, options: Sequence[str] = ()
    ) -> None:
        if not 1 <= size <= 64:
            raise ValueError(f"a local cluster has 1 to 64 nodes, got {size}")
        self.folder = folder
        self.interval = interval
        self.ids = [f"n{i}" for i in range(size)]
        self.addresses = {node: (HOST, _free_port()) for node in self.ids}
        self.key_file = folder / "cluster.key"
        folder.mkdir(parents=True, exist_ok=True)
        if not self.key_file.exists():
            self.key_file.write_text(generate_key() + "\n")
            self.key_file.chmod(0o600)
        self.key = load_key(self.key_file)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.options = list(options)  # more ``crdtkit node`` options, for every node
        self.seeds: dict[str, list[str]] = {}  # nodes that joined: their seeds

    def command(self, node: str) -> list[str]:
        """The command line that runs ``node``. Cost: O(nodes)."""
        host, port = self.addresses[node]
        args = [sys.executable, "-m", "crdtkit", "node", "--id", node]
        args += ["--listen", f"{host}:{port}", "--key-file", str(self.key_file)]
        args += ["--folder", str(self.folder / node), "--interval", str(self.interval)]
        if node in self.seeds:
            for seed in self.seeds[node]:
                seed_host, seed_port = self.addresses[seed]
                args += ["--seed", f"{seed_host}:{seed_port}"]
            return args + self.options
        for peer, (peer_host, peer_port) in self.addresses.items():
            if peer != node and peer not in self.seeds:
                args += ["--peer", f"{peer}={peer_host}:{peer_port}"]
        return args + self.options

    def join(self, node: str, seeds: Sequence[str]) -> None:
        """Start one more node, ``node``, that knows only ``seeds`` (nodes of
        this cluster) and joins through them. Cost: a process start."""
        if node in self.addresses:
            raise ValueError(f"node {node!r} exists already")
        self.ids.append(node)
        self.addresses[node] = (HOST, _free_port())
        self.seeds[node] = list(seeds)
        self.start(node)

    def start(self, node: str | None = None) -> None:
        """Start every node (or one), logging to ``folder/<node>.log``.
        Cost: a process start per node."""
        for name in self.ids if node is None else [node]:
            log = (self.folder / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                self.command(name), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
            log.close()

    def kill(self, node: str) -> None:
        """SIGKILL ``node``: no last checkpoint, no goodbye. Cost: O(1)."""
        process = self.processes.pop(node)
        process.kill()
        process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every node and wait (then SIGKILL what is left); returns
        the exit codes. Cost: up to ``timeout`` seconds."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for node, process in self.processes.items():
            try:
                codes[node] = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[node] = process.wait(timeout=timeout)
        self.processes.clear()
        return codes

    def log(self, node: str) -> str:
        """What ``node`` has logged so far. Cost: O(log size)."""
        path = self.folder / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def client(self, node: str, timeout: float = 10.0) -> Client:
        """A client of ``node``, retrying while it starts (up to ``timeout``).
        Cost: a handshake, once the node listens."""
        for _ in range(int(timeout / 0.05)):
            try:
                return await Client.connect(self.addresses[node], self.key)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
        return await Client.connect(self.addresses[node], self.key)

    async def clients(self, timeout: float = 10.0) -> dict[str, Client]:
        """A client of every running node. Cost: a handshake per node."""
        return {node: await self.client(node, timeout) for node in self.processes}

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def converge(clients: Mapping[str, Client], timeout: float = 10.0) -> float | None:
    """Seconds until every node holds the same keyspace, polling every 20 ms;
    None if they still differ after ``timeout``. Cost: a round trip per node
    per poll."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout:
        if len({await c.keyspace() for c in clients.values()}) == 1:
            return loop.time() - start
        await asyncio.sleep(0.02)
    return None



async def problems(client: Client, history: History) -> list[str]:
    """What is wrong with ``client``'s node against ``history``, as sentences:
    [] when every logged operation survived in its key's dots (each was
    acknowledged, so none may be lost) and every key's value equals the
    sequential specification (``History.problems_of``). Cost: a round trip
    per key."""
    held = {key: await client.entry(key) for key in sorted({op.key for op in history.operations})}
    return history.problems_of(held.__getitem__, {op.dot for op in history.operations})
