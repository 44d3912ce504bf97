"""A small GPT-2 that reads Othello games move by move and predicts a legal next move, trained here on CPU.

The model is a transformers ``GPT2LMHeadModel`` saved with a word-level tokenizer (one token per square, a
``[BOS]`` before every game), so it is an ordinary causal-LM model directory: ``sparsecode train --model DIR
--hook transformer.h.4 --corpus games.txt`` trains an SAE on it like on any model, with the games as the
corpus. Training draws fresh seeded random games every step (``othello.random_games``), so the model never
sees a game twice and the whole run is reproducible from its config.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import atomic_write, write_json
from . import othello

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[UNK]")
VOCAB = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, **{s: i + 3 for i, s in enumerate(othello.PLAYABLE)}}
"""Token ids: the specials, then the 60 playable squares."""
SQUARE_OF_TOKEN = np.full(len(VOCAB), -1, dtype=np.int64)
for _name, _id in VOCAB.items():
    if _name in othello.SQUARE_INDEX:
        SQUARE_OF_TOKEN[_id] = othello.SQUARE_INDEX[_name]
TOKEN_OF_SQUARE = np.full(64, VOCAB["[UNK]"], dtype=np.int64)
TOKEN_OF_SQUARE[SQUARE_OF_TOKEN[SQUARE_OF_TOKEN >= 0]] = np.nonzero(SQUARE_OF_TOKEN >= 0)[0]
SEQ_LEN = 61
"""[BOS] + at most 60 moves."""
INFO_FILE = "othello.json"
"""Written beside the model: its training config, legal-move rate and the command that reproduces it."""


@dataclass(kw_only=True)
class OthelloGPTConfig:
    """Size and training of the Othello model."""

    n_layer: int = 6
    """Transformer blocks. Tracking the board takes depth: at 6 blocks a step costs 1.3 x the CPU of 4, and the
    board probes and the legal-move rate gain (docs/worlds.md)."""
    n_embd: int = 256
    """Residual stream width. The board takes room: 64 squares x 3 states want ~128 linear directions, the whole
    stream at width 128, where probes read ~86 % of it; at width 256 they read ~91 %, for 2.7 x the CPU per step
    (docs/worlds.md)."""
    n_head: int = 4
    """Attention heads per block."""
    tie_embeddings: bool = False
    """Whether the output layer reuses the move embeddings (GPT-2's default). Untied, reading "the move was X" and
    predicting "X is legal now", two different things, get their own weights (``bench/othello_trials.py`` compares
    the two per CPU second)."""
    steps: int = 20000
    """Optimizer steps; every step sees ``batch_games`` new random games. 0 saves the untrained model (the
    random-init baseline)."""
    batch_games: int = 32
    """Games per step."""
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up over ``warmup`` steps, cosine decay to 10% after); at width 256,
    1e-3 was ahead of 3e-3 over the first 300 steps."""
    warmup: int = 200
    """Learning-rate warm-up steps."""
    targets: str = "legal"
    """What each position is scored against. ``legal``: cross-entropy against the uniform distribution over the
    legal moves, which is the expected next-move loss of a uniformly random game, seen without the sampling noise
    of the one move the game happened to play (the same objective, many times less noisy). ``next``: the move the
    game played (plain language-model loss)."""
    seed: int = 0
    """Seeds the weights and every training game."""
    eval_games: int = 500
    """Held-out games (their own seed stream) for the legal-move rate."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "steps", "batch_games", "eval_games", "warmup"):
            v, least = getattr(self, name), 0 if name in ("steps", "warmup") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"othello.{name} must be a whole number >= {least}, got {v!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"othello.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ConfigError(f"othello.lr must be in (0, 1), got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"othello.seed must be a whole number >= 0, got {self.seed!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"othello.tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.targets not in ("legal", "next"):
            raise ConfigError(f"othello.targets must be 'legal' or 'next', got {self.targets!r}")


def make_tokenizer() -> Any:
    """The word-level tokenizer: whitespace-separated squares, ``[BOS]`` prepended to every game."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", VOCAB["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]")


def new_model(cfg: OthelloGPTConfig) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=128,  # >= the model source's default max_length, so `sparsecode train` needs no extra flag
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=VOCAB["[BOS]"],
        eos_token_id=VOCAB["[BOS]"],
        pad_token_id=VOCAB["[PAD]"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    return GPT2LMHeadModel(config)


def encode_games(games: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (n, SEQ_LEN): [BOS] then the moves, right-padded."""
    padded = othello.pad_games(games)  # (n, 60)
    ids = np.full((len(games), SEQ_LEN), VOCAB["[PAD]"], dtype=np.int64)
    ids[:, 0] = VOCAB["[BOS]"]
    ids[:, 1:] = np.where(padded >= 0, TOKEN_OF_SQUARE[np.clip(padded, 0, 63)], VOCAB["[PAD]"])
    ids_t = torch.from_numpy(ids)
    return ids_t, (ids_t != VOCAB["[PAD]"]).long()


def legal_targets(games: list[list[int]]) -> np.ndarray:
    """(n, SEQ_LEN, 64) bool: the legal moves after reading position p ([BOS]: the opening moves)."""
    gt = othello.replay(othello.pad_games(games))
    out = np.zeros((len(games), SEQ_LEN, 64), dtype=bool)
    out[:, 0] = othello.np_masks(np.array([othello.Othello().legal()], dtype=np.uint64))[0]
    out[:, 1:] = gt.legal
    return out


def boards_of_ids(ids: np.ndarray) -> np.ndarray:
    """(B, T, 64) int8 board after each token of token-id rows ``ids`` (B, T), relative to the player to move.

    A token that is not a move ([BOS], padding) keeps the board before it (the start position before the first
    move). Each row's moves must be a legal game from the start (DataError otherwise).
    """
    squares = SQUARE_OF_TOKEN[ids]  # (B, T), -1 for specials
    is_move = squares >= 0
    games = [row[row >= 0].tolist() for row in squares]
    truth = othello.replay(othello.pad_games(games, steps=max(60, ids.shape[1])))  # (B, steps, 64)
    start = othello.Othello().board()  # (64,)
    played = np.cumsum(is_move, axis=1) - 1  # (B, T) index of the last move read; -1 before the first
    out = np.take_along_axis(truth.board, np.clip(played, 0, None)[..., None], axis=1)  # (B, T, 64)
    return np.where((played < 0)[..., None], start, out).astype(np.int8)


@torch.inference_mode()
def legal_move_rate(model: Any, games: list[list[int]], batch: int = 256) -> float:
    """Share of positions (that have a legal move) where the model's top-1 next token is a legal move."""
    hits = total = 0
    model.eval()
    for s in range(0, len(games), batch):
        part = games[s : s + batch]
        ids, mask = encode_games(part)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (b, T, vocab)
        square = SQUARE_OF_TOKEN[logits.argmax(-1).numpy()]  # (b, T), -1 for a special token
        legal = legal_targets(part)  # (b, T, 64)
        has_move = legal.any(-1)
        ok = np.take_along_axis(legal, np.clip(square, 0, 63)[..., None], -1)[..., 0] & (square >= 0)
        hits += int((ok & has_move).sum())
        total += int(has_move.sum())
    return hits / max(total, 1)


def _lr_at(step: int, cfg: OthelloGPTConfig) -> float:
    warm = min(cfg.warmup, cfg.steps)
    if step < warm:  # warm > 0 here
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _loss(model: Any, games: list[list[int]], targets: str) -> torch.Tensor:
    """Mean cross-entropy over the positions of ``games`` that have a next move (see ``OthelloGPTConfig.targets``)."""
    ids, mask = encode_games(games)
    if targets == "next":
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    legal = torch.from_numpy(legal_targets(games)).float()  # (b, T, 64)
    want = torch.zeros(*legal.shape[:2], len(VOCAB))  # (b, T, vocab): uniform over the legal moves' tokens
    tokens = np.nonzero(SQUARE_OF_TOKEN >= 0)[0]
    want[..., torch.from_numpy(tokens)] = legal[..., torch.from_numpy(SQUARE_OF_TOKEN[tokens])]
    n_legal = want.sum(-1)  # (b, T); 0 once the game is over
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (b, T, vocab)
    per_pos = -(want * logp).sum(-1) / n_legal.clamp_min(1)
    has_move = n_legal > 0
    return per_pos[has_move].mean()


def fit_othello_gpt(
    cfg: OthelloGPTConfig,
    eval_games: list[list[int]],
    progress: bool = True,
    log_every: int = 100,
    stop: int | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
) -> tuple[Any, list[dict]]:
    """A new model trained by ``cfg`` (its first ``stop`` steps only, if given; the schedule stays ``cfg.steps``
    long) and its history: every ``log_every`` steps the loss, the legal-move rate on ``eval_games[:100]``, the
    CPU seconds of training so far (one thread: the cost of the steps, whatever else the machine runs) and its
    wall-clock seconds (both summed over every resumed segment).

    With ``checkpoint`` (a file path), the model, optimizer and history are saved there every ``checkpoint_every``
    steps, and a run whose checkpoint exists continues from it: every step's games come from the step's own seed and
    nothing else is random, so the resumed run ends with the same weights as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    model = new_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    history: list[dict] = []
    first, cpu_before, wall_before = 0, 0.0, 0.0
    if checkpoint is not None and Path(checkpoint).is_file():
        first, history, cpu_before, wall_before = _load_checkpoint(Path(checkpoint), cfg, model, opt)
    cpu0, wall0 = time.process_time() - cpu_before, time.perf_counter() - wall_before
    model.train()
    last = cfg.steps if stop is None else min(stop, cfg.steps)
    bar = tqdm(range(first, last), desc="othello", disable=not progress, initial=first, total=last)
    for step in bar:
        games = othello.random_games(cfg.batch_games, seed=cfg.seed * 1_000_000 + step)
        loss = _loss(model, games, cfg.targets)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == last:
            rate = legal_move_rate(model, eval_games[:100])  # a quick look; the final rate uses all eval games
            model.train()
            history.append({"step": step + 1, "loss": round(float(loss.detach()), 4), "legal_top1": round(rate, 4)})
            history[-1]["cpu_seconds"] = round(time.process_time() - cpu0, 1)
            history[-1]["wall_seconds"] = round(time.perf_counter() - wall0, 1)
            bar.set_postfix(history[-1])
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < last:
            state = {"config": asdict(cfg), "step": step + 1, "history": history, "cpu": time.process_time() - cpu0}
            state["wall"] = time.perf_counter() - wall0
            state |= {"model": model.state_dict(), "optimizer": opt.state_dict()}
            atomic_write(Path(checkpoint), lambda p, state=state: torch.save(state, p))
    return model, history


def _load_checkpoint(path: Path, cfg: OthelloGPTConfig, model: Any, opt: Any) -> tuple[int, list[dict], float, float]:
    """Restore ``model`` and ``opt`` from a checkpoint of the same config; (next step, history, CPU seconds, wall
    seconds)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: unreadable Othello checkpoint ({first}); delete it to start over") from None
    if state.get("config") != asdict(cfg):
        raise ConfigError(f"{path} is a checkpoint of another config; delete it or train with the same flags")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["history"]), float(state["cpu"]), float(state.get("wall", 0.0))


def held_out_games(cfg: OthelloGPTConfig) -> list[list[int]]:
    """The ``cfg.eval_games`` games the legal-move rate is measured on (a seed stream no training step draws from)."""
    return othello.random_games(cfg.eval_games, seed=cfg.seed + 1_000_003)


def train_othello_gpt(cfg: OthelloGPTConfig, out: str | Path, progress: bool = True, log_every: int = 100) -> dict:
    """Train the model and save it (safetensors), its tokenizer and ``othello.json`` into ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the Othello model")
    eval_games = held_out_games(cfg)
    ckpt = checkpoint_path(out)
    model, history = fit_othello_gpt(cfg, eval_games, progress=progress, log_every=log_every, checkpoint=ckpt)
    rate = legal_move_rate(model, eval_games)
    info = {
        "config": asdict(cfg),
        "legal_move_top1": rate,
        "eval_games": cfg.eval_games,
        "train_seconds": history[-1]["wall_seconds"] if history else 0.0,
        "train_cpu_seconds": history[-1]["cpu_seconds"] if history else 0.0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "command": reproducing_command(cfg),
    }
    # written to a sibling folder and renamed: an interrupted save leaves no half-written model behind
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the model folder is an ordinary one
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        make_tokenizer().save_pretrained(tmp)
        write_json(tmp / INFO_FILE, info)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ckpt.unlink(missing_ok=True)
    return info


def checkpoint_path(out: str | Path) -> Path:
    """Where ``train_othello_gpt`` keeps its checkpoint while it trains into ``out`` (a sibling file)."""
    out = Path(out)
    return out.parent / f"{out.name}.checkpoint.pt"


def reproducing_command(cfg: OthelloGPTConfig) -> str:
    """The `sparsecode othello train` flags that give ``cfg`` (every field spelled out, yes/no fields as switches)."""
    flags = []
    for k, v in asdict(cfg).items():
        name = k.replace("_", "-")
        flags.append((f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{name} {v}")
    return "sparsecode othello train " + " ".join(flags)


def load_info(model_dir: str | Path) -> dict:
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        raise DataError(f"{model_dir}: no {INFO_FILE}; not an Othello model made by `sparsecode world othello train`")
    return json.loads(path.read_text())


def write_corpus(path: str | Path, n_games: int, seed: int) -> Path:
    """A .txt corpus of ``n_games`` random games, one per paragraph (the text corpus format), written atomically."""
    text = "\n\n".join(othello.format_game(g) for g in othello.random_games(n_games, seed)) + "\n"
    atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))
    return Path(path)


# --------------------------------------------------------------------------- linear probes


@torch.inference_mode()
def hidden_rows(model: Any, games: list[list[int]], batch: int = 256) -> tuple[list[torch.Tensor], np.ndarray]:
    """Residual stream after every block (index 0: the embeddings) at every move, and the board after that move.

    Returns ([(rows, d) per layer], boards (rows, 64) EMPTY / MINE / THEIRS relative to the player to move).
    """
    model.eval()
    per_layer: list[list[torch.Tensor]] = []
    boards = []
    for s in range(0, len(games), batch):
        part = games[s : s + batch]
        ids, mask = encode_games(part)
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        keep = mask.bool().clone()
        keep[:, 0] = False  # [BOS]: no move read yet
        if not per_layer:
            per_layer = [[] for _ in states]
        for i, h in enumerate(states):
            per_layer[i].append(h[keep].float())  # (rows, d)
        gt = othello.replay(othello.pad_games(part))
        boards.append(gt.board[keep[:, 1:].numpy()])  # (rows, 64)
    return [torch.cat(h) for h in per_layer], np.concatenate(boards)


PROBE_GAMES = 1000
"""Games of a probe run: the first half fit the probes, the other half score them (Karvonen et al.'s board metrics
use 1,000 + 1,000). On the shipped model the held-out accuracy is ~1 point higher than with 300 games: fewer fit
games overfit (docs/worlds.md)."""
PROBE_ITERATIONS = 100
"""L-BFGS iterations of a probe fit: the fit is convex (multinomial logistic regression), and L-BFGS converges
where a fixed number of first-order steps may stop short of the optimum (tests/test_othello_model.py checks the fit
against a planted softmax model)."""


def fit_linear_probe(
    fit_x: torch.Tensor, fit_y: torch.Tensor, iterations: int = PROBE_ITERATIONS
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear probe (one 3-way softmax per square) fitted to ``fit_x`` (rows, d) activations and ``fit_y``
    (rows, 64) square states by full-batch L-BFGS (a strong-Wolfe line search, from zero weights: deterministic)
    on standardised activations; returns the map from activations (rows, d) to the probe's state probabilities
    (rows, 64, 3)."""
    mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-6)
    probe = torch.nn.Linear(fit_x.shape[1], 64 * 3)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    fx, fy = (fit_x - mean) / std, fit_y.reshape(-1).long()
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(fx).reshape(-1, 3), fy)
        loss.backward()
        return loss

    opt.step(closure)

    @torch.no_grad()
    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(probe((x - mean) / std).reshape(-1, 64, 3), -1)

    return probabilities


