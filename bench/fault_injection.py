"""Fault injection, many trials: the job of tests/test_faults.py (train a tiny model's SAE with its activation cache,
evaluate it, build its feature database) killed again and again, each time checked and finished.

Trials, seeded: SIGKILL at a random write (just before or just after its rename; the writes are counted in an
uninterrupted run), SIGKILL at a random moment of a random command, and Ctrl-C (SIGINT) at a random moment of
a random command. After each: every file left loads, the next command (`train --resume`, or the same command again)
finishes the job, no temporary is left, and everything equals the uninterrupted run bit for bit (tensors, JSON and
metrics except wall-clock fields, database rows). Stops at --trials or --minutes, whichever comes first.

    python bench/fault_injection.py [--trials 40] [--minutes 30] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from faults import (  # the harness lives beside the tests that use it
    count_writes,
    fingerprint,
    kill_at_write,
    make_pipeline,
    run,
    start_at,
    stop_at_time,
    write_corpus,
    write_tiny_bert,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--minutes", type=float, default=30.0, help="stop starting trials after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a fresh temporary one)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sparsecode-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model = write_tiny_bert(work / "tiny_bert")
    corpus = write_corpus(work / "corpus.txt")
    root = work / "job"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    pipeline = make_pipeline(root, model, corpus)
    started = time.monotonic()
    calls = count_writes(pipeline, work / "writes.log")
    durations = []
    for i, command in enumerate(pipeline.commands):  # how long each command runs, for the timed kills
        start_at(pipeline, i)
        t = time.monotonic()
        run(command)
        durations.append(round(time.monotonic() - t, 1))
    reference = fingerprint(root)
    print(f"job: {len(calls)} writes over {len(pipeline.commands)} commands; command times {durations} s")

    rng = random.Random(args.seed)
    done, failures, deadline = 0, [], started + 60 * args.minutes
    while done < args.trials and time.monotonic() < deadline:
        kind = rng.choice(["write", "write", "time", "sigint"])
        try:
            if kind == "write":
                trial = kill_at_write(
                    pipeline, calls, rng.randrange(1, len(calls) + 1), rng.choice(["before", "after"]), reference
                )
            elif kind == "time":
                command = rng.randrange(len(pipeline.commands))
                delay = rng.uniform(0.5, durations[command])
                trial = stop_at_time(pipeline, command, delay, signal.SIGKILL, reference)
            else:
                command = rng.randrange(len(pipeline.commands))
                delay = rng.uniform(0.5, durations[command])
                trial = stop_at_time(pipeline, command, delay, signal.SIGINT, reference)
            print(f"  ok   {trial.description}: {trial.files_checked} files loaded, job finished identical", flush=True)
        except AssertionError as e:
            failures.append(str(e)[:500])
            print(f"  FAIL {kind}: {str(e)[:500]}", flush=True)
        done += 1
    minutes = (time.monotonic() - started) / 60
    print(
        f"{done} trials in {minutes:.1f} min (seed {args.seed}): {done - len(failures)} passed, {len(failures)} failed"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
