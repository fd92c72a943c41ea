"""What the crash tests (``tests/test_crash.py``) share: a ledger of requests
counted against what the node acknowledged, node processes started with extra
arguments or left to refuse, and the faults done to a stopped node's files.

The node keeps ``folder/store.db`` (SQLite in WAL mode, with ``store.db-wal``
and ``store.db-shm``) and ``folder/lock``; every update carries a request id,
so a retry with the same id is applied at most once.

Nothing here listens anywhere but 127.0.0.1, and every wait is bounded.

Cost: a process start per node start; the rest is O(file or state size).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from crdtkit.client import Client
from crdtkit.cluster import HOST, LocalCluster, _free_port
from crdts import GCounter, LWWRegister, ORSet
from replication.history import Operation
from replication.tcp import PeerClosed

__all__ = [
    "CONNECTION_LOST",
    "STORE",
    "WAL",
    "Attempt",
    "Ledger",
    "Request",
    "append_garbage",
    "attempt",
    "client_of",
    "counter",
    "damage_a_page",
    "elements",
    "free_port",
    "node_command",
    "register",
    "reissued",
    "send",
    "start",
    "stop",
    "tear",
    "total",
]

STORE = "store.db"
WAL = "store.db-wal"

#: What a client sees when its node dies under it (IncompleteReadError is an EOFError).
CONNECTION_LOST = (OSError, EOFError, PeerClosed, TimeoutError)

free_port = _free_port


# -- requests, counted against what was acknowledged --------------------------------


async def send(
    client: Client, key: str, type_name: str, kind: str, *args: object, request_id: bytes
) -> Operation:
    """``client.update`` with an explicit ``request_id``. Cost: a round trip."""
    # Called through a loosely typed name: ``request_id`` is the node's new
    # contract, and this module type-checks before and after it lands.
    update: Callable[..., Awaitable[Operation]] = client.update
    return await update(key, type_name, kind, *args, request_id=request_id)


@dataclass
class Request:
    """One update a test sent, and what became of it: acknowledged (``op``),
    answered as failed (``failed``, the node's message), or neither (in doubt:
    the connection broke before the answer)."""

    rid: bytes  # the test's name for it; sent as its request id if ``idempotent``
    key: str
    type_name: str
    kind: str
    args: tuple[object, ...]
    idempotent: bool = True
    op: Operation | None = None
    failed: str | None = None

    def __repr__(self) -> str:  # never a 1 MiB value in a failure message
        state = "acknowledged" if self.op else "failed" if self.failed else "in doubt"
        return f"<request {self.rid!r}: {self.type_name}.{self.kind} on {self.key}, {state}>"

    async def send(self, client: Client) -> Operation:
        """Send (or resend) it, with its request id if idempotent; record and
        return the acknowledgement, which must equal any earlier one.
        Cost: a round trip."""
        op = (
            await send(client, self.key, self.type_name, self.kind, *self.args,
                       request_id=self.rid)
            if self.idempotent
            else await client.update(self.key, self.type_name, self.kind, *self.args)
        )
        assert op.key == self.key and op.args == self.args, f"{self} answered for another"
        assert self.op is None or op == self.op, (
            f"request {self.rid!r} answered twice differently: as {self.op.dot}, then as {op.dot}"
        )
        self.op = op
        return op


@dataclass
class Ledger:
    """Every request a test sent, by request id, in order. A test that never
    sends a request twice makes its ledger not ``idempotent``: its requests go
    without an explicit id (the client makes one per call), so that it runs,
    and shows its bug, on a node that knows no request ids."""

    idempotent: bool = True
    requests: dict[bytes, Request] = field(default_factory=dict)

    def new(self, rid: bytes, key: str, type_name: str, kind: str, *args: object) -> Request:
        """Record a request about to be sent. Cost: O(1)."""
        assert rid not in self.requests, f"request id {rid!r} reused by the test"
        request = Request(rid, key, type_name, kind, tuple(args), self.idempotent)
        self.requests[rid] = request
        return request

    def on(self, key: str) -> list[Request]:
        """The requests on ``key``. Cost: O(requests)."""
        return [r for r in self.requests.values() if r.key == key]

    def acknowledged(self, key: str) -> list[Request]:
        """The requests on ``key`` the node acknowledged. Cost: O(requests)."""
        return [r for r in self.on(key) if r.op is not None]

    def in_doubt(self) -> list[Request]:
        """Requests neither acknowledged nor answered as failed. Cost: O(requests)."""
        return [r for r in self.requests.values() if r.op is None and r.failed is None]

    def operations(self) -> list[Operation]:
        """Every acknowledged operation. Cost: O(requests)."""
        return [r.op for r in self.requests.values() if r.op is not None]



def reissued(seen: dict[tuple[str, int], bytes], requests: Iterable[Request]) -> list[str]:
    """Sentences naming each dot given to two different requests, counting
    the dots in ``seen`` (which records the new ones). Cost: O(requests)."""
    wrong = []
    for request in requests:
        if request.op is not None:
            other = seen.setdefault(request.op.dot, request.rid)
            if other != request.rid:
                wrong.append(f"dot {request.op.dot} given to {other!r} and {request.rid!r}")
    return wrong


def _amount(request: Request) -> int:
    amount = request.args[0]
    assert isinstance(amount, int)
    return amount


def total(requests: Iterable[Request]) -> int:
    """The sum of the increments ``requests`` carry. Cost: O(requests)."""
    return sum(_amount(r) for r in requests)


async def counter(client: Client, key: str) -> int:
    """The value of the G-Counter under ``key`` (0 if absent). Cost: a round trip."""
    state = await client.get(key)
    if state is None:
        return 0
    assert isinstance(state, GCounter), f"{key} holds a {type(state).__name__}"
    return state.value


async def elements(client: Client, key: str) -> frozenset[object]:
    """The elements of the OR-Set under ``key`` (empty if absent). Cost: a round trip."""
    state = await client.get(key)
    if state is None:
        return frozenset()
    assert isinstance(state, ORSet), f"{key} holds a {type(state).__name__}"
    return frozenset(state.value)


async def register(client: Client, key: str) -> object:
    """The value of the LWW-Register under ``key``, None if absent. Cost: a round trip."""
    state = await client.get(key)
    if state is None:
        return None
    assert isinstance(state, LWWRegister), f"{key} holds a {type(state).__name__}"
    return state.value


# -- node processes ----------------------------------------------------------------


def node_command(
    cluster: LocalCluster, node: str, *extra: str, port: int | None = None
) -> list[str]:
    """``cluster.command(node)`` plus ``extra`` arguments, listening on
    ``port`` instead of the node's own if given. Cost: O(nodes)."""
    command = cluster.command(node)
    if port is not None:
        command[command.index("--listen") + 1] = f"{HOST}:{port}"
    return [*command, *extra]


