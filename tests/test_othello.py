"""Othello rules against hand-checked positions, the batched replay against the scalar rules, ground truth, and
the board metrics (Karvonen et al. 2024) on planted toy cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecode.errors import DataError
from sparsecode.eval.board import board_metrics
from sparsecode.worlds import othello
from sparsecode.worlds.othello import EMPTY, MINE, SQUARE_INDEX, SQUARES, THEIRS, Othello


def _names(bitboard: int) -> set[str]:
    return {SQUARES[i] for i in range(64) if bitboard >> i & 1}


def test_opening_moves_and_the_reply_to_d3():
    game = Othello()
    assert _names(game.legal()) == {"d3", "c4", "f5", "e6"}
    flipped = game.play(SQUARE_INDEX["d3"])
    assert _names(flipped) == {"d4"}
    assert _names(game.black) == {"d3", "d4", "d5", "e4"} and _names(game.white) == {"e5"}
    assert _names(game.legal()) == {"c3", "e3", "c5"}  # white: the diagonal, the column and the row through e5


def test_shortest_game_is_a_wipe_out_in_nine_moves():
    # the known 9-move game in which black captures every white disc
    moves = othello.parse_game("e6 f4 e3 f6 g5 d6 e7 f5 c5")
    game = Othello()
    for sq in moves:
        game.play(sq)
    assert game.over() and game.white == 0 and game.black.bit_count() == 13


def test_a_move_flipping_in_two_directions():
    game = Othello()
    for sq in othello.parse_game("c4 c5"):  # c4 takes d4; c5 takes d5 back
        game.play(sq)
    assert _names(game.white) == {"c5", "d5", "e5"} and _names(game.black) == {"c4", "d4", "e4"}
    flipped = game.play(SQUARE_INDEX["e6"])  # down the e column (e5, closed by e4) and the diagonal (d5, by c4)
    assert _names(flipped) == {"e5", "d5"}
    assert _names(game.black) == {"c4", "d4", "e4", "d5", "e5", "e6"} and _names(game.white) == {"c5"}


def test_illegal_and_unknown_move_strings_are_one_line_errors():
    with pytest.raises(DataError, match=r"move 1 'a1' is illegal here; legal moves: d3 c4 f5 e6") as e:
        othello.parse_game("a1")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"move 2 'z9' is not a square"):
        othello.parse_game("d3 z9")
    with pytest.raises(DataError, match="after the game has ended"):
        othello.parse_game("e6 f4 e3 f6 g5 d6 e7 f5 c5 a1")


def test_random_games_are_legal_seeded_and_match_the_scalar_rules():
    games = othello.random_games(200, seed=3)
    assert games == othello.random_games(200, seed=3) and games != othello.random_games(200, seed=4)
    gt = othello.replay(othello.pad_games(games))
    for g, moves in enumerate(games):
        assert othello.parse_game(othello.format_game(moves)) == moves  # every move legal by the scalar rules
        game = Othello()
        for t, sq in enumerate(moves):
            flipped = game.play(sq)
            assert np.array_equal(gt.board[g, t], game.board())
            assert _names(game.legal()) == {SQUARES[i] for i in np.nonzero(gt.legal[g, t])[0]}
            assert _names(flipped) == {SQUARES[i] for i in np.nonzero(gt.flipped[g, t])[0]}
        assert not gt.legal[g, len(moves) - 1].any()  # the game is over after its last move


def test_ground_truth_is_relative_to_the_player_to_move():
    gt = othello.replay(othello.pad_games([othello.parse_game("d3")]))
    board = gt.board[0, 0]
    # white to move: its disc e5 is "mine", black's four are "theirs"
    assert board[SQUARE_INDEX["e5"]] == MINE
    assert {SQUARES[i] for i in np.nonzero(board == THEIRS)[0]} == {"d3", "d4", "d5", "e4"}
    assert (board == EMPTY).sum() == 59
    with pytest.raises(DataError, match="illegal"):
        othello.replay(np.array([[SQUARE_INDEX["a1"]]]))


# -- board metrics on planted cases -----------------------------------------------------------------------


def _boards(n: int, squares: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 3, size=(n, squares)))


def test_exact_indicator_features_score_one():
    boards = _boards(4000, 8)
    onehot = torch.nn.functional.one_hot(boards, 3).reshape(4000, -1).float()
    r = board_metrics(onehot, boards)
    assert r["coverage"] == pytest.approx(1.0) and r["reconstruction_f1"] == pytest.approx(1.0)


def test_features_for_half_the_squares_reconstruct_two_thirds():
    boards = _boards(6000, 8, seed=1)
    onehot = torch.nn.functional.one_hot(boards, 3).float()[:, :4].reshape(6000, -1)  # squares 0-3 only
    noise = (torch.rand(6000, 20, generator=torch.Generator().manual_seed(0)) < 0.3).float()  # independent
    r = board_metrics(torch.cat([onehot, noise], 1), boards)
    # every row: 4 squares right, 4 missed -> F1 = 2*4 / (2*4 + 0 + 4) = 2/3
    assert r["reconstruction_f1"] == pytest.approx(2 / 3, abs=1e-9)


def test_union_feature_has_known_coverage_and_no_classifier():
    boards = _boards(30000, 1, seed=2)
    state = boards[:, 0]
    exact0 = (state == 0).float()
    union12 = (state != 0).float()
    r = board_metrics(torch.stack([exact0, union12], 1), boards)
    # coverage: BSP0 F1 1; BSPs 1 and 2 best served by the union feature, F1 = 2(1/3) / (2/3 + 1/3) = 2/3
    assert r["coverage"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=0.01)
    # reconstruction: only BSP0 has a high-precision classifier: F1 = 2(1/3) / (2(1/3) + 2/3) = 1/2
    assert r["reconstruction_f1"] == pytest.approx(0.5, abs=0.01)


def test_threshold_separates_a_graded_feature():
    boards = _boards(20000, 1, seed=5)
    state = boards[:, 0]
    graded = torch.where(state == 0, 1.0, torch.where(state == 1, 0.3, 0.0))  # weakly on for state 1 too
    r = board_metrics(graded[:, None], boards)
    assert r["reconstruction_f1"] == pytest.approx(0.5, abs=0.01)
    assert r["reconstruction_threshold"] == pytest.approx(0.3)  # below 0.3 the feature is not precise
    at0 = next(p for p in r["per_threshold"] if p["threshold"] == 0.0)
    assert at0["classifiers"] == 0


def _one_square_half_fit(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """30,000 random one-square boards, their square's state, and a fit mask of the first half."""
    boards = _boards(30000, 1, seed=seed)
    return boards, boards[:, 0], torch.arange(30000) < 15000


