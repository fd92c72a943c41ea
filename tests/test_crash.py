"""The crash suite of issue 9: ``crdtkit node`` processes killed with SIGKILL
while clients write, their store torn, damaged, deleted or wiped, their disk
filled, their folder claimed by a second process; each run counted against
what the node acknowledged (TESTING.md, "Faults of a real machine"). Every
test asserts that nothing acknowledged is lost, that nothing answered as
failed is visible anywhere, that no retry counts twice, and that the node
says what happened.

The node's contract they hold it to: its folder keeps ``store.db`` (SQLite in
WAL mode) and ``lock``; every start runs under a fresh incarnation ``ID~N``;
an update is acknowledged only once its transaction committed, and one whose
commit failed is applied nowhere and answered with a ``NodeError`` saying
"not applied"; an update sent again with the same ``request_id`` is applied
at most once (within the node's window of answers) and answered with the same
``Operation``, across connections and restarts; a folder in use, or damage,
makes ``crdtkit node`` exit 2 with one line on stderr (``crdtkit node:
...``), and ``--repair`` logs "repair:" lines naming the keys it dropped.

By default a short run (10 SIGKILLs among small updates, 3 among 1 MiB ones,
2 torn tails of each kind); many more on demand, with any seed:

    CRDTKIT_CRASH_KILLS=200 pytest tests/test_crash.py
    CRDTKIT_CRASH_KILLS=200 CRDTKIT_CRASH_SEED=7 pytest tests/test_crash.py

(200 SIGKILLs with small and 200 with 1 MiB values, 10 torn tails of each
kind; the seed is 9 unless set). The disk-full test mounts a tmpfs, so it
runs as root; otherwise it is skipped, except under ``CI=true``, where it
fails.

The random moments of the kills come from a seeded ``random.Random``; what
the node has done at that moment depends on the machine, so every check is
against what was acknowledged, never against a count fixed in advance.
Every process listens on 127.0.0.1 only, every loop is bounded in count and
time, and every process is stopped (or killed) in a ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from random import Random

import pytest

from crdtkit.client import Client, NodeError
from crdtkit.cluster import LocalCluster, converge
from tests.crashkit import (
    CONNECTION_LOST,
    STORE,
    WAL,
    Attempt,
    Ledger,
    Request,
    append_garbage,
    attempt,
    client_of,
    counter,
    damage_a_page,
    elements,
    free_port,
    node_command,
    register,
    reissued,
    start,
    stop,
    tear,
    total,
)

KILLS = int(os.environ.get("CRDTKIT_CRASH_KILLS", "0"))
SEED = int(os.environ.get("CRDTKIT_CRASH_SEED", "9"))
MiB = 1024 * 1024
WRITERS = 4  # concurrent clients, each on its own connection
SLOTS = 4  # keys per writer for 1 MiB values

Dot = tuple[str, int]


def _big(rid: bytes) -> bytes:
    """A 1 MiB value made from its request id (so a check can make it again)."""
    return Random(rid).randbytes(MiB)


def _refused(outcome: Attempt, *words: str) -> list[str]:
    """What is wrong with ``outcome`` for a refusal to start whose one stderr
    line names all of ``words``."""
    if outcome.code is None:
        return [f"it did not refuse: it listened (stderr: {outcome.stderr[-300:]!r})"]
    wrong = []
    if outcome.code != 2:
        wrong.append(f"exit code {outcome.code}, not 2")
    if len(outcome.lines) != 1 or not outcome.lines[0].startswith("crdtkit node: "):
        wrong.append(f"stderr is not one line 'crdtkit node: ...': {outcome.stderr[-500:]!r}")
    wrong += [f"stderr does not say {w!r}: {outcome.stderr[-300:]!r}"
              for w in words if w not in outcome.stderr]
    return wrong


def _incarnations(
    cluster: LocalCluster, node: str, fresh: set[str], earlier: set[str]
) -> list[str]:
    """What is wrong with the replica ids ``fresh`` that ``node``'s dots of
    one start carry: more than one, not ``node~N``, seen in an earlier start,
    or not named in its log."""
    wrong = []
    if len(fresh) > 1:
        wrong.append(f"one start issued dots under several replica ids: {sorted(fresh)}")
    log = cluster.log(node)
    for replica in fresh:
        if not replica.startswith(f"{node}~"):
            wrong.append(f"dots under {replica!r}, not a fresh incarnation {node}~N")
        if replica in earlier:
            wrong.append(f"a new start reissued dots under {replica!r}, an earlier incarnation")
        if replica not in log:
            wrong.append(f"the log does not name the incarnation {replica!r}")
    return wrong


# -- 1. SIGKILL at random moments while several clients write ----------------------


async def _writer(
    client: Client, ledger: Ledger, rng: Random, tag: str, *, big: bool, fresh: set[str]
) -> None:
    """Send updates until the connection breaks (the node was killed): G-Counter
    increments of known amounts and OR-Set adds of unique elements, or 1 MiB
    LWW-Register writes over a few keys (so that a long run keeps a bounded
    store), each under its own request id; now and then the same request
    again on the same connection."""
    writer = tag.partition("w")[2]
    for i in range(100_000):
        rid = f"{tag}-{i}".encode()
        if big:
            key = f"big-w{writer}-{rng.randrange(SLOTS)}"
            request = ledger.new(rid, key, "LWWRegister", "assign", _big(rid), None)
        elif rng.random() < 0.5:
            request = ledger.new(rid, "hits", "GCounter", "increment", rng.randint(1, 1000))
        else:
            request = ledger.new(rid, "names", "ORSet", "add", f"{tag}-{i}")
        try:
            op = await request.send(client)
            fresh.add(op.dot[0])
            if rng.random() < 0.05:
                await request.send(client)  # a retry: the same Operation, applied once
        except CONNECTION_LOST:
            return


async def _small_bounds(client: Client, ledger: Ledger) -> list[str]:
    """Right after a restart: every acknowledged increment and element is
    there, nothing beyond what was sent."""
    wrong = []
    hits = ledger.on("hits")
    acked, sent = total(ledger.acknowledged("hits")), total(hits)
    value = await counter(client, "hits")
    if value < acked:
        wrong.append(f"hits is {value}: {acked - value} of the {acked} acknowledged lost")
    if value > sent:
        wrong.append(f"hits is {value}, {value - sent} above the {sent} ever sent")
    adds = ledger.on("names")
    held = await elements(client, "names")
    lost = {r.args[0] for r in adds if r.op is not None} - held
    unsent = held - {r.args[0] for r in adds}
    if lost:
        wrong.append(f"{len(lost)} acknowledged elements lost, e.g. {sorted(map(str, lost))[:3]}")
    if unsent:
        wrong.append(f"{len(unsent)} elements never sent: {sorted(map(str, unsent))[:3]}")
    return wrong


async def _small_exact(client: Client, ledger: Ledger) -> list[str]:
    """Once every request in doubt was sent again: each counted exactly once."""
    wrong = []
    value, sent = await counter(client, "hits"), total(ledger.on("hits"))
    if value != sent:
        wrong.append(f"hits is {value}, not {sent}: each request counted once")
    held = await elements(client, "names")
    if held != {r.args[0] for r in ledger.on("names")}:
        wrong.append(f"names holds {len(held)} elements, not the {len(ledger.on('names'))} sent")
    return wrong


async def _big_bounds(client: Client, ledger: Ledger, latest: dict[str, bytes]) -> list[str]:
    """Right after a restart: each 1 MiB key holds, whole, its last
    acknowledged write (this kill's, else the one ``latest`` names from
    earlier kills), or a later write in doubt."""
    wrong = []
    for key in sorted({r.key for r in ledger.requests.values()} | set(latest)):
        requests = ledger.on(key)
        acked = [r.rid for r in requests if r.op is not None]
        last = acked[-1] if acked else latest.get(key)
        allowed = {None if last is None else _big(last)}
        allowed |= {_big(r.rid) for r in requests if r.op is None}  # after the acknowledged
        value = await register(client, key)
        if value not in allowed:
            wrong.append(f"{key} lost its last acknowledged write {last!r}")
    return wrong


async def _crash_run(cluster: LocalCluster, kills: int, big: bool, rng: Random) -> None:
    ledger = Ledger()  # small values: the whole run; 1 MiB values: one kill's worth
    latest: dict[str, bytes] = {}  # 1 MiB values: each key's last write, by request id
    earlier: list[tuple[bytes, str, Dot]] = []  # 1 MiB writes of earlier kills
    seen: dict[Dot, bytes] = {}
    replicas: set[str] = set()
    for kill in range(kills):
        if big:
            ledger = Ledger()
        fresh: set[str] = set()
        clients = [await client_of(cluster, "n0") for _ in range(WRITERS)]
        writers = [
            asyncio.create_task(_writer(
                client, ledger, Random(rng.getrandbits(64)), f"k{kill}w{w}", big=big, fresh=fresh
            ))
            for w, client in enumerate(clients)
        ]
        # The moment of the kill, from the seed: sleeping is the point here.
        await asyncio.sleep(rng.uniform(0.2, 2.0) if big else rng.uniform(0.02, 0.6))
        cluster.kill("n0")
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        for client in clients:
            client.close()
        where = f"seed {SEED}, kill {kill + 1} of {kills}"
        wrong = _incarnations(cluster, "n0", fresh, replicas)
        replicas |= fresh

        cluster.start("n0")
        checker = await client_of(cluster, "n0")
        wrong += await (_big_bounds(checker, ledger, latest) if big
                        else _small_bounds(checker, ledger))
        assert not wrong, f"{where}: " + "; ".join(wrong[:6])

        for request in ledger.in_doubt():  # the same request ids, on a new connection
            await request.send(checker)
        acked = [r for r in ledger.requests.values() if r.op is not None]
        if not big and acked:
            await rng.choice(acked).send(checker)  # once more: the same Operation
        if big:  # recent writes of earlier kills once more: the same Operations, applied once
            # (within the node's window of answers: the newest 100,000, at most
            # 256 MiB; a run of 1 MiB writes fills that in a few kills)
            recent = earlier[-8:]
            for rid, key, dot in rng.sample(recent, min(3, len(recent))):
                again = await Request(rid, key, "LWWRegister", "assign", (_big(rid), None)).send(
                    checker
                )
                if again.dot != dot:
                    wrong.append(f"{rid!r} sent again was applied again, as {again.dot}")
            latest |= {r.key: r.rid for r in ledger.requests.values()}  # all acknowledged now
            earlier += [(r.rid, r.key, r.op.dot) for r in acked if r.op is not None]
            wrong += await _big_bounds(checker, Ledger(), latest)
        else:
            wrong = await _small_exact(checker, ledger)
        wrong += reissued(seen, ledger.requests.values())
        checker.close()
        assert not wrong, f"{where}, once the requests in doubt were sent again: " + "; ".join(
            wrong[:6]
        )


@pytest.mark.parametrize(
    ("kills", "big"), [(KILLS or 10, False), (KILLS or 3, True)], ids=["small", "1MiB"]
)
def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, kills: int, big: bool
) -> None:
    cluster = LocalCluster(1, tmp_path, interval=0.05)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(
            _crash_run(cluster, kills, big, Random(f"{SEED}-{big}")), 60 + kills * 20
        ))
    finally:
        codes = cluster.stop()
    assert codes == {"n0": 0}, f"exit codes {codes} on SIGTERM: " + cluster.log("n0")[-2000:]


# -- 2. a torn WAL tail ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["torn", "garbage"])
def test_a_torn_wal_tail_never_makes_later_acknowledged_writes_unreadable(
    tmp_path: Path, fault: str
) -> None:
    """Observation 1: after a torn tail, 20 of 20 updates acknowledged after
    the restart were lost at the next crash."""
    rng, wal = Random(f"{SEED}-{fault}"), tmp_path / "n0" / WAL
    rounds = max(2, KILLS // 20)

    async def run(cluster: LocalCluster) -> None:
        ledger = Ledger(idempotent=False)
        for round_ in range(rounds):
            client = await client_of(cluster, "n0")
            for i in range(200):  # updates until the WAL holds some
                rid = f"before-{round_}-{i}".encode()
                request = (
                    ledger.new(rid, "before", "GCounter", "increment", rng.randint(1, 1000))
                    if i % 2 == 0
                    else ledger.new(rid, "before-names", "ORSet", "add", f"{round_}-{i}")
                )
                await request.send(client)
                if i >= 10 and wal.exists() and wal.stat().st_size > 0:
                    break
            client.close()
            cluster.kill("n0")
            assert wal.exists() and wal.stat().st_size > 0, f"no {wal} after 200 updates"
            size = wal.stat().st_size
            what = (
                f"{wal} cut at {tear(wal, rng):,} of {size:,} bytes"
                if fault == "torn"
                else f"{append_garbage(wal, rng):,} bytes of garbage after {wal}'s {size:,}"
            )
            cluster.start("n0")
            client = await client_of(cluster, "n0")
            before = await counter(client, "before")
            held = await elements(client, "before-names")
            sent = {r.args[0] for r in ledger.on("before-names")}
            acked = total(ledger.on("before"))  # no request was in doubt at the kill
            if fault == "garbage":  # nothing was cut: everything acknowledged is there
                assert before == acked and held == sent, (
                    f"{what}: the counter is {before} of {acked}, {len(held)} of {len(sent)} "
                    "elements are there"
                )
            else:
                assert before <= acked and held <= sent, f"{what}: more than was ever sent"
            after = Ledger(idempotent=False)
            for i in range(20):
                rid = f"after-{round_}-{i}".encode()
                request = (
                    after.new(rid, f"after-{round_}", "GCounter", "increment", rng.randint(1, 99))
                    if i % 2 == 0
                    else after.new(rid, f"after-names-{round_}", "ORSet", "add", f"a{i}")
                )
                await request.send(client)
            client.close()
            cluster.kill("n0")
            cluster.start("n0")
            client = await client_of(cluster, "n0")
            value = await counter(client, f"after-{round_}")
            names = await elements(client, f"after-names-{round_}")
            expected = total(after.on(f"after-{round_}"))
            assert value == expected and len(names) == 10, (
                f"seed {SEED}, round {round_ + 1}: after {what}, a restart and 20 acknowledged "
                f"updates, a SIGKILL lost some: the counter is {value} of {expected}, "
                f"{len(names)} of 10 elements are there"
            )
            client.close()

    cluster = LocalCluster(1, tmp_path, interval=0.05)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(run(cluster), 60 * rounds))
    finally:
        cluster.stop()


# -- 3. damage in the middle; a deleted store.db or WAL -------------------------------


def test_damage_in_the_middle_of_the_store_is_refused_and_repair_keeps_the_rest(
    tmp_path: Path,
) -> None:
    rng = Random(f"{SEED}-damage")
    store = tmp_path / "n0" / STORE
    keys = [f"key-{i:02}" for i in range(48)]
    values = {k: (f"<{k}>".encode() * 1500)[: rng.randint(1000, 12_000)] for k in keys}
    ledger = Ledger(idempotent=False)

    async def write(cluster: LocalCluster) -> None:
        client = await client_of(cluster, "n0")
        for key in keys:
            await ledger.new(key.encode(), key, "LWWRegister", "assign", values[key], None).send(
                client
            )
        client.close()

    async def repaired(cluster: LocalCluster) -> None:
        client = await client_of(cluster, "n0")
        lines = [line for line in cluster.log("n0").splitlines() if "repair:" in line]
        assert lines, "--repair started, but logged no 'repair:' line saying what it dropped"
        dropped = {k for k in keys if any(k in line for line in lines)}
        assert len(dropped) <= len(keys) // 2, (
            f"one damaged page, and --repair dropped {len(dropped)} of {len(keys)} keys"
        )
        for key in keys:
            held = await register(client, key)
            if key in dropped:
                assert held is None, f"{key}, reported dropped, is still there"
            else:
                assert held == values[key], (
                    f"{key}, not reported dropped, is {'absent' if held is None else 'wrong'}"
                )
        # Then it runs: what it kept, and what it acknowledges now, survive a SIGKILL.
        rid = b"after-repair"
        await ledger.new(rid, "after-repair", "GCounter", "increment", 7).send(client)
        client.close()
        cluster.kill("n0")
        cluster.start("n0")  # no --repair: what --repair left is not damaged
        client = await client_of(cluster, "n0")
        assert await counter(client, "after-repair") == 7, "an update after --repair is lost"
        for key in sorted(set(keys) - dropped):
            assert await register(client, key) == values[key], f"{key} lost after --repair"
        client.close()

    cluster = LocalCluster(1, tmp_path)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(write(cluster), 60))
        assert stop(cluster, "n0") == 0
        assert store.exists(), f"no {store} after a clean stop"
        offset = damage_a_page(store, [f"<{k}>".encode() for k in keys])
        refused = attempt(
            node_command(cluster, "n0"), cluster.addresses["n0"][1], tmp_path / "refused.err"
        )
        wrong = _refused(refused, str(store), "damaged")
        assert not wrong, f"a page at byte {offset:,} of {store} flipped: " + "; ".join(wrong)
        start(cluster, "n0", "--repair")
        asyncio.run(asyncio.wait_for(repaired(cluster), 60))
    finally:
        cluster.stop()


async def _write_some(client: Client, ledger: Ledger, tag: str, count: int) -> None:
    for i in range(count):
        rid = f"{tag}-{i}".encode()
        request = (
            ledger.new(rid, "hits", "GCounter", "increment", i + 1)
            if i % 2 == 0
            else ledger.new(rid, "names", "ORSet", "add", rid.decode())
        )
        await request.send(client)


def test_a_deleted_store_is_an_empty_start_under_a_fresh_incarnation(tmp_path: Path) -> None:
    async def run(cluster: LocalCluster) -> None:
        ledger = Ledger(idempotent=False)
        client = await client_of(cluster, "n0")
        await _write_some(client, ledger, "before", 10)
        client.close()
        before = {op.dot[0] for op in ledger.operations()}
        assert stop(cluster, "n0") == 0
        store = cluster.folder / "n0" / STORE
        assert store.exists(), f"no {store} after a clean stop"
        store.unlink()  # the folder, its lock and whatever else stay
        cluster.start("n0")
        client = await client_of(cluster, "n0")
        assert await client.get("hits") is None and await client.get("names") is None, (
            "a start without store.db is not empty"
        )
        after = Ledger(idempotent=False)
        await _write_some(client, after, "after", 6)
        fresh = {op.dot[0] for op in after.operations()}
        wrong = _incarnations(cluster, "n0", fresh, before)
        seen = {op.dot: b"before the store was deleted" for op in ledger.operations()}
        wrong += reissued(seen, after.requests.values())
        assert not wrong, "; ".join(wrong)
        client.close()
        cluster.kill("n0")
        cluster.start("n0")
        client = await client_of(cluster, "n0")
        wrong = await _small_exact(client, after)
        assert not wrong, "after a SIGKILL: " + "; ".join(wrong)
        client.close()

    cluster = LocalCluster(1, tmp_path)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(run(cluster), 60))
    finally:
        cluster.stop()


def test_a_deleted_wal_after_a_clean_stop_loses_nothing(tmp_path: Path) -> None:
    async def run(cluster: LocalCluster) -> None:
        ledger = Ledger(idempotent=False)
        client = await client_of(cluster, "n0")
        await _write_some(client, ledger, "before", 20)
        client.close()
        assert stop(cluster, "n0") == 0
        assert (cluster.folder / "n0" / STORE).exists(), "no store.db after a clean stop"
        (cluster.folder / "n0" / WAL).unlink(missing_ok=True)
        cluster.start("n0")
        client = await client_of(cluster, "n0")
        wrong = await _small_exact(client, ledger)
        assert not wrong, "with store.db-wal deleted after a clean stop: " + "; ".join(wrong)
        client.close()

    cluster = LocalCluster(1, tmp_path)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(run(cluster), 60))
    finally:
        cluster.stop()


# -- 4. a wiped folder ----------------------------------------------------------------


def test_a_wiped_folder_never_reissues_a_dot(tmp_path: Path) -> None:
    """Observation 4: a node restarted on a wiped folder reissued its dots, and
    its peer ignored what it did next. Node a is n0, b is n1. b is stopped too
    while a is wiped and restarted, so that a makes its first updates before it
    could learn anything from b (the case that lost updates), every run."""
    a, b = "n0", "n1"
    rng = Random(f"{SEED}-wipe")
    ledger = Ledger(idempotent=False)
    pre = [f"pre-{i}" for i in range(8)]
    post = [f"post-{i}" for i in range(5)]

    async def increment(client: Client, tag: str) -> None:
        await ledger.new(tag.encode(), "hits", "GCounter", "increment", rng.randint(1, 1000)).send(
            client
        )

    async def change(client: Client, kind: str, element: str) -> None:
        await ledger.new(f"{kind}-{element}".encode(), "names", "ORSet", kind, element).send(
            client
        )

    async def before(cluster: LocalCluster) -> None:
        clients = {node: await client_of(cluster, node) for node in (a, b)}
        for i in range(10):
            await increment(clients[a], f"pre-hit-{i}")
        for element in pre:
            await change(clients[a], "add", element)
        assert await converge(clients, timeout=15) is not None, "no convergence before the wipe"
        for client in clients.values():
            client.close()

    async def after_wipe(cluster: LocalCluster) -> None:
        client = await client_of(cluster, a)
        for i in range(5):
            await increment(client, f"post-hit-{i}")
        for element in post[:4]:
            await change(client, "add", element)
        for element in post[:2]:
            await change(client, "remove", element)
        client.close()

    async def settle(cluster: LocalCluster) -> list[str]:
        clients = {node: await client_of(cluster, node) for node in (a, b)}
        wrong = []
        if await converge(clients, timeout=15) is None:
            wrong.append("a and b did not converge within 15 s of the restart")
        else:  # a has seen pre-0 now: removing it through a removes it
            await change(clients[a], "remove", pre[0])
            await change(clients[a], "add", post[4])
            if await converge(clients, timeout=15) is None:
                wrong.append("a and b did not converge within 15 s of the last updates")
        expected = set(pre[1:]) | set(post[2:])
        acked = total(ledger.on("hits"))
        for node, client in clients.items():
            value = await counter(client, "hits")
            if value != acked:
                wrong.append(f"{node}'s counter is {value}, not the {acked} acknowledged")
            held = await elements(client, "names")
            if held != expected:
                wrong.append(
                    f"{node}'s set lacks {sorted(map(str, expected - held))} and has "
                    f"{sorted(map(str, held - expected))} too many"
                )
        for client in clients.values():
            client.close()
        return wrong

    cluster = LocalCluster(2, tmp_path, interval=0.05)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(before(cluster), 60))
        rids_before = set(ledger.requests)
        assert stop(cluster, a) == 0 and stop(cluster, b) == 0
        shutil.rmtree(tmp_path / a)
        (tmp_path / a).mkdir()  # wiped: an empty folder
        cluster.start(a)
        asyncio.run(asyncio.wait_for(after_wipe(cluster), 60))
        cluster.start(b)
        wrong = asyncio.run(asyncio.wait_for(settle(cluster), 90))
    finally:
        cluster.stop()
    dots = {op.dot: op.key for op in ledger.operations()}  # dots of a's operations, all
    old = {r.op.dot for r in ledger.requests.values() if r.rid in rids_before and r.op}
    new = {r.op.dot for r in ledger.requests.values() if r.rid not in rids_before and r.op}
    wrong += [f"dot {dot} issued before the wipe and again after it ({dots[dot]})"
              for dot in sorted(old & new)]
    replicas_before = {replica for replica, _ in old}
    wrong += _incarnations(cluster, a, replicas_before, set())
    wrong += _incarnations(cluster, a, {replica for replica, _ in new}, replicas_before)
    assert not wrong, f"seed {SEED}: " + "; ".join(wrong)


# -- 5. two processes on one folder -----------------------------------------------------


def test_a_second_process_on_a_folder_in_use_refuses(tmp_path: Path) -> None:
    """Observation 3: a second ``crdtkit node`` on the same folder ran, and
    the two wrote over each other."""

    async def run(cluster: LocalCluster) -> None:
        ledger = Ledger(idempotent=False)
        client = await client_of(cluster, "n0")
        await _write_some(client, ledger, "first", 10)
        port = free_port()
        second = await asyncio.to_thread(
            attempt, node_command(cluster, "n0", port=port), port, tmp_path / "second.err"
        )
        holder = cluster.processes["n0"]
        wrong = _refused(second, "in use", str(holder.pid))
        assert not wrong, "a second node on a folder in use: " + "; ".join(wrong)
        assert holder.poll() is None, "the first node stopped when the second tried its folder"
        await _write_some(client, ledger, "still", 10)  # the first keeps serving
        client.close()
        cluster.kill("n0")
        cluster.start("n0")
        client = await client_of(cluster, "n0")
        wrong = await _small_exact(client, ledger)
        assert not wrong, "after the second process and a SIGKILL: " + "; ".join(wrong)
        client.close()

    cluster = LocalCluster(1, tmp_path)
    cluster.start()
    try:
        asyncio.run(asyncio.wait_for(run(cluster), 90))
    finally:
        cluster.stop()


# -- 6. a full disk ---------------------------------------------------------------------


def _mount_tmpfs(folder: Path) -> None:
    """A small tmpfs at ``folder``; skip (fail under CI=true) if impossible."""
    if os.geteuid() != 0:
        why = "the disk-full test mounts a tmpfs, which needs root"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if done.returncode == 0:
            return
        why = f"cannot mount a tmpfs: {done.stderr.strip()}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must run it (as root)")
    pytest.skip(why)


def _unmount(folder: Path) -> None:
    done = subprocess.run(["umount", str(folder)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30, check=False)


async def _try(request: Request, client: Client) -> bool:
    """Send ``request``: True if acknowledged, False if answered as failed
    (the answer must say it was not applied)."""
    try:
        await request.send(client)
    except NodeError as exc:
        assert "not applied" in str(exc), f"a failed update's answer: {exc}"
        request.failed = str(exc)
        return False
    return True


async def _invisible(client: Client, ledger: Ledger, node: str) -> list[str]:
    """Failed updates seen at ``node``: a failed write's key present, or the
    counter not exactly what was acknowledged."""
    wrong = []
    acked = total(ledger.acknowledged("hits"))
    value = await counter(client, "hits")
    if value != acked:
        wrong.append(f"{node}'s counter is {value}, not the {acked} acknowledged")
    for request in ledger.requests.values():
        if request.type_name == "LWWRegister":
            held = await register(client, request.key)
            if request.failed is not None and held is not None:
                wrong.append(f"{request.key}, answered as failed, is visible at {node}")
            if request.op is not None and held != request.args[0]:
                wrong.append(f"{request.key}, acknowledged, is not there at {node}")
    return wrong


def test_a_full_disk_fails_updates_cleanly_and_retries_apply_once(tmp_path: Path) -> None:
    """Observation 5: on a full disk, updates answered as failed were applied
    and gossiped anyway, and their retries counted them again (1,201 for
    1,200 sent)."""
    rng = Random(f"{SEED}-full")
    cluster = LocalCluster(2, tmp_path, interval=0.05)
    folder = tmp_path / "n0"
    folder.mkdir()
    _mount_tmpfs(folder)
    filler = folder / "filler"

    async def run() -> None:
        ledger = Ledger()
        a = await client_of(cluster, "n0")
        b = await client_of(cluster, "n1")
        size = 128 * 1024
        for step in range(200):  # until an increment and a write failed
            rid = f"hit-{step}".encode()
            hit = ledger.new(rid, "hits", "GCounter", "increment", rng.randint(1, 1000))
            if not await _try(hit, a):
                assert await counter(a, "hits") == total(ledger.acknowledged("hits")), (
                    f"the increment {rid!r}, answered as failed, is counted"
                )
            rid = f"big-{step}".encode()
            big = ledger.new(rid, rid.decode(), "LWWRegister", "assign", rng.randbytes(size), None)
            if not await _try(big, a):
                assert await a.get(big.key) is None, f"{big.key}, answered as failed, is visible"
                size = max(1024, size // 2)  # fill what is left more finely
            failed = [r for r in ledger.requests.values() if r.failed is not None]
            if {r.type_name for r in failed} == {"GCounter", "LWWRegister"}:
                break
        failed = [r for r in ledger.requests.values() if r.failed is not None]
        assert {r.type_name for r in failed} == {"GCounter", "LWWRegister"}, (
            f"after {step + 1} steps on an 8 MiB tmpfs, no failed increment and write: "
            f"{[r.rid for r in failed]}"
        )
        wrong = await _invisible(a, ledger, "n0")
        if await converge({"n0": a, "n1": b}, timeout=30) is None:
            wrong.append("n0 and n1 did not converge within 30 s")
        wrong += await _invisible(b, ledger, "n1")
        assert not wrong, "on a full disk: " + "; ".join(wrong[:6])

        filler.unlink()  # room again: the same requests, the same request ids
        for request in failed:
            for _ in range(20):  # while the node makes use of the room (a bounded poll)
                request.failed = None
                if await _try(request, a):
                    break
                await asyncio.sleep(0.1)
            assert request.op is not None, f"{request.rid!r} still failed with room again"
        retried = {r.rid for r in failed}
        acked = [r for r in ledger.requests.values() if r.op is not None and r.rid not in retried]
        for request in rng.sample(acked, min(5, len(acked))):
            await request.send(a)  # an acknowledged one again: the same Operation
        assert await converge({"n0": a, "n1": b}, timeout=30) is not None, "no convergence"
        for node, client in (("n0", a), ("n1", b)):
            wrong += await _invisible(client, ledger, node)
        sent = total(ledger.on("hits"))
        assert not wrong, f"after the retries ({sent} sent in all): " + "; ".join(wrong[:6])
        a.close()
        b.close()

    try:
        filler.write_bytes(rng.randbytes(5 * MiB))  # deleted later, to make room
        cluster.start()
        asyncio.run(asyncio.wait_for(run(), 180))
    finally:
        cluster.stop()
        _unmount(folder)

