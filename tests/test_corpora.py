"""Corpora through Hugging Face datasets, streamed paragraphs, the tokenized-corpus folder, the default corpus."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sparsecode.cli import main
from sparsecode.errors import DataError
from sparsecode.sources import ModelSource, ModelSourceConfig, load_documents, split_documents, text, tokens
from sparsecode.sources.hf import chunk_documents
from sparsecode.train.trainer import epochs_note

DOCS = [f"Record {i} says that the {['red', 'green', 'blue'][i % 3]} fox ran {i * 7} metres." for i in range(45)]


def _cfg(model_dir, corpus, **kw) -> ModelSourceConfig:
    return ModelSourceConfig(model=str(model_dir), hook="encoder.layer.0", corpus=[str(corpus)], **kw)


@pytest.fixture
def table() -> pa.Table:
    """The records with the text in column "body", an id column and an empty record that is skipped."""
    return pa.table({"id": list(range(46)), "body": DOCS[:20] + ["   "] + DOCS[20:]})


def test_columnar_files_give_the_same_documents(tmp_path, table):
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)  # several row groups: read batch by batch
    table.to_pandas().to_json(tmp_path / "c.json", orient="records", lines=True)
    table.to_pandas().to_csv(tmp_path / "c.csv", index=False)
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name in ("c.parquet", "c.json", "c.csv", "c.arrow"):
        assert load_documents([str(tmp_path / name)], text_column="body") == DOCS, name
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d, "n": 1}) + "\n" for d in DOCS))
    assert load_documents([str(tmp_path / "c.jsonl")], text_column="body") == DOCS


def test_bad_columns_and_textless_datasets_are_one_line(tmp_path, table, capsys):
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(
        DataError, match=r"no text column 'text' \(columns: 'id', 'body'\); pick one with --text-column"
    ):
        load_documents([str(tmp_path / "c.parquet")])
    with pytest.raises(DataError, match=r"column 'id' holds int, not text"):
        load_documents([str(tmp_path / "c.parquet")], text_column="id")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "hello there"}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:1: no text column 'text' \(columns: 'body'\)"):
        load_documents([str(tmp_path / "c.jsonl")])
    pq.write_table(pa.table({"text": ["", "  ", None]}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no documents found in corpus"):
        load_documents([str(tmp_path / "empty.parquet")])
    with pytest.raises(DataError, match="hub is offline"):
        load_documents(["someone/some-dataset"])
    for corpus, column in ((tmp_path / "c.parquet", "title"), (tmp_path / "empty.parquet", "text")):
        out = tmp_path / "run"
        code = main(
            ["train", "--hook", "encoder.layer.0", "--corpus", str(corpus), "--text-column", column, "--out", str(out)]
        )
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and not out.exists(), err


def test_streamed_paragraphs_match_the_whole_file_split(tmp_path):
    text_ = "a\n\n\nb  \n \t\ncc\r\n\r\ndd\nee\n\x0c\n\n  last para  \n  "
    path = tmp_path / "p.txt"
    path.write_bytes(text_.encode())
    assert (
        load_documents([str(path)])
        == text.split_paragraphs(path.read_text())
        == ["a", "b", "cc", "dd\nee", "last para"]
    )


def test_parquet_source_equals_jsonl_source_and_reuses_its_tokens(tiny_bert_dir, tmp_path, table, monkeypatch):
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=10)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    from_parquet = ModelSource(_cfg(tiny_bert_dir, tmp_path / "c.parquet", text_column="body", max_length=12))
    from_jsonl = ModelSource(_cfg(tiny_bert_dir, tmp_path / "c.jsonl", max_length=12))
    for split in ("train", "eval"):
        expected = chunk_documents(from_jsonl.tokenizer, split_documents(DOCS, split), 12)
        assert list(from_parquet.chunks(split)) == list(from_jsonl.chunks(split)) == expected
        assert from_parquet.num_rows(split) == sum(len(c) - 2 for c in expected)  # [CLS] and [SEP] are not rows
    assert from_parquet.fingerprint()["documents_sha256"] == from_jsonl.fingerprint()["documents_sha256"]
    assert from_parquet.config.to_dict()["text_column"] == "body" and "text_column" not in from_jsonl.config.to_dict()
    # a second source over the same corpus reads the tokenized folder instead of the documents
    monkeypatch.setattr("sparsecode.sources.hf.iter_documents", lambda *a: (pytest.fail("re-read") for _ in [0]))
    again = ModelSource(_cfg(tiny_bert_dir, tmp_path / "c.parquet", text_column="body", max_length=12))
    assert list(again.chunks("train")) == list(from_parquet.chunks("train"))
    assert torch.equal(
        next(again.iter_batches("train", start_row=5)).acts, next(from_parquet.iter_batches("train", 5)).acts
    )


def test_chunks_view_slices_and_threads(tiny_bert_dir, tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    chunks = ModelSource(_cfg(tiny_bert_dir, tmp_path / "c.jsonl", max_length=8)).chunks("train")
    whole = list(chunks)
    assert len(whole) > 40 and list(chunks[3:9]) == whole[3:9] and chunks[-1] == whole[-1]
    assert [len(c) for c in whole] == chunks.lengths.tolist()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(chunks.__getitem__, range(len(chunks)))) == whole


def test_interrupted_tokenizing_leaves_nothing(tmp_path):
    def documents():
        yield "one document"
        raise DataError("broken corpus")

    with pytest.raises(DataError, match="broken corpus"):
        tokens.open_tokenized({"x": 1}, documents(), lambda docs: [[[1, 2]] for _ in docs], set(), 20, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_corpus_is_large_and_distinct(tiny_bert_dir):
    """The embedded default corpus: >= 2M tokens of distinct documents (MiniLM's tokenizer), prose and verse."""
    src = ModelSource(ModelSourceConfig(model=str(tiny_bert_dir), hook="encoder.layer.0"))
    n_docs = src.tokenized.n_documents
    assert n_docs == len(set(load_documents(None))) > 10_000
    assert src.num_rows("train") + src.num_rows("eval") > 2_000_000
    assert src.num_rows("eval") > 90_000  # every 20th document


def test_epochs_note():
    assert epochs_note(None, 1000) is None
    assert epochs_note(2_000_000, 3_000_000) == (
        "training on 3,000,000 tokens: 1.50 epochs of the train split (2,000,000 tokens)"
    )
    note = epochs_note(100_000, 2_000_000)
    assert (
        note.startswith("training on 2,000,000 tokens: 20.00 epochs") and "repeats the training data 20.0 times" in note
    )
    assert "warning" not in epochs_note(100_000, 400_000)


def test_eval_on_another_corpus(tiny_bert_dir, tmp_path, capsys):
    """`eval --corpus` scores the run's SAE on another corpus's eval split, into files named after it."""
    (tmp_path / "own.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    other = [f"Entirely different words: chapter {i} of a manual on ovens, {i} degrees." for i in range(40)]
    pq.write_table(pa.table({"body": other}), tmp_path / "other.parquet")
    run = tmp_path / "run"
    args = ["--hook", "encoder.layer.0", "--model", str(tiny_bert_dir), "--corpus", str(tmp_path / "own.jsonl")]
    assert (
        main(
            [
                "train",
                *args,
                "--latents",
                "64",
                "--k",
                "4",
                "--tokens",
                "2k",
                "--batch-size",
                "256",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    assert "epochs of the train split" in capsys.readouterr().err
    base = ["eval", str(run), "--quick", "--splice-chunks", "1", "--quiet"]
    assert main(base) == 0
    assert main([*base, "--corpus", str(tmp_path / "other.parquet"), "--text-column", "body"]) == 0
    own, theirs = json.loads((run / "eval.json").read_text()), json.loads((run / "eval-other.json").read_text())
    assert "corpus" not in own and theirs["corpus"] == [str(tmp_path / "other.parquet")]
    assert (run / "report-other.html").exists() and (run / "density-other.png").exists()
    expected_rows = ModelSource(_cfg(tiny_bert_dir, tmp_path / "other.parquet", text_column="body")).num_rows("eval")
    assert theirs["n_rows"] == expected_rows != own["n_rows"] and theirs["fvu"] != own["fvu"]
    assert "of corpus" in capsys.readouterr().out
    assert main([*base, "--corpus", str(tmp_path / "other.parquet")]) == 2  # no column "text" there
    assert "no text column 'text'" in capsys.readouterr().err


# --------------------------------------------------------------------------- trackers


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


TINY = ["--synthetic", "features=32,dim=8,active=2", "--latents", "32", "--k", "2", "--tokens", "5120"]
TINY += ["--batch-size", "256", "--log-every", "4", "--quiet"]


def test_tensorboard_gets_the_metrics_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *TINY, "--log", "tensorboard", "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = _metrics(run)
    assert [e.step for e in events.Scalars("train/fvu")] == [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    for name in ("fvu", "l0", "lr", "loss"):
        assert [e.value for e in events.Scalars(f"train/{name}")] == pytest.approx([r[name] for r in rows], rel=1e-6)


def _wandb_records(path):
    """The protobuf records of a .wandb file (LevelDB-style log: 7-byte header, 32 KiB blocks of records)."""
    data, pos, buf = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            yield buf
            buf = b""


def test_wandb_offline_gets_the_metrics_rows_and_resume_continues_its_run(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--log", "wandb", "--out", str(run), "--checkpoint-every", "8"]) == 0
    run_id = (run / "wandb-id").read_text().strip()
    (log,) = run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    history = []
    for raw in _wandb_records(log):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    rows = _metrics(run)
    assert [h["_step"] for h in history] == [r["step"] for r in rows]
    assert [h["fvu"] for h in history] == pytest.approx([r["fvu"] for r in rows], rel=1e-9)
    assert main(["train", "--resume", "--tokens", "6144", "--out", str(run), "--quiet"]) == 0
    assert (run / "wandb-id").read_text().strip() == run_id  # the same wandb run goes on
