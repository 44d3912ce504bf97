"""Splicing and latent edits on real transformers models, with known answers: no edit (error added back) is a
bitwise no-op; zeroing a latent that never fires changes nothing; adding a planted direction moves the logits by
what the linear readout predicts."""

from __future__ import annotations

import pytest
import torch
from lm_runs import NEVER, write_run

from sparsecode.errors import ConfigError, DataError
from sparsecode.hooks import HookPoint, edit
from sparsecode.interventions import (
    Site,
    add_latent,
    intervene,
    scale_latent,
    set_latent,
    splice,
    zero_latent,
)
from sparsecode.run import load_run

SITES = {
    "residual": {"hook": "transformer.h.0"},
    "mlp": {"hook": "transformer.h.1.mlp"},
    "attention": {"hook": "transformer.h.0.attn"},
    "mlp-input": {"hook": "transformer.h.1.mlp", "side": "input"},
    "transcoder": {
        "hook": "transformer.h.1.mlp",
        "side": "input",
        "target_hook": "transformer.h.1.mlp",
        "arch": "transcoder",
    },
}


@pytest.fixture(scope="module", params=list(SITES))
def lm_run(request, tmp_path_factory, tiny_gpt2_dir):
    return load_run(write_run(tmp_path_factory.mktemp("lm") / "run", tiny_gpt2_dir, **SITES[request.param]))


def _inputs(run, texts=("The cat sat on the mat.", "Dogs bark at 7 cats")):
    return run.tokenizer(list(texts), return_tensors="pt", padding=True)


def _logits(run, enc):
    with torch.inference_mode():
        return run.model(**enc).logits


def test_no_edit_with_error_is_bitwise_noop(lm_run):
    enc = _inputs(lm_run)
    clean = _logits(lm_run, enc)
    with intervene(lm_run) as trace:
        assert torch.equal(_logits(lm_run, enc), clean)
    with intervene(lm_run, [zero_latent(NEVER)], record=True) as trace:
        assert torch.equal(_logits(lm_run, enc), clean)
    assert (trace.latents[0][:, NEVER] == 0).all() and (trace.latents[0] > 0).any()  # the others did fire
    with splice(lm_run, add_error=True):
        assert torch.equal(_logits(lm_run, enc), clean)


def test_editing_a_firing_latent_changes_the_output_exactly_by_its_decoder_row(lm_run):
    enc = _inputs(lm_run)
    clean = _logits(lm_run, enc)
    site = Site(lm_run.sae, *_points(lm_run))
    with intervene(site, record=True) as seen:  # record the latents (no edit)
        _logits(lm_run, enc)
    active = (seen.latents[0] > 0).sum(0)
    latent = int(active.argmax())  # fires somewhere
    with intervene(lm_run, [zero_latent(latent)], record=True) as trace:
        ablated = _logits(lm_run, enc)
    assert not torch.equal(ablated, clean)
    assert (trace.edited[0][:, latent] == 0).all()
    assert torch.equal(trace.latents[0], seen.latents[0])
    # the same thing by hand: the write point's activations move by -f_latent * W_dec[latent]
    f = seen.latents[0][:, latent].reshape(enc["input_ids"].shape)  # (B, T)
    row = lm_run.sae.W_dec[latent]
    with edit(site.write, lambda y: y - f[..., None] * row):
        by_hand = _logits(lm_run, enc)
    torch.testing.assert_close(ablated, by_hand, rtol=1e-5, atol=1e-5)


def _points(run):
    src = run.config.source
    read = HookPoint.at(run.model, src.hook, src.hook_side)
    write = read if src.target_hook is None else HookPoint.at(run.model, src.target_hook, src.target_hook_side)
    return read, write


def test_splice_replaces_the_point_with_the_reconstruction(lm_run):
    enc = _inputs(lm_run)
    read, write = _points(lm_run)
    sae = lm_run.sae
    if read is write:
        with edit(write, lambda y: sae(y.flatten(0, 1)).reshape(y.shape)):
            expected = _logits(lm_run, enc)
    else:  # transcoder: the target point becomes the prediction from the read point's activations
        got = {}
        from sparsecode.hooks import intercept

        with (
            intercept(read, lambda x: got.update(x=x)),
            edit(write, lambda y: sae(got["x"].flatten(0, 1)).reshape(y.shape)),
        ):
            expected = _logits(lm_run, enc)
    with splice(lm_run):
        spliced = _logits(lm_run, enc)
    torch.testing.assert_close(spliced, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(spliced, _logits(lm_run, enc))


def test_edits_only_at_chosen_positions(lm_run):
    enc = _inputs(lm_run)
    clean = _logits(lm_run, enc)
    mask = torch.zeros(enc["input_ids"].shape, dtype=torch.bool)
    mask[:, 3] = True
    with intervene(lm_run, [add_latent(0, 5.0), scale_latent(1, 3.0), set_latent(2, 1.0)], positions=mask):
        edited = _logits(lm_run, enc)
    assert torch.equal(edited[:, :3], clean[:, :3])  # causal: positions before the edit are untouched, bit for bit
    assert not torch.allclose(edited[:, 3], clean[:, 3])


def test_bad_edits_are_refused_in_one_line(lm_run):
    with (
        pytest.raises(ConfigError, match="feature 24 is out of range: .* 24 latents \\(0-23\\)"),
        intervene(lm_run, [zero_latent(24)]),
    ):
        pass
    with pytest.raises(ConfigError, match="op must be"):
        from sparsecode.interventions import LatentEdit

        LatentEdit(0, "double", 2.0)
    with (
        pytest.raises(DataError, match="positions must be"),
        intervene(lm_run, [zero_latent(0)], positions=torch.ones(1, 2, dtype=torch.bool)),
    ):
        _logits(lm_run, _inputs(lm_run))


def test_steering_a_planted_direction_moves_logits_as_the_readout_predicts(tmp_path, tiny_gpt2_dir):
    """At the final norm's output the logits are a linear readout (lm_head, no bias): adding s to a latent whose
    decoder row is the unit direction d changes every token's logit by s * (W_U[token] . d)."""
    run = load_run(write_run(tmp_path / "run", tiny_gpt2_dir, hook="transformer.ln_f"))
    W_U = run.model.lm_head.weight.detach()  # (vocab, 32)
    target = run.tokenizer.convert_tokens_to_ids("paris")
    d = W_U[target] / W_U[target].norm()
    with torch.no_grad():
        run.sae.W_dec[3] = d
    enc = _inputs(run)
    clean = _logits(run, enc)
    s = 7.5
    with intervene(run, [add_latent(3, s)]):
        steered = _logits(run, enc)
    predicted = s * (W_U @ d)  # (vocab,)
    torch.testing.assert_close(steered - clean, predicted.expand_as(clean), rtol=1e-4, atol=1e-4)
    assert float((steered - clean)[0, -1, target]) == pytest.approx(s * float(W_U[target].norm()), rel=1e-4)
    assert int((steered - clean)[0, -1].argmax()) == target


def test_encode_text_gives_tokens_and_latents(planted_run):
    from planted_run import APPLES

    run = load_run(planted_run)
    assert not run.sae.training and not any(p.requires_grad for p in run.sae.parameters())
    (out,) = run.encode_text("In 1999 there were 42 apples")
    assert out.tokens[-1] == " apples" and len(out.tokens) == out.latents.shape[0] == len(out.token_ids)
    assert out.latents.shape[1] == 8
    fires = out.latents[:, APPLES] > 0
    assert fires.tolist() == [t == " apples" for t in out.tokens]
    with pytest.raises(DataError, match="non-empty"):
        run.encode_text(["  "])
