"""``python -m bench``: run the suite and print the table."""

from __future__ import annotations

from bench.cli import main

if __name__ == "__main__":  # not on import, e.g. by pytest's doctest collection
    raise SystemExit(main())
