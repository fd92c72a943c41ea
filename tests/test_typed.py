"""A user's ``mypy --strict`` sees crdtkit's types (issue 11, observation 5):
every package ships a ``py.typed`` marker, and the packaging installs it.

The packages are copied to a folder that the checked file finds on its
``PYTHONPATH`` the way it finds installed packages (mypy's package path, where
a package without ``py.typed`` is skipped as untyped), away from the
repository, so nothing is found as source. One mypy run, about 2 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crdts", "replication", "snapshot", "crdtkit")

USER_FILE = """\
from random import Random

from crdtkit.client import Client
from replication import Replicator
from snapshot import check

replica = Replicator("a", [], rng=Random(1))
reveal_type(replica.tick)
reveal_type(check)
reveal_type(Client.connect)
wrong: int = replica.replica_id
"""


def test_every_package_ships_py_typed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in package_data.get(package, []), package


def test_mypy_strict_sees_the_types_of_a_user_import(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    site, user = tmp_path / "site", tmp_path / "user"
    user.mkdir()
    for package in PACKAGES:
        shutil.copytree(ROOT / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (user / "user.py").write_text(USER_FILE)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), "user.py"],
        cwd=user, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    out = run.stdout + run.stderr
    assert "py.typed" not in out and "import-untyped" not in out, out
    assert 'Revealed type is "def (now: float) -> list[tuple[str, bytes]]"' in out, out
    assert "-> snapshot.sec.SECReport" in out, out
    assert "crdtkit.client.Client]" in out, out
    # A misuse is an error only because the types are seen.
    assert 'user.py:11: error: Incompatible types in assignment (expression has type "str"' in out
    assert run.returncode == 1, out
