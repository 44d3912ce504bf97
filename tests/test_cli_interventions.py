"""`sparsecode steer / ablate / attribute` on tiny models: output and files on good input; one `error:` line and
exit status 2 on each bad input the issue lists."""

from __future__ import annotations

import json

import pytest
from lm_runs import write_run

from sparsecode.cli import main
from sparsecode.run import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_gpt2_dir, tiny_bert_dir):
    root = tmp_path_factory.mktemp("cli-int")
    return {
        "l0": write_run(root / "l0", tiny_gpt2_dir, hook="transformer.h.0"),
        "l1": write_run(root / "l1", tiny_gpt2_dir, hook="transformer.h.1", seed=2),
        "enc": write_run(root / "enc", tiny_bert_dir, hook="encoder.layer.0"),
    }


def _error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


def test_steer_ablate_attribute_commands(runs, capsys, tmp_path):
    l0, l1 = str(runs["l0"]), str(runs["l1"])
    live = str(int(load_run(l0).encode_text("Line 3 says the cat sat on mat")[0].latents.sum(0).argmax()))
    assert main(["steer", l0, "--feature", live, "--strength", "3", "--prompt", "the cat", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "baseline:" in out and "steered:" in out and "typical activation" in out
    assert main(["ablate", l0, "--features", "0,1", "--max-tokens", "100", "--quiet"]) == 0
    assert "dCE active" in capsys.readouterr().out
    saved = json.loads((runs["l0"] / "ablation.json").read_text())
    assert [r["feature"] for r in saved["features"]] == [0, 1]
    out_dir = tmp_path / "graph"
    argv = ["attribute", l0, l1, "--prompt", "the cat sat on the", "--target", "mat", "--out", str(out_dir)]
    assert main(argv) == 0
    assert "strongest edges" in capsys.readouterr().out
    graph = json.loads((out_dir / "attribution.json").read_text())
    assert graph["sites"] == ["transformer.h.0", "transformer.h.1"] and graph["edges"] and graph["nodes"]
    assert (out_dir / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    live = str(int(load_run(runs["enc"]).encode_text("Line 3 says the cat sat on mat")[0].latents.sum(0).argmax()))
    assert main(["steer", str(runs["enc"]), "--feature", live, "--prompt", "a cat on a mat"]) == 0
    assert "sentence embedding" in capsys.readouterr().out


def test_bad_input_gets_one_line(runs, capsys, tmp_path):
    l0, enc = str(runs["l0"]), str(runs["enc"])
    _error(capsys, ["steer", l0, "--feature", "24", "--prompt", "hi"], "feature 24 is out of range", "0-23")
    _error(capsys, ["ablate", l0, "--features", "3,99"], "feature 99 is out of range")
    _error(capsys, ["steer", l0, "--feature", "0", "--prompt", "  "], "prompt is empty")
    _error(capsys, ["attribute", l0, "--prompt", "", "--target", "mat"], "prompt is empty")
    _error(capsys, ["attribute", l0, "--prompt", "the cat", "--target", " sat on"], "is 2 tokens", "not one")
    _error(capsys, ["steer", enc, "--feature", "0", "--prompt", "hi", "--output", "text"], "cannot generate text")
    _error(capsys, ["attribute", l0, enc, "--prompt", "the cat", "--target", "mat"], "runs from different models")
    assert not (tmp_path / "attribution").exists() and not (runs["l0"] / "attribution").exists()
