"""Ablation over a corpus, with known answers: at the final norm (read by the LM head position by position) zeroing
a latent changes the prediction only where it fired, so the "other tokens" effect is exactly zero; a latent that
never fires has no effect at all; the numbers equal a direct computation."""

from __future__ import annotations

import pytest
import torch
from lm_runs import NEVER, write_run

from sparsecode.errors import ConfigError, DataError
from sparsecode.interventions import intervene, zero_latent
from sparsecode.interventions.ablate import ablate_features, format_ablation
from sparsecode.interventions.lm import chunk_batches, next_token_losses
from sparsecode.run import load_run


@pytest.fixture(scope="module")
def final_run(tmp_path_factory, tiny_gpt2_dir):
    return load_run(write_run(tmp_path_factory.mktemp("abl") / "run", tiny_gpt2_dir, hook="transformer.ln_f"))


def test_ablation_at_the_last_point_only_moves_the_tokens_it_fired_on(final_run):
    result = ablate_features(final_run, [0, 1, NEVER], max_tokens=300, progress=False)
    rows = {r["feature"]: r for r in result["features"]}
    assert result["site"] == "transformer.ln_f" and result["scored_tokens"] > 0
    for f in (0, 1):
        r = rows[f]
        assert r["active_tokens"] > 0 and r["other_tokens"] > 0
        assert r["ce_increase_other"] == 0.0 and r["kl_other"] == 0.0
        assert r["kl_active"] > 0
    never = rows[NEVER]
    assert never["active_tokens"] == 0 and never["density"] == 0.0
    assert never["ce_increase_all"] == 0.0 and never["kl_other"] == 0.0
    # the active-token number, computed directly
    source = final_run.source()
    dce, n = 0.0, 0
    with torch.inference_mode():
        for enc, keep in chunk_batches(source, "eval", 300, 4):
            with intervene(final_run, positions=keep, record=True) as trace:
                clean = final_run.model(**enc).logits
            active = torch.zeros(keep.shape, dtype=torch.bool)
            active[keep] = trace.latents[0][:, 0] > 0
            with intervene(final_run, [zero_latent(0)], positions=keep):
                ablated = final_run.model(**enc).logits
            ce_c, valid, _ = next_token_losses(clean, enc)
            ce_a, _, _ = next_token_losses(ablated, enc)
            a = active[:, :-1][valid]
            dce += float((ce_a - ce_c)[a].double().sum())
            n += int(a.sum())
    assert rows[0]["active_tokens"] == n
    assert rows[0]["ce_increase_active"] == pytest.approx(dce / n, rel=1e-6)
    table = format_ablation(result)
    assert "dCE active" in table and len(table.splitlines()) == 5


def test_top_features_by_density_and_bad_input(final_run, tmp_path, tiny_bert_dir):
    result = ablate_features(final_run, None, top=3, max_tokens=200, progress=False)
    densities = [r["density"] for r in result["features"]]
    assert len(densities) == 3 and densities == sorted(densities, reverse=True) and densities[-1] > 0
    with pytest.raises(ConfigError, match="feature 99 is out of range"):
        ablate_features(final_run, [99], progress=False)
    encoder = load_run(write_run(tmp_path / "enc", tiny_bert_dir, hook="encoder.layer.0"))
    with pytest.raises(DataError, match="not a causal LM"):
        ablate_features(encoder, [0], progress=False)
