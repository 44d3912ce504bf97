"""Property-based tests (hypothesis) of every reader of user data: array files (.npy, .safetensors, Parquet: dtypes,
shapes, NaN/inf, huge headers, truncation), config JSON, corpus files and the numbers on the command line. Whatever
the input, the answer is either a clean result or exactly one `error:` line with exit status 2 and nothing written.

The CLI runs in-process (``main([...])`` with capsys). Inputs that are valid get their clean result checked at the
reader (the rows read equal the array written); the command line is run on every input the reader refuses and on
the numbers, where a command that gets as far as training is stopped there (``fit`` is replaced by one that raises
KeyboardInterrupt, which the CLI reports as an interruption, exit 130), so no example trains for long.
"""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsecode.cli import main
from sparsecode.errors import SparsecodeError
from sparsecode.sources import ArraySourceConfig, open_source

FUZZ = settings(
    max_examples=int(os.environ.get("SPARSECODE_FUZZ_EXAMPLES", "8")),  # `make fuzz` runs 200 of each
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DTYPES = st.sampled_from(
    ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool", "complex64", "<U3", "datetime64[s]"]
)


def check_cli_refuses(capsys, tmp_path, args: list[str]) -> str:
    """The CLI on ``args`` (+ --out): one `error:` line, exit 2, no run folder."""
    out = tmp_path / "out-run"
    capsys.readouterr()
    code = main([*args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert not out.exists()
    return lines[0]


def read_all(path, **kw) -> torch.Tensor:
    source = open_source(ArraySourceConfig(path=str(path), **kw))
    source.validate()
    return torch.cat([b.acts for split in ("train", "eval") for b in source.iter_batches(split)])


def check_array_file(tmp_path, capsys, path, expected: np.ndarray | None, **kw) -> None:
    """Either the reader returns exactly ``expected`` (as float32), or it refuses and so does the CLI."""
    try:
        rows = read_all(path, **kw)
    except SparsecodeError:
        args = ["train", "--activations", str(path)] + (["--key", kw["key"]] if kw.get("key") else [])
        check_cli_refuses(capsys, tmp_path, args)
        return
    assert expected is not None, "a damaged file was read without an error"
    assert rows.dtype == torch.float32 and torch.isfinite(rows).all()
    np.testing.assert_array_equal(rows.numpy(), expected.astype(np.float32))


arrays = st.tuples(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)).flatmap(
    lambda ds: hnp.arrays(np.dtype(ds[0]), ds[1])
)


def expected_rows(a: np.ndarray) -> np.ndarray | None:
    """What reading ``a`` must give, or None if it must be refused."""
    numeric = np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_
    if a.ndim != 2 or 0 in a.shape or not numeric or np.issubdtype(a.dtype, np.complexfloating) or a.shape[0] < 2:
        return None
    f = a.astype(np.float32)
    return f if np.isfinite(f).all() else None


@FUZZ
@given(a=arrays, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_npy_files(tmp_path, capsys, a, cut):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    data = buf.getvalue()
    path = tmp_path / "a.npy"
    path.write_bytes(data if cut is None else data[: min(cut, len(data) - 1)])
    check_array_file(tmp_path, capsys, path, expected_rows(a) if cut is None else None)


@FUZZ
@given(header_len=st.sampled_from([2**31, 2**40, 2**63 - 1, 0, 7]), body=st.binary(max_size=64))
def test_npy_with_huge_or_bogus_headers(tmp_path, capsys, header_len, body):
    """A header length claiming gigabytes (or nonsense) must not be allocated or trusted."""
    path = tmp_path / "h.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", header_len % 2**32) + body)
    check_array_file(tmp_path, capsys, path, None)


ST_DTYPES = st.sampled_from(
    ["float16", "bfloat16", "float32", "float64", "int8", "int64", "uint8", "bool", "complex64"]
)


@FUZZ
@given(
    dtype=ST_DTYPES,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
    special=st.sampled_from([None, float("nan"), float("inf"), -float("inf")]),
    cut=st.one_of(st.none(), st.integers(0, 300)),
)
def test_safetensors_files(tmp_path, capsys, dtype, shape, special, cut):
    from safetensors.torch import save

    t = torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape).to(getattr(torch, dtype))
    if special is not None and t.numel() and t.is_floating_point():
        t.view(-1)[0] = special
    data = save({"acts": t})
    path = tmp_path / "a.safetensors"
    path.write_bytes(data if cut is None else data[: min(cut, len(data) - 1)])
    expected = None
    if cut is None and t.ndim == 2 and t.shape[0] >= 2 and t.shape[1] >= 1 and not t.is_complex():
        f = t.to(torch.float32).numpy()
        expected = f if np.isfinite(f).all() else None
    check_array_file(tmp_path, capsys, path, expected)


@FUZZ
@given(header_len=st.sampled_from([2**40, 2**63, 10**6, 3]), header=st.binary(max_size=80))
def test_safetensors_with_huge_or_bogus_headers(tmp_path, capsys, header_len, header):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", header_len % 2**64) + header)
    check_array_file(tmp_path, capsys, path, None)


