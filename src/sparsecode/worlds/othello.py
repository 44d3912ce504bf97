"""Othello: the rules on bitboards, seeded random legal games, and the ground truth of every position.

Squares are named column letter + row number ("a1" .. "h8"); square index = 8 * (row - 1) + column (a = 0). The
start position has white on d4 and e5, black on d5 and e4; black moves first. A game is written as its moves
separated by spaces ("e6 f4 e3 ..."). As in the Othello world-model literature, passes are implicit: a player with
no legal move is skipped, so the next move in the string is the other player's again.

Ground truth after each move t (the position the model has seen when it reads move t):

* ``board`` (64,) in {EMPTY, MINE, THEIRS} relative to the player to move next (after any pass);
* ``legal`` (64,) bool, that player's legal moves (the set a next-move predictor should draw from);
* ``flipped`` (64,) bool, the discs move t turned over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

EMPTY, MINE, THEIRS = 0, 1, 2
"""Square states relative to the player to move (the probe and board-metric classes)."""
STATE_NAMES = ("empty", "mine", "theirs")
SQUARES = tuple(f"{'abcdefgh'[i % 8]}{i // 8 + 1}" for i in range(64))
"""Square names by index."""
SQUARE_INDEX = {name: i for i, name in enumerate(SQUARES)}
START_SQUARES = ("d4", "e5", "d5", "e4")
PLAYABLE = tuple(s for s in SQUARES if s not in START_SQUARES)
"""The 60 squares a move can name (the move vocabulary)."""

_FULL = (1 << 64) - 1
_NOT_A = _FULL ^ sum(1 << (8 * r) for r in range(8))  # every square but column a
_NOT_H = _FULL ^ sum(1 << (8 * r + 7) for r in range(8))  # every square but column h
# (shift, mask applied after the shift so nothing wraps around a row edge)
_DIRECTIONS = ((1, _NOT_A), (-1, _NOT_H), (8, _FULL), (-8, _FULL), (9, _NOT_A), (7, _NOT_H), (-7, _NOT_A), (-9, _NOT_H))


def _shift(b: int, d: int, mask: int) -> int:
    return ((b << d) & _FULL & mask) if d > 0 else ((b >> -d) & mask)


def legal_moves(me: int, opp: int) -> int:
    """Bitboard of the legal moves of the player with discs ``me`` against ``opp``."""
    empty = ~(me | opp) & _FULL
    moves = 0
    for d, mask in _DIRECTIONS:
        run = _shift(me, d, mask) & opp
        for _ in range(5):  # a run of opponent discs is at most 6 long
            run |= _shift(run, d, mask) & opp
        moves |= _shift(run, d, mask) & empty
    return moves


def flips(me: int, opp: int, square: int) -> int:
    """Bitboard of the opponent discs turned over when ``me`` plays ``square`` (0 if the move is illegal)."""
    out = 0
    for d, mask in _DIRECTIONS:
        run, cur = 0, _shift(1 << square, d, mask)
        while cur & opp:
            run |= cur
            cur = _shift(cur, d, mask)
        if cur & me:
            out |= run
    return out


def _bits(b: int) -> list[int]:
    """Indices of the set bits of ``b``, lowest first."""
    out = []
    while b:
        low = b & -b
        out.append(low.bit_length() - 1)
        b ^= low
    return out


def _mask(b: int) -> np.ndarray:
    """(64,) bool of the bits of ``b``."""
    return np.unpackbits(np.frombuffer(b.to_bytes(8, "little"), dtype=np.uint8), bitorder="little").astype(bool)


@dataclass
class Othello:
    """A position: the discs of black and white and whose turn it is (0 black, 1 white)."""

    black: int = (1 << SQUARE_INDEX["d5"]) | (1 << SQUARE_INDEX["e4"])
    white: int = (1 << SQUARE_INDEX["d4"]) | (1 << SQUARE_INDEX["e5"])
    turn: int = 0

    def _sides(self) -> tuple[int, int]:
        return (self.black, self.white) if self.turn == 0 else (self.white, self.black)

    def legal(self) -> int:
        """Legal moves of the player to move, as a bitboard."""
        return legal_moves(*self._sides())

    def play(self, square: int) -> int:
        """Play ``square`` for the player to move, then hand the turn over (skipping a player who must pass).

        Returns the flipped discs as a bitboard; raises ValueError if the move is illegal.
        """
        me, opp = self._sides()
        if not (self.legal() >> square & 1):
            raise ValueError(f"illegal move {SQUARES[square]}")
        flipped = flips(me, opp, square)
        me |= flipped | (1 << square)
        opp &= ~flipped
        self.black, self.white = (me, opp) if self.turn == 0 else (opp, me)
        self.turn ^= 1
        if not self.legal():  # the next player must pass (if the mover cannot move either, the game is over)
            self.turn ^= 1
        return flipped

    def over(self) -> bool:
        return not self.legal()

    def board(self) -> np.ndarray:
        """(64,) int8: EMPTY / MINE / THEIRS relative to the player to move."""
        me, opp = self._sides()
        out = np.zeros(64, dtype=np.int8)
        out[_mask(me)] = MINE
        out[_mask(opp)] = THEIRS
        return out


@dataclass
class GroundTruth:
    """Per-position ground truth of many games (see the module docstring and :func:`replay`)."""

    board: np.ndarray
    """(n_games, T, 64) int8 EMPTY / MINE / THEIRS relative to the player to move next."""
    legal: np.ndarray
    """(n_games, T, 64) bool legal next moves (all False once the game is over)."""
    flipped: np.ndarray
    """(n_games, T, 64) bool discs turned over by the move."""


# --------------------------------------------------------------------------- many games at once
# The same rules on numpy uint64 arrays, one entry per game: generating a corpus and replaying it for ground
# truth are the hot loops, and a step over 10,000 games costs about what one scalar step costs.

_U = np.uint64
_NP_DIRECTIONS = tuple((d, _U(mask)) for d, mask in _DIRECTIONS)


def _np_shift(b: np.ndarray, d: int, mask: np.uint64) -> np.ndarray:
    return (b << _U(d)) & mask if d > 0 else (b >> _U(-d)) & mask


def _np_legal(me: np.ndarray, opp: np.ndarray) -> np.ndarray:
    empty = ~(me | opp)
    moves = np.zeros_like(me)
    for d, mask in _NP_DIRECTIONS:
        run = _np_shift(me, d, mask) & opp
        for _ in range(5):
            run |= _np_shift(run, d, mask) & opp
        moves |= _np_shift(run, d, mask) & empty
    return moves


def _np_flips(me: np.ndarray, opp: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Discs flipped by playing the one-bit boards ``move`` (0: no move, no flips)."""
    out = np.zeros_like(me)
    for d, mask in _NP_DIRECTIONS:
        run = _np_shift(move, d, mask) & opp  # the contiguous opponent run next to the move...
        for _ in range(5):
            run |= _np_shift(run, d, mask) & opp
        closed = (_np_shift(run, d, mask) & me) != 0  # ...counts only if one of my discs closes it
        out |= np.where(closed, run, _U(0))
    return out


