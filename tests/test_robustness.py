"""Defects found by trying sparsecode as a hostile user would, each pinned by a test that failed before its fix:
complex arrays, oversized shuffle buffers, interrupted final saves, leftover temporaries, file modes, corpora too
small to evaluate, ill-defined fidelity ratios and norm ratios, the dashboard's headers, Host check and HEAD."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparsecode.cli import main
from sparsecode.errors import DataError
from sparsecode.io import atomic_write, write_json
from sparsecode.run import RunConfig, load_run
from sparsecode.sae import TopKConfig
from sparsecode.sources import ArraySourceConfig, SyntheticSourceConfig, open_source
from sparsecode.train import TrainConfig, Trainer


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def same_file_contents(path) -> tuple:
    """A safetensors file's tensors (exact bytes) and metadata: its header's key order is not deterministic."""
    from sparsecode.io import load_tensors, read_metadata

    tensors = load_tensors(path)
    return sorted((k, v.numpy().tobytes()) for k, v in tensors.items()), read_metadata(path)


def toy_args(out, *extra: str) -> list[str]:
    return [
        "train",
        "--synthetic",
        "features=32,dim=8,active=2",
        "--k",
        "2",
        "--latents",
        "32",
        "--tokens",
        "2048",
        "--batch-size",
        "256",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


# -- array files ---------------------------------------------------------------------------------------
def test_complex_arrays_are_refused(tmp_path, capsys):
    """Before: the imaginary part was dropped with only a NumPy warning, and training went on."""
    z = (np.random.default_rng(0).normal(size=(64, 4)) * (1 + 1j)).astype(np.complex64)
    np.save(tmp_path / "z.npy", z)
    from safetensors.torch import save_file

    save_file({"acts": torch.from_numpy(z)}, str(tmp_path / "z.safetensors"))
    for name in ("z.npy", "z.safetensors"):
        with pytest.raises(DataError, match="complex"):
            open_source(ArraySourceConfig(path=str(tmp_path / name)))
        out = tmp_path / f"run-{name}"
        assert main(["train", "--activations", str(tmp_path / name), "--out", str(out), "--quiet"]) == 2
        one_error_line(capsys, "complex", name)
        assert not out.exists()


def test_shuffle_buffer_is_sized_from_the_data(tmp_path):
    """A 40-row, 50,000-wide array: the default 131,072-row buffer asked for 26 GB and ended in "internal error"."""
    from sparsecode.activations import ActivationStore
    from sparsecode.activations.store import MAX_BUFFER_BYTES

    wide = np.random.default_rng(0).normal(size=(40, 50_000)).astype(np.float32)
    np.save(tmp_path / "wide.npy", wide)
    source = open_source(ArraySourceConfig(path=str(tmp_path / "wide.npy")))
    # one pass over the 38 training rows, in whole batches
    assert ActivationStore(source, batch_size=4096, buffer_rows=TrainConfig().buffer_rows).buffer_rows == 4096
    assert ActivationStore(source, batch_size=8, buffer_rows=TrainConfig().buffer_rows).buffer_rows == 40
    # many wide rows: at most MAX_BUFFER_BYTES, unless a batch alone is larger (then one batch)
    many = open_source(SyntheticSourceConfig(n_features=16, dim=50_000, active=2))  # unbounded stream
    store = ActivationStore(many, batch_size=1024, buffer_rows=TrainConfig().buffer_rows)
    assert 0 < store.buffer_rows * 50_000 * 4 <= MAX_BUFFER_BYTES and store.buffer_rows % 1024 == 0
    assert ActivationStore(many, batch_size=8192, buffer_rows=131072).buffer_rows == 8192
    # narrow, unbounded data keeps the configured buffer
    narrow = open_source(SyntheticSourceConfig(n_features=16, dim=8, active=2))
    assert ActivationStore(narrow, batch_size=4096, buffer_rows=131072).buffer_rows == 131072

    out = tmp_path / "run"
    args = ["--activations", str(tmp_path / "wide.npy"), "--latents", "8", "--k", "2", "--batch-size", "8"]
    assert main(["train", *args, "--tokens", "32", "--out", str(out), "--quiet"]) == 0
    assert load_run(out).sae.cfg.d_in == 50_000


# -- interrupted final save ------------------------------------------------------------------------------
def test_resume_finishes_a_run_stopped_during_the_final_save(tmp_path, capsys):
    """A kill between writing sae.safetensors and training.png: --resume used to refuse ("already finished")."""
    out = tmp_path / "toy"
    assert main(toy_args(out)) == 0
    sae_before = same_file_contents(out / "sae.safetensors")
    (out / "training.png").unlink()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert (out / "training.png").is_file() and same_file_contents(out / "sae.safetensors") == sae_before
    # killed before the SAE was written, too
    (out / "training.png").unlink()
    (out / "sae.safetensors").unlink()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert same_file_contents(out / "sae.safetensors") == sae_before
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2  # finished for real: says so
    one_error_line(capsys, "already finished", "--tokens")


def test_ctrl_c_during_the_final_save_waits_for_it(tmp_path, monkeypatch):
    """Ctrl-C while the plot was written raised inside matplotlib's import ("internal error: ImportError") and left
    the run without training.png; now the final save finishes first."""
    import sparsecode.train.trainer as trainer_module

    real_plot = trainer_module.plot_training_curves

    def plot_after_ctrl_c(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real_plot(*a, **kw)

    monkeypatch.setattr(trainer_module, "plot_training_curves", plot_after_ctrl_c)
    src = SyntheticSourceConfig(n_features=32, dim=8, active=2)
    config = RunConfig(src, TopKConfig(d_in=8, n_latents=32, k=2), TrainConfig(tokens=1024, batch_size=256))
    Trainer(config, tmp_path / "run", open_source(src), progress=False).fit()
    assert (tmp_path / "run" / "training.png").is_file()
    load_run(tmp_path / "run")


# -- files ---------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_writers_are_swept(tmp_path):
    """A writer killed mid-write (SIGKILL: no cleanup runs) left its temporary in the run folder for ever."""
    from sparsecode.io import sweep_temporaries, temp_prefix

    code = (
        "import sys, time; from sparsecode.io import atomic_write\n"
        "def slow(p):\n    p.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a.json")], stdout=subprocess.PIPE, env=env)
    assert writer.stdout.readline() == b"writing\n"
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".a.json.")]
    assert len(left) == 1
    sweep_temporaries(tmp_path)  # the writer still runs: its temporary is live and stays
    assert left[0].exists()
    writer.kill()
    writer.wait()
    live = tmp_path / f"{temp_prefix('b.json')}keep.tmp"  # this process's own: never swept
    live.write_text("")
    stale_dir = tmp_path / f".train.partial.pid{_dead_pid()}.x"  # an activation-cache pass cut short
    stale_dir.mkdir()
    write_json(tmp_path / "c.json", {"ok": 1})  # the next write into the folder sweeps
    assert not left[0].exists() and not stale_dir.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.json", live.name])


def test_run_files_respect_the_umask(tmp_path):
    """Every file was written 0600 (mkstemp's mode) whatever the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "a.json", {})
    atomic_write(tmp_path / "b.bin", lambda p: p.write_bytes(b"1"))
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


# -- corpora ---------------------------------------------------------------------------------------------
def test_a_corpus_too_small_to_evaluate_is_refused_at_train_time(tmp_path, tiny_bert_dir, capsys):
    """A 9-token corpus trained "successfully" and `eval` then failed on the empty eval split."""
    (tmp_path / "tiny.txt").write_text("one two three four five six seven eight nine\n")
    out = tmp_path / "run"
    args = ["--model", str(tiny_bert_dir), "--hook", "encoder.layer.1", "--corpus", str(tmp_path / "tiny.txt")]
    assert (
        main(["train", *args, "--tokens", "64", "--batch-size", "8", "--out", str(out), "--no-cache", "--quiet"]) == 2
    )
    one_error_line(capsys, "eval split", "at least 20 documents")
    assert not out.exists()


# -- eval metrics ----------------------------------------------------------------------------------------
def test_loss_recovered_is_undefined_or_flagged_when_meaningless():
    """1.019 was printed for a random model whose ablation barely changes the loss, with no warning."""
    from sparsecode.eval.report import format_report
    from sparsecode.eval.splice import loss_recovered

    assert loss_recovered(7.0, 6.0, 5.0, "zero_ablation") == (0.5, None)
    value, warning = loss_recovered(5.03, 4.99, 5.0, "zero_ablation")  # ablation 0.03 nats above clean
    assert value is None and "undefined" in warning
    value, warning = loss_recovered(7.0, 4.9, 5.0, "mean_ablation")  # spliced beats clean
    assert value == pytest.approx(1.05) and "outside [0, 1]" in warning
    text = format_report({"ce_spliced": 4.9, "ce_clean": 5.0, "warnings": [warning]})
    assert "warning: loss recovered vs mean-ablation is 1.050" in text


def test_norm_ratio_and_cosine_are_defined_on_zero_rows():
    """Zero-norm rows made the per-row ratio ‖x̂‖/‖x‖ explode: l2_ratio was 1.4e9 on synthetic data."""
    from sparsecode.eval.metrics import ReconstructionStats

    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])  # (3, 2), row 1 of norm 0
    x_hat = torch.tensor([[6.0, 8.0], [0.5, 0.0], [0.0, 0.0]])  # ratios 2, (undefined), 0
    stats = ReconstructionStats(n_latents=4)
    stats.update(x, torch.zeros(3, 4), x_hat)
    r = stats.result()
    assert r["l2_ratio"] == pytest.approx(1.0) and r["cosine"] == pytest.approx(0.5) and r["zero_rows"] == 1
    zeros = ReconstructionStats(n_latents=4)
    zeros.update(torch.zeros(2, 2), torch.zeros(2, 4), torch.ones(2, 2))
    r = zeros.result()
    assert r["l2_ratio"] is None and r["cosine"] is None and r["fvu"] is None and r["zero_rows"] == 2
    json.dumps(r, allow_nan=False)  # eval.json stays valid JSON