def start(cluster: LocalCluster, node: str, *extra: str) -> None:
    """``cluster.start(node)`` with ``extra`` arguments (``--repair``), logging
    to the same file. Cost: a process start."""
    with (cluster.folder / f"{node}.log").open("ab") as log:
        cluster.processes[node] = subprocess.Popen(
            node_command(cluster, node, *extra), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )


def stop(cluster: LocalCluster, node: str, timeout: float = 10.0) -> int:
    """SIGTERM ``node`` and wait for it (SIGKILL after ``timeout``); its exit
    code. Cost: up to ``timeout`` seconds."""
    process = cluster.processes.pop(node)
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
        raise AssertionError(f"{node} did not stop within {timeout} s of SIGTERM") from None


@dataclass(frozen=True)
class Attempt:
    """How a node process meant to refuse ended: its exit code and stderr, or
    ``code`` None when it listened instead (and was killed)."""

    code: int | None
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Its stderr's lines. Cost: O(size)."""
        return self.stderr.splitlines()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def attempt(command: Sequence[str], port: int, stderr: Path, timeout: float = 30.0) -> Attempt:
    """Run ``command``, a node that should refuse to start, until it exits or
    listens on ``port`` (then SIGKILL it), for at most ``timeout`` seconds;
    its stderr goes to the file ``stderr``. Cost: a process start."""
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            list(command), stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port):
                break
            time.sleep(0.02)
        code = process.poll()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    return Attempt(code, stderr.read_text(errors="replace"))


