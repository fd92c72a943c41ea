"""crdtkit's exceptions: one root, and a subtree for each party that can
cause a failure, in the trio manner (``ClosedResourceError``, "your code
closed it", against ``BrokenResourceError``, "the other end broke it").

Every exception that ``crdts``, ``replication``, ``snapshot`` and ``crdtkit``
raise on purpose derives from :class:`CrdtkitError`, and from exactly one of
the parties below, so a handler says what it is ready for:

- :class:`CallerError`: the code calling us asked for what cannot be done (a
  negative amount, a state over the configured maximum, a bad command line).
  Fix the call; retrying it changes nothing.
- :class:`DataError`: bytes from outside (a frame, a file, a node's answer)
  are not a valid encoding. Nothing of them was used.
- :class:`PeerError`: the other end of a connection failed authentication,
  broke the protocol, hung up, or refused (a node answering a client).
- :class:`MachineError`: this machine failed us: a disk full or failing, a
  folder held by another process, files damaged on disk.

Each layer keeps its own classes beside the code that raises them
(``replication.auth.AuthError``, ``replication.store.StoreError``,
``snapshot.errors``, ``crdtkit.client.NodeError``); docs/errors.md draws the
whole tree. The classes that stand for bad values (``InvalidOperation``,
``DecodeError``, ``AuthError``, ``SnapshotCorrupt``) are ``ValueError`` too,
and ``CommitFailed`` an ``OSError``, so code that guards against those keeps
working. Merging two different types is a programming error and raises the
builtin ``TypeError``.

>>> from crdts import GCounter
>>> try:
...     GCounter().increment("a", -1)
... except CallerError as exc:
...     print(type(exc).__name__, "/", isinstance(exc, CrdtkitError))
InvalidOperation / True

``CRDTError`` is the root's old name, kept so that ``except CRDTError`` still
catches everything it caught before (and now the transport's errors too).
"""

__all__ = [
    "CRDTError",
    "CallerError",
    "CrdtkitError",
    "DataError",
    "DecodeError",
    "InvalidOperation",
    "MachineError",
    "PeerError",
    "ProtocolError",
    "StateTooLarge",
]


class CrdtkitError(Exception):
    """The root: every error crdtkit raises on purpose."""


#: The root's old name: it was the data-type layer's base and already the
#: base of the authentication, store, snapshot and client errors.
CRDTError = CrdtkitError


class CallerError(CrdtkitError):
    """The caller asked for what cannot be done; nothing was changed."""


class DataError(CrdtkitError):
    """Bytes from outside are not a valid encoding; nothing of them was used."""


class PeerError(CrdtkitError):
    """The other end of a connection (a peer node, or the node a client talks
    to) failed authentication, broke the protocol, hung up or refused."""


class ProtocolError(PeerError):
    """A peer broke the framing or the rules of the protocol: close its
    connection."""


class MachineError(CrdtkitError):
    """This machine failed: its disk, its folders, its files."""


class InvalidOperation(CallerError, ValueError):
    """An update the type refuses; the state is left exactly as it was."""


class DecodeError(DataError, ValueError):
    """Bytes that are not a valid, canonical encoding of a known CRDT."""


class StateTooLarge(InvalidOperation):
    """A state whose canonical encoding is over the configured maximum: the
    caller wrote more than the replica is set to hold or ship under one key."""
