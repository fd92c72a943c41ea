"""The client protocol: what an application in another process asks a node,
and what the node answers, over an authenticated ``replication.tcp.Channel``
in the ``client`` role.

Every message is a canonical CBOR array whose first items are its kind and a
request id the answer repeats:

- ``["update", id, key, type, kind, [args], request id]``: apply operation
  ``kind`` of the type registered as ``type`` (its operation table,
  ``crdts.operations``: the built-in types and any the node imported). An
  operation the type does not take, arguments it refuses, or a key that
  holds another type are answered with an error before anything is applied
  or journalled, and the connection stays open.
  Answered, once the node's store committed it, with ``["done", id, replica,
  counter, observed, delta]``: the update's dot, the operations it observed
  on its key (dot ranges, ``replication.dotranges``), and its delta, all a
  caller needs to log it as an ``Operation``. The request id (1 to 64
  bytes, unique per update: the client makes it) makes a retry safe: an
  update whose request id the node has answered is answered the same again,
  not applied twice, even after a restart. An update that could not be
  committed is answered with an error saying "not applied", and is not
  applied.
- ``["get", id, key]``: ``["state", id, state or null, dot ranges]``.
- Consistency levels (docs/consistency.md): an update may end with
  ``level, timeout`` (``"local"``, ``"majority"`` or ``"all"``; the most
  milliseconds to wait for it, up to ``crdtkit.node.MAX_LEVEL_TIMEOUT``), and
  its ``done`` then ends with how far it spread, ``[level, needed,
  [nodes reached...], [members...]]`` (``replication.consistency.Reached``),
  whether or not the level was reached in time: the update is applied and
  durable at the node either way. ``["get", id, key, level, timeout]``
  gathers the key from that many members and merges it first; its
  ``state`` ends with how far it gathered, the same way.
- ``["keyspace", id]``: ``["keyspace", id, bytes]`` (``encode_keyspace``).
- ``["snapshot", id]``: start a Chandy-Lamport snapshot at the node:
  ``["snapshot", id, initiator, number]``.
- ``["recording", id, initiator, number]``: the node's part of that snapshot
  if complete, ``["recording", id, null]`` if not, else ``["recording", id,
  [checkpoint bytes, [[source, [frames]], ...]]]``.
- ``["stats", id]``: ``["stats", id, [name, count, ...]]``, the node's
  counters (updates, merges, frames and bytes sent and received, refusals,
  reads answered for other nodes and answers taken in, members,
  unreachable).
- ``["members", id]``: ``["members", id, [[member, node, address, status,
  unreachable], ...]]``, every member record the node holds (removed ones
  too, while their tombstones last), ``status`` a lower-case name
  (``replication.membership.Status``), ``unreachable`` the node's own
  failure detector's view.
- ``["leave", id]``: the node leaves the cluster (and stops once removed):
  ``["leave", id, status]``, its status now.
- ``["down", id, node]``: an operator's down of ``node`` (a node id, or one
  member id): ``["down", id, [member, ...]]``, the members downed.

A request the node cannot serve is answered ``["error", id, message]``.
A client may send several requests without waiting for their answers (up to
``crdtkit.node.MAX_IN_FLIGHT`` per connection; the node reads no further
meanwhile): the node serves them concurrently and answers each when it is
ready, in any order, so answers are matched to requests by their id.
:func:`parse` checks shapes only, raising DecodeError; the handlers check the
values (the codec checks every state).

Cost: O(message size).
"""

from __future__ import annotations

from crdts import codec
from crdts.base import CRDT, expect_list, expect_uint
from crdts.errors import DecodeError
from crdts.operations import Operations, operations_of

__all__ = ["MAX_MESSAGE", "encode", "operations", "parse"]

#: Client messages above this size are refused before parsing.
MAX_MESSAGE = 64 * 1024 * 1024

#: How many fields each kind carries after its request id (requests, answers).
_FIELDS: dict[str, set[int]] = {
    "update": {5, 7},
    "done": {4, 5},
    "get": {1, 3},
    "state": {2, 3},
    "keyspace": {0, 1},
    "snapshot": {0, 2},
    "recording": {2, 1},
    "stats": {0, 1},
    "members": {0, 1},
    "leave": {0, 1},
    "down": {1},
    "error": {1},
}


def encode(kind: str, request: int, *fields: object) -> bytes:
    """A message's bytes.

    >>> parse(encode("get", 7, "hits"))
    ('get', 7, ['hits'])

    Cost: O(size).
    """
    return codec.encode_plain([kind, request, *fields])


def parse(data: bytes, *, max_size: int = MAX_MESSAGE) -> tuple[str, int, list[object]]:
    """``(kind, request id, fields)``; DecodeError unless the message has a
    known kind, a request id and that kind's number of fields (requests for a
    snapshot or a keyspace have none; answers have theirs).

    >>> parse(b"junk")
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(data)).
    """
    raw = expect_list(codec.decode_plain(data, max_size=max_size), "message")
    if len(raw) < 2 or type(raw[0]) is not str or raw[0] not in _FIELDS:
        raise DecodeError("not a client protocol message")
    kind, fields = raw[0], raw[2:]
    request = expect_uint(raw[1], "request id")
    if len(fields) not in _FIELDS[kind]:
        raise DecodeError(f"{kind}: wrong number of fields")
    return kind, request, fields


#: Operation tables by type tag, as ``operations_of`` gives them: a tag once
#: registered names one class for good, and ``operations_of`` copies the
#: codec's registry on every call (a sixth of a pipelining client's CPU).
_TABLES: dict[str, tuple[type[CRDT], Operations]] = {}


def operations(type_name: object) -> tuple[type[CRDT], Operations]:
    """``crdts.operations.operations_of(type_name)``, kept once found: the
    class registered as ``type_name`` and its operation table;
    InvalidOperation as ``operations_of`` raises it.

    >>> cls, table = operations("GCounter"); cls.__name__, table.names()
    ('GCounter', ['increment'])

    Cost: O(1) once a type was found.
    """
    if not isinstance(type_name, str):
        return operations_of(type_name)  # (it raises)
    found = _TABLES.get(type_name)
    if found is None:
        found = _TABLES[type_name] = operations_of(type_name)
    return found