def np_masks(b: np.ndarray) -> np.ndarray:
    """(..., 64) bool bits of uint64 boards ``b`` (...,)."""
    raw = np.ascontiguousarray(b, dtype="<u8").view(np.uint8).reshape(*b.shape, 8)
    return np.unpackbits(raw, axis=-1, bitorder="little").astype(bool)


def _start(n: int) -> tuple[np.ndarray, np.ndarray]:
    s = Othello()
    return np.full(n, s.black, dtype=_U), np.full(n, s.white, dtype=_U)


def _hand_over(me: np.ndarray, opp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After a move by ``me``: (to move, other, their legal moves), the turn skipping a player who must pass."""
    nxt, other = opp, me
    legal = _np_legal(nxt, other)
    stuck = legal == 0
    nxt, other = np.where(stuck, other, nxt), np.where(stuck, nxt, other)
    return nxt, other, np.where(stuck, _np_legal(nxt, other), legal)


def random_games(n: int, seed: int) -> list[list[int]]:
    """``n`` random legal games (uniform over the legal moves at every turn) as square indices.

    Seeded: the same ``n`` and ``seed`` give the same games.
    """
    rng = np.random.default_rng(seed)
    me, opp = _start(n)
    legal = _np_legal(me, opp)
    moves = np.full((n, 60), -1, dtype=np.int64)
    for t in range(60):
        live = legal != 0
        if not live.any():
            break
        options = np_masks(legal)  # (n, 64)
        pick = (rng.random(n) * options.sum(1)).astype(np.int64)  # which of the legal moves, uniformly
        sq = np.argmax(np.cumsum(options, axis=1) > pick[:, None], axis=1)  # (n,) its square
        move = np.where(live, _U(1) << sq.astype(_U), _U(0))
        f = _np_flips(me, opp, move)
        me, opp, legal = _hand_over(me | f | move, opp & ~f)
        moves[:, t] = np.where(live, sq, -1)
    return [row[row >= 0].tolist() for row in moves]


def replay(moves: np.ndarray) -> GroundTruth:
    """Ground truth of many games at once: ``moves`` (n, T) square indices, -1 after a game's end.

    Returns arrays shaped (n, T, 64) (rows past a game's end are all EMPTY / False). Every move must be legal
    (check untrusted strings with :func:`parse_game` first); an illegal one raises DataError.
    """
    n, steps = moves.shape
    me, opp = _start(n)
    legal = _np_legal(me, opp)
    board = np.zeros((n, steps, 64), dtype=np.int8)
    legal_out = np.zeros((n, steps, 64), dtype=bool)
    flipped = np.zeros((n, steps, 64), dtype=bool)
    for t in range(steps):
        live = moves[:, t] >= 0
        move = np.where(live, _U(1) << np.clip(moves[:, t], 0, 63).astype(_U), _U(0))
        if np.any(live & ((move & legal) == 0)):
            g = int(np.nonzero(live & ((move & legal) == 0))[0][0])
            raise DataError(f"game {g}: move {t + 1} {SQUARES[moves[g, t]]} is illegal")
        f = _np_flips(me, opp, move)
        nme, nopp, nlegal = _hand_over(me | f | move, opp & ~f)
        me, opp, legal = (np.where(live, a, b) for a, b in ((nme, me), (nopp, opp), (nlegal, legal)))
        board[:, t] = np.where(live[:, None], np_masks(me) * MINE + np_masks(opp) * THEIRS, EMPTY)
        legal_out[:, t] = np_masks(legal) & live[:, None]
        flipped[:, t] = np_masks(f)
    return GroundTruth(board=board, legal=legal_out, flipped=flipped)


def pad_games(games: list[list[int]], steps: int = 60) -> np.ndarray:
    """(n, steps) int64 square indices, -1 after each game's end."""
    out = np.full((len(games), steps), -1, dtype=np.int64)
    for i, g in enumerate(games):
        out[i, : len(g)] = g[:steps]
    return out


def format_game(moves: list[int]) -> str:
    return " ".join(SQUARES[m] for m in moves)


def parse_game(text: str, where: str = "game") -> list[int]:
    """Square indices of a move string such as "f5 d6 c3"; an unknown or illegal move raises a one-line DataError."""
    game, moves = Othello(), []
    for i, tok in enumerate(text.split()):
        sq = SQUARE_INDEX.get(tok.lower())
        if sq is None:
            raise DataError(f"{where}: move {i + 1} {tok!r} is not a square (a1 .. h8)")
        if game.over():
            raise DataError(f"{where}: move {i + 1} {tok!r} comes after the game has ended")
        legal = game.legal()
        if not (legal >> sq & 1):
            names = " ".join(SQUARES[s] for s in _bits(legal))
            raise DataError(f"{where}: move {i + 1} {tok!r} is illegal here; legal moves: {names}")
        game.play(sq)
        moves.append(sq)
    return moves
