"""Names that say what a thing is (issue 11, observation 5): ``Push.reply``
is an enum whose wire form is the int it always was, each ``History``-like
class has a name of its own, and the lossy ``Replicator.vclock`` is gone."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict

import pytest

from crdts import codec
from crdts.dotcontext import CausalContext
from replication import Replicator
from replication.messages import Piece, Push, Reply, encode, parse

PACKAGES = ("crdts", "replication", "snapshot", "crdtkit", "bench")


@pytest.mark.parametrize("reply", list(Reply))
def test_reply_is_an_enum_on_the_wire_as_an_int(reply: Reply) -> None:
    push = Push("a", "b", 0, 0, 0, 1, reply, CausalContext(), ())
    frame = encode(push)
    raw = codec.decode_plain(frame)
    assert isinstance(raw, list) and type(raw[8]) is int and raw[8] == int(reply)
    back = parse(frame)
    assert isinstance(back, Push) and back.reply is reply
    piece = Piece("a", "b", -1, 1, 0, 1, reply, CausalContext(), -1, 0, 2, b"x")
    back_piece = parse(encode(piece))
    assert isinstance(back_piece, Piece) and back_piece.reply is reply


def test_a_round_asks_one_less_each_answer() -> None:
    assert [r.answer for r in Reply] == [Reply.NOTHING, Reply.NOTHING, Reply.PUSH]
    assert [int(r) for r in Reply] == [0, 1, 2]


def test_no_two_classes_share_a_name() -> None:
    # Three classes were called History (the operation log, the law kit's
    # random run, a bench workload); now only the operation log is.
    where: dict[str, set[str]] = defaultdict(set)
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and not cls.__name__.startswith("_"):
                    where[cls.__name__].add(f"{cls.__module__}.{cls.__qualname__}")
    shared = {n: sorted(w) for n, w in where.items() if len(w) > 1}
    assert not shared, shared
    assert where["History"] == {"replication.history.History"}


def test_the_lossy_vclock_view_is_gone() -> None:
    assert not hasattr(Replicator, "vclock")