# -- dashboard -------------------------------------------------------------------------------------------
def test_dashboard_security_headers_and_head(planted_features):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app

    with TestClient(create_app(planted_features)) as c:
        for url in ("/features", "/features.json", "/features/0", "/meta.json", "/static/style.css", "/nope"):
            r = c.get(url)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], url
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
            head = c.head(url)
            assert head.status_code == r.status_code and head.content == b"", url
            assert head.headers.get("content-type") == r.headers.get("content-type"), url


def test_dashboard_refuses_foreign_host_headers(planted_features):
    """DNS rebinding: a page at evil.example re-pointed to 127.0.0.1 sends Host: evil.example."""
    import http.client
    from urllib.parse import urlsplit

    from sparsecode.dashboard.guard import loopback_hosts
    from sparsecode.dashboard.server import background_server

    assert loopback_hosts("0.0.0.0") is None and "localhost" in loopback_hosts("127.0.0.1")
    with background_server(planted_features) as base:
        port = urlsplit(base).port

        def status(host: str) -> int:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            con.putrequest("GET", "/meta.json", skip_host=True)
            con.putheader("Host", host)
            con.endheaders()
            r = con.getresponse()
            r.read()
            con.close()
            return r.status

        for good in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert status(good) == 200, good
        for bad in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "", "[::2]:80"):
            assert status(bad) == 400, bad


