"""the Othello world: random games, a small GPT trained on them, board probes, positions
An Othello-playing transformer whose internal variables are known: the board. `games` writes seeded random legal
games as a text corpus; `train` trains a small GPT-2 (transformers) on fresh random games to predict legal next
moves and saves it as a model folder any `sparsecode train --model DIR` can use; `probe` fits linear board probes
on every layer; `board` shows the position after a move string (and refuses an illegal one). `sparsecode eval` on
an SAE of such a model adds board reconstruction F1 and coverage (Karvonen et al. 2024) for the SAE latents and the
layer's MLP neurons.
"""

from __future__ import annotations

import argparse
import json

from .options import add_config_flags, given, parse_count

EXAMPLES = """examples:
  sparsecode othello train --out models/othello --seed 0        # the shipped model: 6 blocks of 256, 20000 steps x 32 games
  sparsecode othello games --games 100000 --seed 2 --out games.txt
  sparsecode train --model othello --hook transformer.h.4 --corpus games.txt --max-length 61 \\
      --k 32 --latents 2048 --tokens 6M --out runs/othello-l4            # --model othello: the shipped model
  sparsecode eval runs/othello-l4                                        # board F1 / coverage: SAE and neurons
  sparsecode othello probe othello
  sparsecode othello board "d3 c3 c4"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..worlds.othello_gpt import PROBE_GAMES, OthelloGPTConfig

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("games", help="write seeded random legal games, one per paragraph (a text corpus)")
    g.add_argument("--games", type=parse_count, default=20000, metavar="N", help="how many games")
    g.add_argument("--seed", type=int, default=1, help="seed of the games")
    g.add_argument("--out", required=True, metavar="FILE", help=".txt file to write")
    t = sub.add_parser("train", help="train the Othello GPT on fresh random games and save it as a model folder")
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="new (or empty) folder for the model; until it is written, DIR.checkpoint.pt (saved every 500 steps) "
        "lets the same command continue an interrupted run",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(config_flags=add_config_flags(t, [OthelloGPTConfig]))
    pr = sub.add_parser("probe", help="linear board probes (mine / theirs / empty) on every layer of a model")
    pr.add_argument("model", metavar="DIR", help='model folder written by `sparsecode othello train`, or "othello"')
    pr.add_argument("--games", type=parse_count, default=PROBE_GAMES, metavar="N", help="games (half fit, half test)")
    b = sub.add_parser("board", help="the position after a move string, with the legal moves")
    b.add_argument("moves", help='moves separated by spaces, e.g. "d3 c3 c4"')


def run(args: argparse.Namespace) -> int:
    return {"games": _games, "train": _train, "probe": _probe, "board": _board}[args.action](args)


def _games(args: argparse.Namespace) -> int:
    from ..worlds.othello_gpt import write_corpus

    path = write_corpus(args.out, args.games, args.seed)
    print(f"wrote {args.games:,} games (seed {args.seed}) to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..worlds.othello_gpt import OthelloGPTConfig, checkpoint_path, train_othello_gpt

    cfg = OthelloGPTConfig(**given(args, args.config_flags))
    if checkpoint_path(args.out).is_file():
        print(f"continuing from {checkpoint_path(args.out)} (an unfinished run of these flags)")
    info = train_othello_gpt(cfg, args.out, progress=not args.quiet)
    print(
        f"trained {args.out}: {info['parameters']:,} parameters, {cfg.steps} steps x {cfg.batch_games} games in "
        f"{info['train_seconds']:.0f} s; legal-move top-1 {100 * info['legal_move_top1']:.2f}% on "
        f"{cfg.eval_games} held-out games"
    )
    return 0


def _probe(args: argparse.Namespace) -> int:
    from ..eval.board import board_metrics
    from ..sources.hf import load_model, resolve_model
    from ..worlds.othello_gpt import load_info, probe_layers

    path = resolve_model(args.model)  # a folder, or "othello": the shipped model
    load_info(path)  # one line if this is not an Othello model
    model, _ = load_model(path)
    rows = probe_layers(model, n_games=args.games, score=board_metrics)
    print(json.dumps(rows))
    for r in rows:
        as_features = r["probe_as_features"]
        print(
            f"  layer {r['layer']}: board probe accuracy {100 * r['accuracy']:.1f}% (majority {100 * r['majority']:.1f}%);"
            f" the probe as features: board reconstruction F1 {as_features['reconstruction_f1']:.3f},"
            f" coverage {as_features['coverage']:.3f}"
        )
    return 0


def _board(args: argparse.Namespace) -> int:
    from ..worlds import othello

    moves = othello.parse_game(args.moves, where="moves")
    game = othello.Othello()
    for sq in moves:
        game.play(sq)
    mover = "x" if game.turn == 0 else "o"  # x: black, o: white; the board is relative to the player to move
    marks = {othello.EMPTY: ".", othello.MINE: mover, othello.THEIRS: "o" if mover == "x" else "x"}
    board = game.board().reshape(8, 8)
    legal = game.legal()
    print("  a b c d e f g h")
    for r in range(8):
        cells = ["*" if legal >> (8 * r + c) & 1 else marks[int(board[r, c])] for c in range(8)]
        print(f"{r + 1} " + " ".join(cells))
    if game.over():
        print("game over")
    else:
        names = " ".join(othello.SQUARES[i] for i in range(64) if legal >> i & 1)
        print(f"{'black (x)' if game.turn == 0 else 'white (o)'} to move; legal (*): {names}")
    return 0