async def client_of(cluster: LocalCluster, node: str, timeout: float = 30.0) -> Client:
    """A client of ``node``, retrying while it starts; AssertionError, with
    the end of its log, if it exits or does not listen within ``timeout``.
    Cost: a handshake, once the node listens."""
    process = cluster.processes[node]
    for _ in range(int(timeout / 0.05)):
        if process.poll() is not None:
            break
        try:
            return await Client.connect(cluster.addresses[node], cluster.key)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
    tail = "\n".join(cluster.log(node).splitlines()[-5:])
    raise AssertionError(
        f"{node} does not serve (exit code {process.poll()}); its log ends:\n{tail}"
    )


# -- faults done to a stopped node's files -----------------------------------------


def tear(path: Path, rng: Random) -> int:
    """Cut ``path`` short at a random offset below its size; the offset. Cost: O(1)."""
    size = path.stat().st_size
    offset = rng.randrange(size)
    os.truncate(path, offset)
    return offset


def append_garbage(path: Path, rng: Random) -> int:
    """Append 1 to 12 KiB of random bytes to ``path``; how many. Cost: O(that)."""
    garbage = rng.randbytes(rng.randint(1, 12 * 1024))
    with path.open("ab") as file:
        file.write(garbage)
    return len(garbage)


def _pages_in_use(data: bytes) -> tuple[int, set[int]]:
    """A SQLite file's page size, and the numbers (from 0) of its pages that
    are neither free nor past its end (see sqlite.org/fileformat.html)."""
    assert data[:16] == b"SQLite format 3\x00", "not a SQLite database"
    size = int.from_bytes(data[16:18], "big")
    size = 65536 if size == 1 else size
    count = min(int.from_bytes(data[28:32], "big"), len(data) // size)
    free: set[int] = set()
    trunk = int.from_bytes(data[32:36], "big")
    while trunk and trunk not in free and trunk <= count:  # trunks are numbered from 1
        free.add(trunk)
        page = data[(trunk - 1) * size : trunk * size]
        leaves = int.from_bytes(page[4:8], "big")
        free.update(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big") for i in range(leaves))
        trunk = int.from_bytes(page[:4], "big")
    return size, {n for n in range(1, count) if n + 1 not in free}


def damage_a_page(path: Path, markers: Sequence[bytes]) -> int:
    """Flip every bit of one page in use in the middle half of the SQLite file
    ``path``: the one nearest the middle that holds one of ``markers`` (bytes
    of values the test wrote), else the middle one. Its byte offset.
    Cost: O(file size)."""
    data = path.read_bytes()
    size, used = _pages_in_use(data)
    middle = len(data) // size // 2
    candidates = sorted((n for n in used if len(data) // 4 <= n * size < 3 * len(data) // 4),
                        key=lambda n: abs(n - middle))
    assert candidates, f"{path} ({len(data):,} bytes) has no page in use in its middle half"
    chosen = next(
        (n for n in candidates if any(m in data[n * size : (n + 1) * size] for m in markers)),
        candidates[0],
    )
    flipped = bytes(b ^ 0xFF for b in data[chosen * size : (chosen + 1) * size])
    with path.open("r+b") as file:
        file.seek(chosen * size)
        file.write(flipped)
    return chosen * size
