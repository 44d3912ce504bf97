"""Fault injection on a whole job (train a tiny model's SAE, evaluate it, build its feature database): killed at
seeded random writes (SIGKILL just before or just after a rename) or stopped with Ctrl-C at a random moment, every
file left loads, the next command finishes the job, and everything equals an uninterrupted run bit for bit.

A few trials here; `python bench/fault_injection.py --trials N` runs many (see there)."""

from __future__ import annotations

import random
import signal
import time
from types import SimpleNamespace

import pytest
from faults import (
    count_writes,
    fingerprint,
    kill_at_write,
    make_pipeline,
    random_trials,
    stop_at_time,
    write_corpus,
)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_bert_dir):
    """The pipeline, its writes as counted in an uninterrupted run, its duration and its fingerprint."""
    base = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(base / "corpus.txt")
    root = base / "job"
    root.mkdir()
    pipeline = make_pipeline(root, tiny_bert_dir, corpus)
    start = time.monotonic()
    calls = count_writes(pipeline, base / "writes.log")
    elapsed = time.monotonic() - start
    return SimpleNamespace(root=root, pipeline=pipeline, calls=calls, reference=fingerprint(root), elapsed=elapsed)


def test_the_job_writes_every_kind_of_file(job):
    kinds = {line.split()[-1].split(".")[0] for _, line in job.calls if not line.startswith("fsync")}
    assert {"checkpoint", "sae", "training", "config", "eval", "features", "shard_00000", "manifest"} <= kinds, kinds
    assert {"exported", "imported"} <= kinds, kinds  # the folders export and import rename into place
    assert "run/sae.safetensors" in job.reference and "run/features.sqlite" in job.reference
    assert "imported/sae.safetensors" in job.reference


@pytest.mark.parametrize("trial", range(1))
def test_sigkill_at_a_random_write(job, trial):
    (n, when) = random_trials(random.Random(1000 + trial), job.calls, 1)[0]
    kill_at_write(job.pipeline, job.calls, n, when, job.reference)


def test_sigkill_before_the_first_checkpoint(job):
    """Killed right after config.json was written: the same command used to refuse ("already holds a run") and so
    did --resume ("nothing to resume")."""
    n = next(i for i, (c, line) in enumerate(job.calls, 1) if c == 0 and line.endswith("config.json"))
    kill_at_write(job.pipeline, job.calls, n, "after", job.reference)


def test_ctrl_c_at_a_random_moment_of_training(job):
    delay = random.Random(7).uniform(3.0, 3.0 + job.elapsed / 3)
    stop_at_time(job.pipeline, 0, delay, signal.SIGINT, job.reference)
