"""What `sparsecode explain` does, as two dataclasses (torch-free): the sampling and scoring of each feature
(ExplainConfig) and the language model it asks (LLMConfig)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..configs import check_choice, check_field_types, check_float, check_int
from ..errors import ConfigError

SCORERS = ("detection", "fuzzing")


@dataclass
class ExplainConfig:
    """How each feature is explained and scored."""

    explain_examples: int = 10
    """Top-activating contexts shown to the explainer (the best ones; the rest are kept for testing)."""
    test_examples: int = 10
    """Contexts per class in each score: this many where the feature fires and as many where it does not."""
    scorers: str = "detection,fuzzing"
    """Scores to compute, comma-separated: detection (does the feature fire in this text?), fuzzing (are these
    marked tokens the ones it fires on?)."""
    baseline: bool = True
    """Also score each feature with another feature's explanation (shuffled), the chance-level calibration."""
    redo: bool = False
    """Explain and score the chosen features again, replacing what is stored (default: keep it and skip them)."""
    seed: int = 0
    """Seed for the choice of test contexts, fuzzing marks and the shuffle of the baseline."""

    def __post_init__(self) -> None:
        check_field_types(self, "explain")
        check_int("explain.explain_examples", self.explain_examples, minimum=1)
        check_int("explain.test_examples", self.test_examples, minimum=1)
        for name in self.scorer_list:
            check_choice("explain.scorers", name, SCORERS)

    @property
    def scorer_list(self) -> list[str]:
        names = [s.strip() for s in self.scorers.split(",") if s.strip()]
        if not names:
            raise ConfigError(f"explain.scorers must name at least one of {', '.join(SCORERS)}")
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LLMConfig:
    """The language model that writes the explanations and judges them."""

    llm: str = "local"
    """"local" (an in-process transformers model) or the base URL of an OpenAI-compatible chat API, e.g.
    http://127.0.0.1:8080/v1."""
    llm_model: str | None = None
    """Model name sent to the API (required with a URL); with local, a transformers model folder (default: the
    embedded SmolLM2-135M-Instruct)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent as a bearer token if set; never written anywhere)."""
    concurrency: int = 4
    """Features worked on at once (requests in flight); the local model answers one at a time."""
    max_requests: int | None = None
    """Stop after this many requests (the features finished so far are kept; run again to continue)."""
    retries: int = 5
    """Retries of a request that failed for a passing reason (rate limit, server error, timeout, refused
    connection), with exponential back-off."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each next one (an endpoint's Retry-After header wins)."""
    timeout: float = 60.0
    """Seconds to wait for one answer."""
    price: str | None = None
    """USD per million prompt and completion tokens, e.g. 0.15,0.60: shows the cost so far in the progress bar."""
    device: str = "cpu"
    """Torch device of the local model."""

    def __post_init__(self) -> None:
        check_field_types(self, "llm")
        if self.llm != "local" and not self.llm.startswith(("http://", "https://")):
            raise ConfigError(f"--llm must be local or an http(s) URL of an OpenAI-compatible API, got {self.llm!r}")
        if self.llm != "local" and not self.llm_model:
            raise ConfigError("--llm URL needs --llm-model NAME (the model name the API serves)")
        check_int("llm.concurrency", self.concurrency, minimum=1)
        check_int("llm.retries", self.retries, minimum=0)
        if self.max_requests is not None:
            check_int("llm.max_requests", self.max_requests, minimum=1)
        check_float("llm.backoff", self.backoff, 0)
        check_float("llm.timeout", self.timeout, 0, low_open=True)
        self.prices  # noqa: B018 -- validates

    @property
    def prices(self) -> tuple[float, float] | None:
        if self.price is None:
            return None
        try:
            values = tuple(float(v) for v in self.price.split(","))
        except ValueError:
            values = ()
        if len(values) != 2 or min(values) < 0:
            raise ConfigError(
                f"--price must be two numbers, USD per million prompt,completion tokens; got {self.price!r}"
            )
        return values  # type: ignore[return-value]
