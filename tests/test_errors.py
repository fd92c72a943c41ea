"""One error tree (issue 11, observation 4): every exception that crdtkit's
packages define derives from ``CrdtkitError`` and says who caused the failure
(the caller, the data, the peer or the machine); docs/errors.md draws all of
them; the old names still catch what they caught."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

from crdts.errors import (
    CallerError,
    CRDTError,
    CrdtkitError,
    DataError,
    DecodeError,
    InvalidOperation,
    MachineError,
    PeerError,
)

PACKAGES = ("crdts", "replication", "snapshot", "crdtkit")
PARTIES = (CallerError, DataError, PeerError, MachineError)
DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the packages, by
    qualified name (imported modules' classes counted where defined)."""
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package] + [
            importlib.import_module(info.name)
            for info in pkgutil.walk_packages(package.__path__, f"{name}.")
            if not info.name.endswith("__main__")
        ]
        for module in modules:
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


CLASSES = _exception_classes()
#: Bases that group a layer's errors rather than blame a party.
LAYER_BASES = {"snapshot.errors.SnapshotError"}
#: Classes with two parties, and why: an unusable key is the operator's
#: doing, and stays an AuthError (a peer's) for handlers written before.
TWO_PARTIES = {"replication.auth.KeyUnusable"}


def test_the_walk_finds_the_known_classes() -> None:
    for name in (
        "crdts.errors.InvalidOperation",
        "replication.tcp.FrameTooLarge",
        "replication.store.CommitFailed",
        "snapshot.errors.SnapshotCorrupt",
        "crdtkit.client.NodeError",
    ):
        assert name in CLASSES
    assert len(CLASSES) >= 20


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_exception_derives_from_the_root(name: str) -> None:
    assert issubclass(CLASSES[name], CrdtkitError), f"{name} is not a CrdtkitError"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_exception_names_who_caused_it(name: str) -> None:
    cls = CLASSES[name]
    if cls is CrdtkitError or name in LAYER_BASES:
        return
    parties = [p.__name__ for p in PARTIES if issubclass(cls, p)]
    if cls in PARTIES:
        assert parties == [cls.__name__]
    elif name in TWO_PARTIES:
        assert len(parties) == 2, parties
    else:
        assert len(parties) == 1, f"{name} is under {parties or 'no party'}"


def test_docs_draw_every_class() -> None:
    text = DOC.read_text()
    missing = [n for n, c in CLASSES.items() if not re.search(rf"\b{c.__name__}\b", text)]
    assert not missing, f"docs/errors.md does not show {missing}"


def test_old_names_catch_what_they_caught() -> None:
    from crdtkit.client import NodeError
    from replication.auth import AuthError, KeyUnusable, check_key
    from replication.store import CommitFailed, StoreError
    from snapshot.errors import SnapshotCorrupt, SnapshotIncomplete

    assert CRDTError is CrdtkitError
    for old in (InvalidOperation, DecodeError, AuthError, StoreError, SnapshotCorrupt,
                SnapshotIncomplete, NodeError):
        assert issubclass(old, CRDTError)
    for value_error in (InvalidOperation, DecodeError, AuthError, SnapshotCorrupt):
        assert issubclass(value_error, ValueError)
    assert issubclass(CommitFailed, OSError)
    with pytest.raises(AuthError, match="at least 16 bytes"):
        check_key(b"short")
    with pytest.raises(CallerError):
        check_key(b"short")
    assert issubclass(KeyUnusable, AuthError)


def test_transport_errors_are_peer_errors() -> None:
    # Observation 4: these derived from bare Exception, out of every tree.
    from replication.tcp import FrameTooLarge, PeerClosed, PeerMisbehaved

    for cls in (FrameTooLarge, PeerClosed, PeerMisbehaved):
        assert issubclass(cls, PeerError)
        assert not issubclass(cls, (CallerError, DataError, MachineError))