@FUZZ
@given(
    rows=st.lists(
        st.one_of(
            st.none(),
            st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
        ),
        min_size=0,
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_parquet_list_columns(tmp_path, capsys, rows, cut):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"acts": pa.array(rows, type=pa.list_(pa.float32()))}), str(path))
    if cut is not None:
        data = path.read_bytes()
        path.write_bytes(data[: min(cut, len(data) - 1)])
    expected = None
    widths = {len(r) for r in rows if r is not None}
    if cut is None and len(rows) >= 2 and None not in rows and len(widths) == 1 and widths != {0}:
        f = np.array(rows, dtype=np.float32)
        expected = f if np.isfinite(f).all() else None
    check_array_file(tmp_path, capsys, path, expected)


@FUZZ
@given(
    columns=st.lists(
        st.tuples(
            st.sampled_from(["int64", "float32", "float64", "string", "bool"]),
            st.lists(st.one_of(st.none(), st.floats(width=32), st.integers(-100, 100)), min_size=3, max_size=3),
        ),
        min_size=0,
        max_size=3,
    )
)
def test_parquet_scalar_columns(tmp_path, capsys, columns):
    """Numeric columns become the row's values; other columns are ignored; nulls and NaN/inf are refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, numeric = {}, []
    for i, (kind, values) in enumerate(columns):
        if kind == "string":
            table[f"c{i}"] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
            continue
        if kind == "bool":
            table[f"c{i}"] = pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())
            continue
        if kind == "int64":  # a non-finite float has no integer: a null instead
            vals = [None if v is None or not np.isfinite(v) else int(v) for v in values]
        else:
            vals = [None if v is None else float(v) for v in values]
        table[f"c{i}"] = pa.array(vals, type=getattr(pa, kind)())
        numeric.append(table[f"c{i}"].to_pylist())
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table(table) if table else pa.table({"s": pa.array([], type=pa.string())}), str(path))
    expected = None
    if numeric and all(v is not None for col in numeric for v in col):
        f = np.array(numeric, dtype=np.float32).T  # (3, n_numeric)
        expected = f if np.isfinite(f).all() else None
    check_array_file(tmp_path, capsys, path, expected)


# -- config JSON ------------------------------------------------------------------------------------------------
VALID_CONFIG = {
    "source": {"kind": "synthetic", "n_features": 16, "dim": 8, "active": 2},
    "sae": {"arch": "topk", "d_in": 8, "n_latents": 16, "k": 2},
    "train": {"tokens": 512, "batch_size": 256},
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


@FUZZ
@given(
    path=st.sampled_from(list(_paths(VALID_CONFIG))),
    value=json_values,
    garble=st.one_of(st.none(), st.integers(0, 200)),
)
def test_config_json(tmp_path, capsys, monkeypatch, path, value, garble):
    """A valid config with one field replaced by any JSON value, or its text cut short: refused in one line, or
    accepted (then the command gets as far as training, stopped there)."""
    config = json.loads(json.dumps(VALID_CONFIG))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = json.dumps(config)
    if garble is not None:
        text = text[: min(garble, len(text) - 1)]
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    stop_before_training(monkeypatch)
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", "--config", str(cfg), "--out", str(out), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code in (2, 130) and len(err) == 1, (code, err)
    if code == 2:
        assert err[0].startswith("error: ") and not out.exists(), err
    else:
        assert err == ["error: interrupted"]


def stop_before_training(monkeypatch) -> None:
    from sparsecode.train import Trainer

    def fit(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", fit)


# -- corpus files --------------------------------------------------------------------------------------------------
@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.lists(json_values, max_size=4).map(lambda vs: "\n".join(json.dumps(v) for v in vs).encode()),
        st.lists(st.text(max_size=20), max_size=4).map(
            lambda ts: "\n".join(json.dumps({"text": t}) for t in ts).encode()
        ),
    ),
    suffix=st.sampled_from([".txt", ".jsonl", ".csv"]),
)
def test_corpus_files(tmp_path, capsys, content, suffix):
    from sparsecode.sources.text import load_documents

    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(content)
    try:
        docs = load_documents([str(path)])
    except SparsecodeError:
        docs = None
    if docs is not None:
        assert docs and all(isinstance(d, str) and d == d.strip() and d for d in docs)
        return
    check_cli_refuses(capsys, tmp_path, ["train", "--hook", "encoder.layer.0", "--corpus", str(path)])


# -- numbers on the command line ---------------------------------------------------------------------------------
NUMBER_FLAGS = ["--tokens", "--batch-size", "--latents", "--k", "--lr", "--seed", "--checkpoint-every", "--dead-tokens"]
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["2M", "1e3", "0", "-1", "1.5", "nan", "inf", "1e999", "2Q", "", " ", "0x10", "٣", "1_000"]),
    st.text(alphabet="0123456789.eE-+kMG ", max_size=8),
)


@FUZZ
@given(flag=st.sampled_from(NUMBER_FLAGS), value=numbers)
def test_numbers_on_the_command_line(tmp_path, capsys, monkeypatch, flag, value):
    stop_before_training(monkeypatch)
    args = ["train", "--synthetic", "features=16,dim=8,active=2", "--tokens", "1024", "--batch-size", "256"]
    args += ["--latents", "16"] if flag != "--latents" else []
    out = tmp_path / "run"
    capsys.readouterr()
    code = main([*args, flag, value, "--out", str(out), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and code in (2, 130), (flag, value, code, err)
    if code == 2:
        assert err[0].startswith("error: ") and not out.exists(), err
