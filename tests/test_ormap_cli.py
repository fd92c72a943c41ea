"""``crdtkit ask ... update KEY ORMap update FIELD TYPE OPERATION [ARG...]``:
a map's nested update from the command line, through a node process. The
words after the nested operation's name are that operation's own, so maps
nest (``... ORMap update profile ORMap update logins GCounter increment 1``).
Bad input is one line, exit 2, and changes nothing."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from crdtkit.cli import main, operation_arguments
from crdtkit.cluster import LocalCluster
from crdts.errors import InvalidOperation
from tests.crashkit import client_of


def test_words_become_nested_arguments() -> None:
    assert operation_arguments("GCounter", "increment", ["3"]) == [3]
    assert operation_arguments("ORMap", "update", ["visits", "GCounter", "increment", "3"]) == [
        "visits", "GCounter", "increment", [3]
    ]
    assert operation_arguments(
        "ORMap", "update", ["p", "ORMap", "update", "n", "PNCounter", "decrement", "2"]
    ) == ["p", "ORMap", "update", ["n", "PNCounter", "decrement", [2]]]
    assert operation_arguments("ORMap", "remove", ["tags"]) == ["tags"]
    # A type this process does not know (a node's --import): words as they are.
    assert operation_arguments("GSet", "add", ["x", "7"]) == ["x", 7]
    for words in (["visits"], ["visits", "GCounter"]):
        with pytest.raises(InvalidOperation, match="KEY TYPE OPERATION"):
            operation_arguments("ORMap", "update", words)


async def _serving(cluster: LocalCluster) -> None:
    (await client_of(cluster, "n0")).close()  # (bounded: until the node serves)


def _ask(cluster: LocalCluster, *words: str) -> tuple[int, str, str]:
    host, port = cluster.addresses["n0"]
    out, err = io.StringIO(), io.StringIO()
    code = main(["ask", "--node", f"{host}:{port}", "--key-file", str(cluster.key_file),
                 *words], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_nested_update_through_ask_and_bad_ones_refused_in_one_line(tmp_path: Path) -> None:
    cluster = LocalCluster(1, tmp_path)
    cluster.start()
    try:
        asyncio.run(_serving(cluster))
        for words in (
            ["visits", "GCounter", "increment", "3"],
            ["tags", "ORSet", "add", "red"],
            ["tags", "ORSet", "add", "blue"],
            ["profile", "ORMap", "update", "logins", "GCounter", "increment", "1"],
        ):
            code, out, err = _ask(cluster, "update", "user", "ORMap", "update", *words)
            assert code == 0 and out.startswith("applied user ORMap update "), (out, err)
        code, out, err = _ask(cluster, "update", "user", "ORMap", "remove", "tags")
        assert code == 0, err
        want = "user = {'visits': 3, 'profile': {'logins': 1}}\n"
        assert _ask(cluster, "get", "user")[1] == want
        for words in (
            ["visits"],  # no type or operation
            ["visits", "GCounter"],  # no operation
            ["visits", "GCounter", "frobnicate", "3"],  # not an operation of the type
            ["visits", "GCounter", "increment", "-1"],  # a bad amount
            ["visits", "GCounter", "increment", "1", "2"],  # too many arguments
            ["visits", "Nope", "increment", "1"],  # no such type
            ["visits", "ORSet", "add", "x"],  # the key holds a GCounter (the node refuses)
        ):
            code, out, err = _ask(cluster, "update", "user", "ORMap", "update", *words)
            assert code == 2 and out == "", (words, out, err)
            assert err.count("\n") == 1 and err.startswith("crdtkit: "), (words, err)
        assert _ask(cluster, "get", "user")[1] == want  # nothing changed
    finally:
        codes = cluster.stop()
    assert all(code == 0 for code in codes.values()), codes
    assert "Traceback" not in cluster.log("n0")
