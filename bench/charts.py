"""``python -m bench.charts``: scaling curves, drawn as SVG into ``docs/charts/``.

python -m bench.charts [--quick] [--repeat N] [--seed S] [--out DIR]

Each chart runs the benchmark rows that already measure a scale (the gossip
scale rows, the disjoint OR-Set merge and its peers, bounded state, snapshot
frames and gossip convergence) at several sizes and draws their figures
beside their floors:

- ``replicas.svg``: gossip time per replica against replicas (one update
  spreading to all), and the rounds it took;
- ``elements.svg``: full-state merge time per element against elements, for
  crdtkit, the set-union floor and each installed peer (``bench.peers``);
- ``gossip-elements.svg``: gossip time per element against the elements of
  one OR-Set converging on 4 replicas;
- ``memory-elements.svg``: bytes per element of an OR-Set against a plain set
  of the same strings (tracemalloc; the strings themselves not counted);
- ``operations.svg``: memory and saved bytes against updates (bounded state:
  they must stay flat);
- ``nodes.svg``: frames a snapshot sends against nodes, beside N and 3N, and
  rounds to converge beside log3(N) + 3.

It also writes ``points.json``, the figures drawn. Full sizes take several
minutes (the million updates of bounded state dominate); ``--quick`` draws
small ones in seconds, with no meaning for speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from random import Random

from bench import bookkeeping, gossip, peers, sets, snapshots
from bench.harness import Config, traced
from bench.svg import Series, line_chart
from bench.workloads import disjoint_workloads

Points = list[tuple[float, float]]
Chart = tuple[str, str, dict[str, Points]]  # file name, SVG text, the points


def _points(sizes: Sequence[int], values: Sequence[float]) -> Points:
    return [(float(n), float(v)) for n, v in zip(sizes, values, strict=True)]


def replicas_chart(config: Config, rng: Random) -> Chart:
    """Gossip time per replica (``bench.gossip.scale_replicas``' runs)."""
    sizes = config.gossip_replicas
    timings, rounds = gossip.replica_points(config, rng)
    series = {
        "time per replica": _points(sizes, [t.median for t in timings]),
        "time per replica-round": _points(
            sizes, [t.median / rounds[n] for t, n in zip(timings, sizes, strict=True)]
        ),
    }
    svg = line_chart(
        "Gossip: time per replica, one update to all",
        "replicas",
        "simulation time per replica",
        [Series(name, points) for name, points in series.items()],
        unit="s",
    )
    return "replicas.svg", svg, series


def _element_sizes(config: Config) -> tuple[int, ...]:
    return (500, 2_000) if config.quick else (1_000, 10_000, 100_000)


def elements_chart(config: Config, seed: int) -> Chart:
    """Full-state merge per element: the rows of ``bench.sets.disjoint_merge``
    and ``bench.peers.set_disjoint`` at each size, on the same strings."""
    sizes = _element_sizes(config)
    installed, _ = peers.installed()
    series: dict[str, Points] = {}
    for n in sizes:
        sized = dataclasses.replace(config, set_size=n)
        stream = f"{seed}:chart-elements:{n}"
        merge, _reads = sets.disjoint_merge(sized, Random(stream))
        per = 2 * n * 0.9  # live elements after the merge
        series.setdefault("set union (floor)", []).append((n, merge.floor.median / per))
        series.setdefault("crdtkit ORSet", []).append((n, merge.figure.median / per))
        rows, _notes = peers.set_disjoint(sized, Random(stream), installed)
        for row in rows:
            name = row.name.split(":")[0].removeprefix("peer ")
            series.setdefault(name, []).append((n, row.figure.median / per))
    svg = line_chart(
        "OR-Set full-state merge: time per element, 2 replicas disjoint",
        "elements added per replica",
        "time per element of the merged set",
        [Series(name, pts, name.endswith("(floor)")) for name, pts in series.items()],
        unit="s",
    )
    return "elements.svg", svg, series


def gossip_elements_chart(config: Config, rng: Random) -> Chart:
    """Gossip time per element (``bench.gossip.scale_state``' runs)."""
    sizes = config.gossip_elements
    timings, sent = gossip.state_points(config, rng)
    series = {"time per element": _points(sizes, [t.median for t in timings])}
    svg = line_chart(
        f"Gossip: one OR-Set converging on {gossip.STATE_REPLICAS} replicas",
        "elements",
        "simulation time per element",
        [Series(name, points) for name, points in series.items()],
        unit="s",
    )
    series["bytes sent per element"] = _points(sizes, [sent[m] / m for m in sizes])
    return "gossip-elements.svg", svg, series


def memory_elements_chart(config: Config, seed: int) -> Chart:
    """Bytes per element: the OR-Set a replica holds after the disjoint
    workload, against a plain set of the same live strings."""
    sizes = _element_sizes(config)
    series: dict[str, Points] = {"plain set (floor)": [], "crdtkit ORSet": []}
    for n in sizes:
        (h,) = disjoint_workloads(Random(f"{seed}:chart-memory:{n}"), n, 0.1, ("a",))
        live = len(h.live())
        series["plain set (floor)"].append((n, traced(h.live)[1] / live))
        series["crdtkit ORSet"].append((n, traced(h.replay)[1] / live))
    svg = line_chart(
        "Memory per element: OR-Set against a plain set",
        "elements added (10% then removed)",
        "bytes per live element",
        [Series(name, pts, name.endswith("(floor)")) for name, pts in series.items()],
        unit="B",
        log_y=False,
    )
    return "memory-elements.svg", svg, series


def operations_chart(config: Config, seed: int) -> Chart:
    """Bounded state (``bench.bookkeeping.run``) after more and more updates."""
    low, high = config.bookkeeping_updates
    sizes = [10**e for e in range(round(math.log10(low)), round(math.log10(high)) + 1)]
    results = [bookkeeping.run(n, Random(f"{seed}:chart-operations")) for n in sizes]
    series = {
        "memory (writer and peer)": _points(sizes, [m for _, m in results]),
        "saved bytes (keyspace)": _points(sizes, [b for b, _ in results]),
    }
    svg = line_chart(
        f"Bounded state: {bookkeeping.BOUNDED_KEYS} G-Counter keys, updates round-robin",
        "updates",
        "bytes",
        [Series(name, points) for name, points in series.items()],
        unit="B",
    )
    return "operations.svg", svg, series


def nodes_chart(config: Config, rng: Random) -> Chart:
    """Snapshot frames (``bench.snapshots.snapshot_frames``) and gossip rounds
    (``bench.gossip.convergence``) against nodes."""
    frames = snapshots.snapshot_frames(config, rng)
    nodes = config.snapshot_frame_nodes
    rounds = [r for r in gossip.convergence(config, rng) if r.name.startswith("gossip rounds")]
    replicas = config.gossip_replicas
    series = {
        "snapshot frames": _points(nodes, [r.figure.median for r in frames]),
        "3N (target)": _points(nodes, [3 * n for n in nodes]),
        "N": _points(nodes, list(nodes)),
        "rounds to converge": _points(replicas, [r.figure.median for r in rounds]),
        "log3(N) + 3": _points(replicas, [r.floor.median for r in rounds]),
    }
    reference = {"3N (target)", "N", "log3(N) + 3"}
    svg = line_chart(
        "Nodes: frames per snapshot, rounds to converge",
        "nodes",
        "frames, rounds",
        [Series(name, pts, name in reference) for name, pts in series.items()],
        unit="",
    )
    return "nodes.svg", svg, series


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweeps, write every chart and ``points.json`` into ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.charts", description="Scaling curves as SVG charts."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=2024, help="workload seed (default 2024)")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/charts"), help="folder (default docs/charts)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    config = Config.small(args.repeat) if args.quick else Config.full(args.repeat)
    seed = args.seed
    args.out.mkdir(parents=True, exist_ok=True)
    points: dict[str, dict[str, Points]] = {}
    makers: list[tuple[str, Callable[[], Chart]]] = [
        ("replicas", lambda: replicas_chart(config, Random(f"{seed}:gossip-scale-replicas"))),
        ("elements", lambda: elements_chart(config, seed)),
        ("gossip", lambda: gossip_elements_chart(config, Random(f"{seed}:gossip-scale-state"))),
        ("memory per element", lambda: memory_elements_chart(config, seed)),
        ("operations", lambda: operations_chart(config, seed)),
        ("nodes", lambda: nodes_chart(config, Random(f"{seed}:chart-nodes"))),
    ]
    for what, make in makers:
        print(f"charting {what} ...", file=sys.stderr, flush=True)
        name, svg, series = make()
        (args.out / name).write_text(svg, encoding="utf-8")
        points[name] = series
        print(args.out / name)
    meta = {"quick": config.quick, "repeat": config.repeat, "seed": seed}
    document = {"meta": meta, "charts": points}
    (args.out / "points.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # not on import, e.g. by pytest's doctest collection
    raise SystemExit(main())