def test_headline_f1_counts_bsps_and_threshold_follows_per_square_f1():
    # fit rows: feature A = "state 0", feature B = "state 1", both exact. Scored rows: B also fires on every
    # state-0 row, so those squares get their true state and a false one predicted.
    boards, state, fit = _one_square_half_fit(seed=6)
    a = (state == 0).float()
    b = ((state == 1) | ((state == 0) & ~fit)).float()
    r = board_metrics(torch.stack([a, b], 1), boards, fit=fit)
    scored = state[~fit]
    p0, p1 = float((scored == 0).float().mean()), float((scored == 1).float().mean())
    # per BSP: TP = states 0 and 1 found, FP = the extra "1" on state-0 rows, FN = state 2 never predicted
    tp, fp, fn = p0 + p1, p0, 1 - p0 - p1
    assert r["reconstruction_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)  # ~ 2/3
    # per square: the state-0 squares are no true positives
    assert r["reconstruction_f1_per_square"] == pytest.approx(2 * p1 / (2 * p1 + fp + fn), abs=1e-6)  # ~ 1/2
    assert r["fit_positions"] == 15000


def test_per_square_f1_drops_a_true_positive_beside_exactly_one_false_state_as_karvonen_et_al():
    # fit rows: one exact feature per state. Scored rows: "1" and "2" also fire on state-0 rows (two false states
    # beside the true one) and "2" on state-1 rows (one false state). Their code (f1_score_per_square) drops the
    # true positive only where exactly one false state is predicted: the state-1 rows.
    boards, state, fit = _one_square_half_fit(seed=8)
    a = (state == 0).float()
    b = ((state == 1) | ((state == 0) & ~fit)).float()
    c = ((state == 2) | ((state != 2) & ~fit)).float()
    r = board_metrics(torch.stack([a, b, c], 1), boards, fit=fit)
    scored = state[~fit]
    p0, p1 = float((scored == 0).float().mean()), float((scored == 1).float().mean())
    fp = 2 * p0 + p1  # every scored square's true state is predicted: TP 1 per row, FN 0
    assert r["reconstruction_f1"] == pytest.approx(2 / (2 + fp), abs=1e-6)
    assert r["reconstruction_f1_per_square"] == pytest.approx(2 * (1 - p1) / (2 * (1 - p1) + fp), abs=1e-6)


def test_coverage_averages_over_every_bsp_even_one_that_never_occurs():
    boards = torch.from_numpy(np.random.default_rng(7).integers(0, 2, size=(4000, 2)))  # state 2 never occurs
    onehot = torch.nn.functional.one_hot(boards, 3).reshape(4000, -1).float()
    r = board_metrics(onehot, boards)
    assert r["coverage"] == pytest.approx(4 / 6)  # 4 BSPs found exactly, 2 never occur and score 0
    assert r["reconstruction_f1"] == pytest.approx(1.0)


def test_board_metrics_refuse_a_split_without_scored_rows():
    boards = _boards(100, 2)
    with pytest.raises(DataError, match="fit and 2 scored"):
        board_metrics(torch.rand(100, 3), boards, fit=torch.ones(100, dtype=torch.bool))