# -- the command line ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tokens", "2Q"], "--tokens"),
        (["--batch-size", "0"], "batch_size"),
        (["--dtype", "float8"], "dtype"),
        (["--latents", "-3"], "--latents"),
        (["--nproc", "x"], "--nproc"),
        (["--bogus"], "--bogus"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path, capsys, args, needle):
    """argparse's own mistakes printed a 16-line usage block."""
    out = tmp_path / "run"
    assert main(["train", "--synthetic", "features=8,dim=4", "--out", str(out), *args]) == 2
    one_error_line(capsys, needle)
    assert not out.exists()


def test_no_command_and_unknown_command_are_one_line(capsys):
    assert main([]) == 2
    one_error_line(capsys, "COMMAND", "--help")
    assert main(["trian"]) == 2
    one_error_line(capsys, "trian")
    assert main(["eval"]) == 2
    one_error_line(capsys, "RUN")


def test_eval_of_a_missing_folder_fails_before_importing_torch(tmp_path):
    """It took seconds: torch was imported before the argument was looked at."""
    code = (
        "import sys; from sparsecode.cli import main\n"
        "rc = main(sys.argv[1:]); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for command in ("eval", "features"):
        r = subprocess.run(
            [sys.executable, "-c", code, command, str(tmp_path / "nope")],
            check=False,
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 2 and r.stderr.strip() == f"error: run folder {tmp_path / 'nope'} not found", r.stderr


def test_resume_extends_a_finished_run_to_more_tokens(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(toy_args(out)) == 0
    before = same_file_contents(out / "sae.safetensors")
    assert main(["train", "--resume", "--tokens", "4096", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["tokens"] == 4096
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 16 and steps == sorted(set(steps))
    assert same_file_contents(out / "sae.safetensors") != before and (out / "training.png").is_file()
    capsys.readouterr()
    assert main(["train", "--resume", "--tokens", "1024", "--out", str(out), "--quiet"]) == 2
    one_error_line(capsys, "extended, not shortened")


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path, capsys):
    """Only config.json was written: the same command refused ("already holds a run") and so did --resume
    ("nothing to resume"). Both now start it again, to the same result as an uninterrupted run."""
    reference = tmp_path / "reference"
    assert main(toy_args(reference)) == 0
    for again in (toy_args(tmp_path / "again"), ["train", "--resume", "--out", str(tmp_path / "again"), "--quiet"]):
        out = tmp_path / "again"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        shutil.copy(reference / "config.json", out / "config.json")  # what a kill before the checkpoint leaves
        assert main(again) == 0, capsys.readouterr().err
        assert same_file_contents(out / "sae.safetensors") == same_file_contents(reference / "sae.safetensors")
    capsys.readouterr()
    assert main(toy_args(reference)) == 2  # a run with progress is still protected
    one_error_line(capsys, "already holds a run")


def test_interop_folders_of_killed_writers_are_swept(tmp_path):
    """export/import write a folder beside --out and rename it; a kill left `.OUT.RANDOM` there for ever."""
    from sparsecode.interop.runs import write_atomically

    stale = tmp_path / f".exported.pid{_dead_pid()}.abc"  # an export cut short
    stale.mkdir()
    (stale / "cfg.json").write_text("{")
    mask = os.umask(0o022)
    os.umask(mask)
    write_atomically(tmp_path / "exported", lambda tmp: (tmp / "a.txt").write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == 0o777 & ~mask


def test_ctrl_c_while_the_command_line_is_parsed_is_an_interruption(monkeypatch, capsys):
    """Building the parser imports torch (seconds on a busy machine); Ctrl-C there printed a traceback."""
    from sparsecode import cli

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["train", "--synthetic", "features=8,dim=4", "--out", "x"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_ctrl_c_while_modules_load_waits_for_them(monkeypatch, capsys):
    """Ctrl-C inside torch's or numpy's import left them half-loaded: "internal error: ImportError: cannot load module
    more than once per process". Now it is noted while the parser (and torch) load, then acted on."""
    from sparsecode import cli

    real = cli.build_parser

    def ctrl_c_while_building(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(cli, "build_parser", ctrl_c_while_building)
    assert main(["eval", "nowhere"]) == 130  # the command itself never ran (it would say "not found", exit 2)
    assert capsys.readouterr().err.strip() == "error: interrupted"
