"""Steering with known answers: a planted direction at the final norm makes the greedy continuation the token the
linear readout predicts; sampling is reproducible with a seed; encoders report the embedding shift and refuse to
generate; bad input is refused in one line."""

from __future__ import annotations

import pytest
import torch
from lm_runs import NEVER, write_run

from sparsecode.errors import ConfigError
from sparsecode.interventions.lm import single_token
from sparsecode.interventions.steer import format_steering, steer_embedding, steer_text, typical_activation
from sparsecode.run import load_run


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_gpt2_dir):
    run = load_run(write_run(tmp_path_factory.mktemp("steer") / "run", tiny_gpt2_dir, hook="transformer.ln_f"))
    W_U = run.model.lm_head.weight.detach()
    target = run.tokenizer.convert_tokens_to_ids("paris")
    with torch.no_grad():
        run.sae.W_dec[3] = W_U[target] / W_U[target].norm()
    return run, target


def test_steering_a_planted_direction_makes_the_model_say_it(planted):
    run, target = planted
    r = steer_text(run, 3, 40.0, "the cat sat on the", max_new_tokens=6, typical=1.0)
    ids = run.tokenizer(r["steered"], add_special_tokens=False)["input_ids"]
    assert ids == [target] * 6
    assert "paris" not in r["baseline"].split()
    assert r["value"] == 40.0 and "paris" in format_steering(r)
    # zero strength: the steered text is the baseline
    r0 = steer_text(run, 3, 0.0, "the cat sat on the", max_new_tokens=6, typical=1.0)
    assert r0["steered"] == r0["baseline"]


def test_sampling_is_reproducible_with_a_seed(planted):
    run, _ = planted
    a = steer_text(run, 0, 2.0, "dogs bark", max_new_tokens=8, sample=True, seed=5)
    b = steer_text(run, 0, 2.0, "dogs bark", max_new_tokens=8, sample=True, seed=5)
    c = steer_text(run, 0, 2.0, "dogs bark", max_new_tokens=8, sample=True, seed=6)
    assert (a["baseline"], a["steered"]) == (b["baseline"], b["steered"])
    assert (a["baseline"], a["steered"]) != (c["baseline"], c["steered"])
    assert a["typical_activation"] > 0


def test_bad_steering_input_is_refused(planted, tmp_path, tiny_bert_dir):
    run, _ = planted
    with pytest.raises(ConfigError, match="feature 24 is out of range"):
        steer_text(run, 24, 1.0, "hello")
    with pytest.raises(ConfigError, match="prompt is empty"):
        steer_text(run, 0, 1.0, "   ", typical=1.0)
    with pytest.raises(ConfigError, match=f"feature {NEVER} never fired"):
        typical_activation(run, NEVER)
    with pytest.raises(ConfigError, match="is 2 tokens .* not one"):
        single_token(run.tokenizer, " paris london")
    encoder = load_run(write_run(tmp_path / "enc", tiny_bert_dir, hook="encoder.layer.0"))
    with pytest.raises(ConfigError, match="encoder-only model and cannot generate"):
        steer_text(encoder, 0, 1.0, "hello there")


def test_encoder_steering_moves_the_sentence_embedding(tmp_path, tiny_bert_dir):
    run = load_run(write_run(tmp_path / "enc", tiny_bert_dir, hook="encoder.layer.0"))
    r = steer_embedding(run, 0, 10.0, "the cat sat on the mat", typical=1.0)
    assert r["cosine"] < 0.999 and len(r["shift_towards"]) == 8 and r["nearest_before"]
    same = steer_embedding(run, 0, 0.0, "the cat sat on the mat", typical=1.0)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-6) and same["nearest_after"] == same["nearest_before"]
    assert "sentence embedding" in format_steering(r)
