"""The training step now against the step at a git revision: an A/B in alternating fresh processes.

    python bench/against.py REV [--rounds 7] [bench/train_step.py's options, e.g. --threads 2 --steps 3]

Exports REV's ``src`` and ``bench`` into a temporary folder, then runs ``bench/train_step.py --repeats 1`` from
this tree and from REV's in turn, ``--rounds`` times (after one untimed round each, which also fills numba's
on-disk cache), and prints the median step time of each and the median of the per-round ratios. Alternating
processes spread the load drift of a shared machine over both sides; the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP = re.compile(r"^\s+step\s+([\d.]+) ms", re.MULTILINE)


def export(revision: str, directory: Path) -> Path:
    """REV's ``src`` and ``bench`` under ``directory``; returns that folder."""
    try:
        archive = subprocess.run(
            ["git", "archive", revision, "src", "bench"], capture_output=True, check=True, cwd=HERE.parent
        ).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: git archive {revision}: {e.stderr.decode().strip()}") from None
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def step_ms(tree: Path, options: list[str]) -> float:
    """bench/train_step.py's median step time (ms) in a fresh process importing ``tree``'s sparsecode."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "train_step.py"), "--repeats", "1", *options],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    match = STEP.search(out)
    if match is None:
        raise SystemExit(f"error: no step time in bench/train_step.py's output from {tree}:\n{out}")
    return float(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revision")
    ap.add_argument("--rounds", type=int, default=7)
    a, options = ap.parse_known_args()  # the rest goes to bench/train_step.py
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": HERE.parent, a.revision: export(a.revision, Path(tmp))}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(a.rounds + 1):
            for name, tree in trees.items():
                ms = step_ms(tree, options)
                if r:  # round 0 warms up (and compiles the kernels into their cache)
                    times[name].append(ms)
    ratios = [now / then for now, then in zip(times["now"], times[a.revision])]
    print(f"bench/train_step.py {' '.join(options)}: median step of {a.rounds} alternating rounds")
    for name, ts in times.items():
        print(f"  {name:12s} {statistics.median(ts):7.1f} ms   (rounds: {', '.join(f'{t:.1f}' for t in ts)})")
    print(f"  now ÷ {a.revision}: {statistics.median(ratios):.3f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
