"""Natural-language explanations of features, written and scored by a language model.

For each chosen feature of a run, an explainer model reads its top contexts from RUN/features.sqlite (activating
tokens marked) and writes a short description; a judge model then predicts, from that description alone, which
held-out contexts the feature fires on (detection) and whether marked tokens are the ones it fires on (fuzzing).
Scores (accuracy, balanced accuracy, F1) are stored beside the explanations in RUN/features.sqlite, with a
shuffled-explanation baseline. The model is any OpenAI-compatible chat API or an in-process transformers model.

Importing this package is cheap and torch-free.
"""

from __future__ import annotations

from typing import Any

from .config import ExplainConfig, LLMConfig

__all__ = ["ExplainConfig", "LLMConfig", "explain_run"]


def __getattr__(name: str) -> Any:
    if name == "explain_run":
        from .pipeline import explain_run

        return explain_run
    raise AttributeError(name)