def linear_probe_accuracy(
    fit_x: torch.Tensor, fit_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Accuracy on held-out rows of :func:`fit_linear_probe`. ``*_x`` (rows, d) activations, ``*_y`` (rows, 64)
    square states."""
    probabilities = fit_linear_probe(fit_x, fit_y)
    return float((probabilities(test_x).argmax(-1) == test_y).float().mean())


def probe_layers(
    model: Any, n_games: int = PROBE_GAMES, seed: int = 7, score: Callable[..., dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Per layer (0 = embeddings), the held-out accuracy of a linear board probe (mine / theirs / empty), and the
    accuracy of always guessing each square's most common state (the floor a probe must beat).

    With ``score`` (``eval.board.board_metrics``: features, boards, fit mask -> metrics), each layer also gets
    ``probe_as_features``: those metrics for the probe's 192 state probabilities taken as the features of a
    dictionary, on the same fit / scored games. A dictionary whose latents were exactly the probe's directions
    would score that; it shows how much of the board the layer offers to any linear dictionary.
    """
    games = othello.random_games(n_games, seed)
    fit_layers, fit_boards = hidden_rows(model, games[: n_games // 2])
    test_layers, test_boards = hidden_rows(model, games[n_games // 2 :])  # held-out games, not just rows
    fit_y, test_y = (torch.from_numpy(b.astype(np.int64)) for b in (fit_boards, test_boards))
    majority = torch.mode(fit_y, dim=0).values  # (64,)
    floor = float((test_y == majority).float().mean())
    rows: list[dict[str, Any]] = []
    for i, (f, t) in enumerate(zip(fit_layers, test_layers)):
        probabilities = fit_linear_probe(f, fit_y)
        test_p = probabilities(t)  # (scored, 64, 3)
        row: dict[str, Any] = {"layer": i, "accuracy": float((test_p.argmax(-1) == test_y).float().mean())}
        row["majority"] = floor
        if score is not None:
            feats = torch.cat([probabilities(f), test_p]).reshape(-1, 64 * 3)  # (rows, 192), state-major per square
            fit = torch.arange(len(feats)) < len(f)
            m = score(feats, torch.cat([fit_y, test_y]), fit=fit)
            row["probe_as_features"] = {"reconstruction_f1": m["reconstruction_f1"], "coverage": m["coverage"]}
        rows.append(row)
    return rows
