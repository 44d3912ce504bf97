"""Othello contexts as boards: the position at a context's centre token, replayed from the game's moves, and the
feature's board correlation as square shading (torch-free: the rules are numpy bitboards)."""

from __future__ import annotations

from typing import Any

from ..worlds import othello

STATE_COLOURS = {othello.EMPTY: "60,150,80", othello.MINE: "40,90,220", othello.THEIRS: "215,70,40"}
"""RGB of the shading for a square the feature correlates with being empty / mine / theirs."""


def context_board(context: dict[str, Any]) -> dict[str, Any] | None:
    """The position after the context's centre token, or None when the window does not start at the game's start
    (then the moves before it are unknown) or its moves are not a legal game.

    Returns squares (64,) EMPTY / MINE / THEIRS relative to the player to move, the last move's square index
    (None before the first move), the player to move and the moves read.
    """
    moves = [t["text"].strip().lower() for t in context["tokens"][: context["center"] + 1]]
    moves = [m for m in moves if m in othello.SQUARE_INDEX]
    if len(moves) != context["position"]:  # a game's token p is its move p ([BOS] first): the window cut moves off
        return None
    game = othello.Othello()
    for name in moves:
        square = othello.SQUARE_INDEX[name]
        if game.over() or not game.legal() >> square & 1:
            return None
        game.play(square)
    return {
        "squares": game.board().tolist(),
        "last": othello.SQUARE_INDEX[moves[-1]] if moves else None,
        "to_move": "black" if game.turn == 0 else "white",
        "moves": len(moves),
    }


def square_shading(correlation: list[list[float]]) -> list[dict[str, Any]]:
    """Per square (64): the state the feature correlates with most positively, that correlation, and the CSS
    colour to shade it with (alpha = the correlation, 0 when no state correlates positively)."""
    out = []
    for i, per_state in enumerate(correlation):
        state = max(range(len(per_state)), key=lambda s: per_state[s])
        r = max(per_state[state], 0.0)
        out.append(
            {
                "square": othello.SQUARES[i],
                "state": othello.STATE_NAMES[state],
                "correlation": r,
                "rgb": STATE_COLOURS[state],
            }
        )
    return out
