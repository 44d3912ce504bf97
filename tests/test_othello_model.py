"""The Othello GPT end to end at toy size: tokenizer, training, legal-move rate, probes, an SAE on it through the
ordinary model source, and eval's board section for the SAE latents and the MLP neurons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecode.cli import main
from sparsecode.errors import ConfigError
from sparsecode.worlds import othello
from sparsecode.worlds.othello_gpt import (
    SQUARE_OF_TOKEN,
    VOCAB,
    OthelloGPTConfig,
    legal_move_rate,
    make_tokenizer,
    probe_layers,
    train_othello_gpt,
)


def test_tokenizer_puts_bos_before_the_moves_and_maps_every_square():
    ids = make_tokenizer()("d3 c3 c4")["input_ids"]
    assert ids[0] == VOCAB["[BOS]"]
    assert [othello.SQUARES[SQUARE_OF_TOKEN[i]] for i in ids[1:]] == ["d3", "c3", "c4"]
    assert sorted(othello.SQUARES[s] for s in SQUARE_OF_TOKEN if s >= 0) == sorted(othello.PLAYABLE)


class _Oracle(torch.nn.Module):
    """Predicts, at every position, a legal move of the replayed game (or an illegal one, if ``wrong``)."""

    def __init__(self, games, wrong=False):
        super().__init__()
        from sparsecode.worlds.othello_gpt import legal_targets

        self.legal, self.wrong = legal_targets(games), wrong

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, len(VOCAB))
        token_of = {int(s): i for i, s in enumerate(SQUARE_OF_TOKEN) if s >= 0}
        for g in range(b):
            for p in range(t):
                squares = np.nonzero(~self.legal[g, p] if self.wrong else self.legal[g, p])[0]
                squares = [s for s in squares if s in token_of]
                if squares:
                    logits[g, p, token_of[squares[0]]] = 1.0
        return type("Out", (), {"logits": logits})()


def test_legal_move_rate_is_one_for_an_oracle_and_zero_for_an_anti_oracle():
    games = othello.random_games(6, seed=0)
    assert legal_move_rate(_Oracle(games), games) == pytest.approx(1.0)
    assert legal_move_rate(_Oracle(games, wrong=True), games) == pytest.approx(0.0)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        OthelloGPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="othello.steps"):
        OthelloGPTConfig(steps=-1)


@pytest.fixture(scope="module")
def tiny_othello(tmp_path_factory):
    out = tmp_path_factory.mktemp("othello") / "model"
    cfg = OthelloGPTConfig(n_layer=2, n_embd=32, n_head=2, steps=30, batch_games=16, lr=3e-3, eval_games=20)
    info = train_othello_gpt(cfg, out, progress=False, log_every=10)
    return out, info


def test_training_learns_something_and_is_reproducible_from_its_record(tiny_othello):
    out, info = tiny_othello
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    saved = json.loads((out / "othello.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["command"].startswith("sparsecode othello train")
    losses = [h["loss"] for h in info["history"]]
    assert losses[-1] < losses[0]  # next-move cross-entropy falls from the uniform-ish start
    assert 0.0 <= info["legal_move_top1"] <= 1.0
    probes = probe_layers(__import__("sparsecode.sources.hf", fromlist=["load_model"]).load_model(str(out))[0], 40)
    assert [p["layer"] for p in probes] == [0, 1, 2]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in probes)


@pytest.fixture(scope="module")
def othello_sae(tiny_othello, tmp_path_factory):
    out, _ = tiny_othello
    tmp = tmp_path_factory.mktemp("othello-sae")
    corpus = tmp / "games.txt"
    assert main(["othello", "games", "--games", "200", "--seed", "3", "--out", str(corpus)]) == 0
    assert len(corpus.read_text().split("\n\n")) == 200
    run = tmp / "run"
    args = ["train", "--model", str(out), "--hook", "transformer.h.1", "--corpus", str(corpus), "--max-length", "61"]
    args += ["--latents", "64", "--k", "4", "--tokens", "4096", "--batch-size", "512", "--quiet", "--no-cache"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def test_sae_on_the_othello_model_gets_a_board_section(othello_sae, capsys):
    run = othello_sae
    assert main(["eval", str(run), "--quick", "--quiet", "--splice-chunks", "2"]) == 0
    printed = capsys.readouterr().out
    assert "board reconstruction (Karvonen et al.): SAE F1" in printed and "MLP neurons F1" in printed
    board = json.loads((run / "eval.json").read_text())["board"]
    for key in ("sae", "neurons"):
        assert 0.0 <= board[key]["reconstruction_f1"] <= 1.0 and 0.0 <= board[key]["coverage"] <= 1.0
    assert board["neurons"]["alive_features"] <= 4 * 32
    assert "Board state (Othello)" in (run / "report.html").read_text()


def test_dashboard_shows_othello_contexts_as_the_boards_of_their_games(othello_sae):
    from fastapi.testclient import TestClient

    from sparsecode.dashboard import create_app
    from sparsecode.run import load_run
    from sparsecode.sources import open_source

    run = othello_sae
    assert main(["features", str(run), "--quiet", "--max-tokens", "1500", "--top", "3"]) == 0
    chunks = open_source(load_run(run).config.source).chunks("eval")
    with TestClient(create_app(run)) as client:
        fid = next(f["id"] for f in client.get("/features.json?filter=alive").json()["features"])
        feature = client.get(f"/features/{fid}.json").json()
        page = client.get(f"/features/{fid}").text
    corr = np.array(feature["board_correlation"])  # (64, 3): the latent against each square's state
    assert corr.shape == (64, 3) and np.abs(corr).max() <= 1 and np.abs(corr).max() > 0
    shown = feature["contexts"]["top"]
    assert shown and all(c["board"] is not None for c in shown)
    for c in shown:  # the board is the replayed game at the token where the feature fired
        game = [int(SQUARE_OF_TOKEN[t]) for t in chunks[c["chunk"]][: c["position"] + 1] if SQUARE_OF_TOKEN[t] >= 0]
        truth = othello.replay(othello.pad_games([game]))
        assert c["board"]["moves"] == len(game) >= 1
        assert c["board"]["squares"] == truth.board[0, len(game) - 1].tolist()
        assert c["board"]["last"] == game[-1]
    assert page.count('class="board"') == len(shown) + len(feature["contexts"]["quantile"])
    assert 'id="board-legend"' in page


def test_board_correlation_is_pearsons_r_per_square_state():
    from sparsecode.features.boards import BoardCorrelation

    rng = np.random.default_rng(0)
    boards = rng.integers(0, 3, size=(4, 50, 64))
    latents = torch.from_numpy(rng.random((4, 50, 5)))
    latents[..., 0] = torch.from_numpy((boards[..., 10] == othello.MINE).astype(float))  # "d2 is mine"
    keep = torch.from_numpy(rng.random((4, 50)) < 0.8)
    acc = BoardCorrelation(5)
    acc.update(latents[:2], keep[:2], boards[:2])  # two batches == one
    acc.update(latents[2:], keep[2:], boards[2:])
    corr = acc.correlation().numpy()  # (5, 64, 3)
    a, b = latents.numpy()[keep.numpy()], boards[keep.numpy()]
    for f, sq, state in [(0, 10, othello.MINE), (0, 10, othello.EMPTY), (3, 40, othello.THEIRS)]:
        expected = np.corrcoef(a[:, f], b[:, sq] == state)[0, 1]
        assert corr[f, sq, state] == pytest.approx(expected, abs=1e-5)
    assert corr[0, 10, othello.MINE] == pytest.approx(1.0, abs=1e-6)


def test_board_command_shows_a_position_and_refuses_an_illegal_move(capsys):
    assert main(["othello", "board", "d3 c3 c4"]) == 0
    assert "white (o) to move; legal (*): e3 c5" in capsys.readouterr().out
    assert main(["othello", "board", "d3 a1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: moves: move 2 'a1' is illegal here; legal moves: c3 e3 c5"


def test_linear_probe_reads_a_linearly_planted_board_and_not_noise():
    from sparsecode.worlds.othello_gpt import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    boards = torch.randint(0, 3, (2000, 64), generator=g)
    onehot = torch.nn.functional.one_hot(boards, 3).reshape(2000, -1).float()  # (n, 192)
    x = onehot @ torch.randn(192, 256, generator=g)  # the board, linearly embedded in 256 dims
    acc = linear_probe_accuracy(x[:1000], boards[:1000], x[1000:], boards[1000:])
    assert acc > 0.99
    noise = torch.randn(2000, 256, generator=g)  # nothing about the board: chance is 1/3 per square
    chance = linear_probe_accuracy(noise[:1000], boards[:1000], noise[1000:], boards[1000:])
    assert 0.28 < chance < 0.39


def test_linear_probe_fit_recovers_a_planted_softmax_model():
    """Square states drawn from a known linear softmax model of the activations: the fitted probe's probabilities
    must match the true ones on held-out rows (a probe stopped short of the optimum, like 100 full-batch Adam steps,
    is several times further off)."""
    from sparsecode.worlds.othello_gpt import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 16, generator=g)
    w = 3 * torch.randn(16, 64, 3, generator=g)
    true_p = torch.softmax(torch.einsum("nd,dsc->nsc", x, w), -1)  # (n, 64, 3)
    y = torch.multinomial(true_p.reshape(-1, 3), 1, generator=g).reshape(-1, 64)
    probabilities = fit_linear_probe(x[:16000], y[:16000])
    assert float((probabilities(x[16000:]) - true_p[16000:]).abs().mean()) < 0.01


def test_legal_loss_is_the_mean_next_move_loss_over_the_legal_moves():
    from sparsecode.worlds.othello_gpt import _loss, encode_games, legal_targets, new_model

    games = othello.random_games(3, seed=5)
    model = new_model(OthelloGPTConfig(n_layer=1, n_embd=16, n_head=2))
    ids, mask = encode_games(games)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)  # (3, T, vocab)
    token_of = {int(s): i for i, s in enumerate(SQUARE_OF_TOKEN) if s >= 0}
    legal = legal_targets(games)
    per_position = [
        -np.mean([float(logp[g, p, token_of[sq]]) for sq in np.nonzero(legal[g, p])[0]])
        for g in range(3)
        for p in range(legal.shape[1])
        if legal[g, p].any()
    ]
    with torch.no_grad():
        loss = float(_loss(model, games, "legal"))
    assert loss == pytest.approx(np.mean(per_position), rel=1e-5)
    assert len(per_position) == sum(len(g) for g in games)  # [BOS] and every move but the last, which ends the game


def test_the_shipped_model_resolves_offline_and_plays_legal_moves():
    from sparsecode.sources.hf import load_model, resolve_model
    from sparsecode.worlds.othello_gpt import reproducing_command

    path = Path(resolve_model("othello"))
    info = json.loads((path / "othello.json").read_text())
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20e6  # the limit for a committed model
    assert info["command"].startswith("sparsecode othello train") and info["config"]["seed"] == 0
    # `sparsecode othello train` at its defaults is the command that made the shipped model
    assert info["command"] == reproducing_command(OthelloGPTConfig())
    model, _ = load_model(path)
    games = othello.random_games(60, seed=123)  # neither a training nor the recorded eval stream
    rate = legal_move_rate(model, games)
    assert rate == pytest.approx(info["legal_move_top1"], abs=0.03)
    assert rate > 0.9  # an untrained model of the same shape plays a legal move ~16 % of the time (chance)


def test_recorded_command_parses_back_to_the_same_config():
    import shlex

    from sparsecode.cli import build_parser
    from sparsecode.cli.options import given
    from sparsecode.worlds.othello_gpt import reproducing_command

    for cfg in (OthelloGPTConfig(), OthelloGPTConfig(tie_embeddings=False, n_layer=2, lr=0.001, targets="next")):
        argv = shlex.split(reproducing_command(cfg))[1:] + ["--out", "unused"]
        args = build_parser("othello").parse_args(argv)
        assert OthelloGPTConfig(**given(args, args.config_flags)) == cfg


def test_untied_model_has_its_own_output_layer():
    from sparsecode.worlds.othello_gpt import new_model

    untied, tied = (
        new_model(OthelloGPTConfig(n_layer=1, n_embd=16, tie_embeddings=False)),
        new_model(OthelloGPTConfig(n_layer=1, n_embd=16, tie_embeddings=True)),
    )
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()


def test_fit_stops_early_on_the_full_schedule_and_counts_cpu_seconds():
    from sparsecode.worlds.othello_gpt import _lr_at, fit_othello_gpt, held_out_games

    cfg = OthelloGPTConfig(n_layer=1, n_embd=16, n_head=2, steps=10, warmup=1, batch_games=2, eval_games=4)
    _, history = fit_othello_gpt(cfg, held_out_games(cfg), progress=False, log_every=1, stop=3)
    assert [h["step"] for h in history] == [1, 2, 3]
    cpu = [h["cpu_seconds"] for h in history]
    assert cpu == sorted(cpu) and cpu[-1] > 0
    assert _lr_at(2, cfg) < cfg.lr  # step 3 of 10 is already decaying: the trial saw the full run's schedule


def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    from safetensors.torch import load_file

    from sparsecode.worlds.othello_gpt import checkpoint_path, fit_othello_gpt, held_out_games

    cfg = OthelloGPTConfig(n_layer=1, n_embd=16, n_head=2, steps=8, warmup=2, batch_games=4, eval_games=10)
    whole = train_othello_gpt(cfg, tmp_path / "whole", progress=False, log_every=2)
    ckpt = checkpoint_path(tmp_path / "resumed")
    # a run stopped after 5 steps, its last checkpoint at step 3 (what Ctrl-C at step 5 leaves behind)
    fit_othello_gpt(cfg, held_out_games(cfg), progress=False, log_every=2, stop=5, checkpoint=ckpt, checkpoint_every=3)
    assert ckpt.is_file()
    resumed = train_othello_gpt(cfg, tmp_path / "resumed", progress=False, log_every=2)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timeless = [
        [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in r["history"]] for r in (whole, resumed)
    ]
    assert timeless[0] == timeless[1]
    assert not ckpt.exists()  # the finished model replaces its checkpoint
    # a checkpoint of other flags is refused, not silently continued
    other = checkpoint_path(tmp_path / "other")
    fit_othello_gpt(cfg, held_out_games(cfg), progress=False, stop=4, checkpoint=other, checkpoint_every=3)
    with pytest.raises(ConfigError, match="checkpoint of another config"):
        train_othello_gpt(OthelloGPTConfig(**{**cfg.__dict__, "lr": cfg.lr / 2}), tmp_path / "other", progress=False)


def test_a_resumed_run_counts_the_seconds_of_every_segment(tmp_path, monkeypatch):
    import itertools

    from sparsecode.worlds import othello_gpt
    from sparsecode.worlds.othello_gpt import checkpoint_path, fit_othello_gpt, held_out_games

    clock = itertools.count(1000.0)  # a wall clock one second later at every reading
    monkeypatch.setattr(othello_gpt.time, "perf_counter", lambda: next(clock))
    cfg = OthelloGPTConfig(n_layer=1, n_embd=16, n_head=2, steps=6, warmup=1, batch_games=2, eval_games=4)
    ckpt = checkpoint_path(tmp_path / "m")
    fit_othello_gpt(cfg, held_out_games(cfg), progress=False, log_every=1, stop=4, checkpoint=ckpt, checkpoint_every=3)
    info = train_othello_gpt(cfg, tmp_path / "m", progress=False, log_every=1)
    wall = [h["wall_seconds"] for h in info["history"]]
    assert [h["step"] for h in info["history"]] == [1, 2, 3, 4, 5, 6]
    assert wall == sorted(wall) and len(set(wall)) == 6  # the resumed segment adds to the first one's seconds
    assert info["train_seconds"] == wall[-1]


def test_a_corrupt_checkpoint_is_one_error_line(tmp_path, capsys):
    (tmp_path / "m.checkpoint.pt").write_bytes(b"not a checkpoint")
    argv = ["othello", "train", "--out", str(tmp_path / "m"), "--steps", "2", "--n-layer", "1", "--n-embd", "16"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "unreadable Othello checkpoint" in err[0]
    assert not (tmp_path / "m").exists()


class _BoardInItsResidual(torch.nn.Module):
    """A stand-in 'model' whose layer 1 is the true board after each token, linearly embedded, and whose layer 0
    is noise: probes must read layer 1 perfectly and layer 0 not at all."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.randn(192, 256, generator=g)  # injective: the board is fully readable

    def forward(self, input_ids, attention_mask, output_hidden_states=True):
        from types import SimpleNamespace

        from sparsecode.worlds.othello_gpt import boards_of_ids

        boards = torch.from_numpy(boards_of_ids(input_ids.numpy()).astype(np.int64))  # (b, T, 64)
        board = torch.nn.functional.one_hot(boards, 3).reshape(*boards.shape[:2], 192).float() @ self.embed
        noise = torch.randn(board.shape, generator=torch.Generator().manual_seed(1))
        return SimpleNamespace(hidden_states=(noise, board))


def test_probe_as_features_scores_a_linearly_held_board_as_a_perfect_dictionary():
    from sparsecode.eval.board import board_metrics

    rows = probe_layers(_BoardInItsResidual(), n_games=120, score=board_metrics)
    noise, board = rows
    assert board["accuracy"] > 0.99 and noise["accuracy"] < board["majority"] + 0.05
    # the probe's probabilities of a board it reads exactly are exact classifiers of the 192 BSPs (bar the four
    # centre squares' never-occurring "empty": coverage 188 / 192)
    assert board["probe_as_features"]["reconstruction_f1"] > 0.97
    assert board["probe_as_features"]["coverage"] == pytest.approx(188 / 192, abs=0.01)
    assert noise["probe_as_features"]["reconstruction_f1"] < 0.1
