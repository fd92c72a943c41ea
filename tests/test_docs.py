"""Every public class, method and property documents a runnable example and
its cost; the examples themselves run as doctests (``--doctest-modules``)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

import crdts
from crdtkit import demo, protocol
from crdts import base, codec
from replication import (
    Replicator,
    auth,
    conformance,
    consistency,
    dotranges,
    envelope,
    keyspacesize,
    membership,
    messages,
    ratelog,
    runtime,
    simnet,
    sqlite,
    store,
    tcp,
)
from replication.nats import NatsEndpoint, NatsStats
from replication.nats import subject as nats_subject
from replication.replicator import Staged
from snapshot import cut, files, marker, sec

CLASSES = [
    tcp.FrameReader,
    tcp.Limits,
    ratelog.RateLimitedLog,
    crdts.GCounter,
    crdts.PNCounter,
    crdts.ORSet,
    crdts.LWWRegister,
    crdts.MVRegister,
    crdts.VectorClock,
    crdts.CausalContext,
    dotranges.DotRanges,
    Replicator,
    Staged,
    keyspacesize.KeyspaceSize,
    store.MemoryStore,
    store.WriteBehind,
    sqlite.SQLiteStore,
    simnet.SimulatedNetwork,
    cut.GlobalSnapshot,
    cut.LocalState,
    cut.KeyspaceClock,
    marker.SnapshotNode,
    sec.SECReport,
    sec.Verdict,
    auth.Hello,
    auth.Handshake,
    auth.Session,
    membership.Member,
    membership.MemberSet,
    membership.Membership,
    membership.MemberNode,
    membership.MembershipSettings,
    runtime.NodeRuntime,
    simnet.SimulatedEndpoint,
    envelope.Envelope,
    NatsEndpoint,
    NatsStats,
    consistency.Quorum,
    consistency.Reached,
]
FUNCTIONS = [
    codec.encode,
    codec.decode,
    codec.encode_plain,
    codec.decode_plain,
    base.join,
    base.leq,
    messages.encode,
    messages.encode_entry,
    messages.encode_interval,
    messages.parse,
    membership.encode,
    membership.parse,
    membership.is_membership_frame,
    membership.node_of,
    store.encode_row,
    store.decode_row,
    store.restore,
    cut.join_entries,
    cut.restore_replica,
    cut.restore_cluster,
    marker.gather,
    marker.take_snapshot,
    sec.check,
    sec.join_cut,
    files.write_atomic,
    files.read_verified,
    files.write_snapshot,
    files.read_snapshot,
    files.write_checkpoint,
    files.read_checkpoint,
    demo.run_demo,
    auth.check_key,
    auth.load_key,
    auth.generate_key,
    tcp.read_frame,
    conformance.check_transport,
    envelope.new_boot,
    nats_subject,
    tcp.connect,
    protocol.encode,
    protocol.parse,
    consistency.check_level,
    consistency.needed,
]
# Wire and generic-protocol plumbing: documented, but an example would only
# repeat the codec's.
PLUMBING = {"to_payload", "from_payload", "from_dots", "to_bytes", "from_bytes"}


def public_members() -> Iterator[tuple[str, object]]:
    for cls in CLASSES:
        yield cls.__name__, cls
        for name, member in vars(cls).items():
            if name.startswith("_") or name in PLUMBING or name.isupper():
                continue
            if callable(member) or isinstance(member, property | classmethod):
                yield f"{cls.__name__}.{name}", member
    for function in FUNCTIONS:
        yield f"{function.__module__}.{function.__name__}", function


MEMBERS = list(public_members())


@pytest.mark.parametrize(("name", "member"), MEMBERS, ids=[name for name, _ in MEMBERS])
def test_documented_with_example_and_cost(name: str, member: object) -> None:
    doc = inspect.getdoc(member) or ""
    assert ">>>" in doc, f"{name} has no runnable example"
    if not inspect.isclass(member):
        assert "Cost" in doc, f"{name} does not state its cost"
