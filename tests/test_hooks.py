"""The hooks module on tiny random BERT / GPT-2 / Llama models built from configs: captures equal
``output_hidden_states``, an identity edit is bitwise invisible, a zero edit equals zero-ablation by hand, stopping
skips later layers, hooks never outlive their block, and threads sharing a model never see each other's hooks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sparsecode.errors import DataError
from sparsecode.hooks import (
    HookPoint,
    StopForward,
    capture,
    edit,
    exclusive,
    find_module,
    intercept,
    model_lock,
    run_and_capture,
)


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return BertModel(cfg).eval(), "encoder.layer.{}"


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    ).eval(), "transformer.h.{}"


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval(), "model.layers.{}"


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request):
    model, layer = MODELS[request.param]()
    return request.param, model, layer


def _inputs(seed: int = 1, batch: int = 3, seq: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def _out(model, inputs):
    o = model(**inputs)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _no_hooks(model) -> bool:
    """No hook of sparsecode.hooks is left on any module (transformers installs some of its own, lazily)."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return not any(h.__module__ == "sparsecode.hooks" for h in hooks)


@torch.inference_mode()
def test_capture_equals_output_hidden_states(tiny):
    _, model, layer = tiny
    inputs = _inputs()
    hidden = model(**inputs, output_hidden_states=True).hidden_states  # embeddings, layer 0, layer 1 (maybe normed)
    points = {
        "out0": HookPoint.at(model, layer.format(0)),
        "in1": HookPoint.at(model, layer.format(1), "input"),
        "in0": HookPoint.at(model, layer.format(0), "input"),
    }
    with capture(points) as got:
        model(**inputs)
    assert torch.equal(got["out0"], hidden[1]) and torch.equal(got["in1"], hidden[1])
    assert torch.equal(got["in0"], hidden[0])
    assert _no_hooks(model)


@torch.inference_mode()
def test_identity_edit_is_bitwise_invisible(tiny):
    _, model, layer = tiny
    inputs = _inputs()
    clean = _out(model, inputs)
    positions = torch.zeros(3, 7, dtype=torch.bool)
    positions[1, 2:5] = True
    for side in ("output", "input"):
        point = HookPoint.at(model, layer.format(1), side)
        with edit(point, lambda a: a.clone()):
            assert torch.equal(_out(model, inputs), clean)
        with edit(point, lambda rows: rows.float() * 1.0, positions=positions):
            assert torch.equal(_out(model, inputs), clean)
    assert _no_hooks(model)


@torch.inference_mode()
def test_zero_edit_equals_zero_ablation_by_hand():
    """Zeroing the last block's output at chosen positions: there the logits are the head applied to a zero
    hidden state; elsewhere they are the clean logits (nothing after the last block mixes positions)."""
    for name in ("gpt2", "llama"):
        model, layer = MODELS[name]()
        inputs = _inputs()
        clean = model(**inputs).logits  # (B, T, V)
        positions = torch.zeros(3, 7, dtype=torch.bool)
        positions[0, 1] = positions[2, 3:] = True
        with edit(HookPoint.at(model, layer.format(1)), torch.zeros_like, positions=positions):
            ablated = model(**inputs).logits
        final_norm = model.transformer.ln_f if name == "gpt2" else model.model.norm
        by_hand = model.lm_head(final_norm(torch.zeros(16)))  # (V,)
        torch.testing.assert_close(ablated[positions], by_hand.expand(int(positions.sum()), -1))
        assert torch.equal(ablated[~positions], clean[~positions])
        with edit(HookPoint.at(model, layer.format(1)), torch.zeros_like):  # everywhere
            torch.testing.assert_close(model(**inputs).logits, by_hand.expand_as(clean))


def _count_calls(modules):
    counts = {name: 0 for name in modules}
    handles = []
    for name, m in modules.items():

        def hook(*_, name=name):
            counts[name] += 1

        handles.append(m.register_forward_hook(hook))
    return counts, handles


@torch.inference_mode()
def test_stop_skips_later_layers(tiny):
    _, model, layer = tiny
    later = {"layer1": find_module(model, layer.format(1))}
    counts, handles = _count_calls(later)
    try:
        got = run_and_capture(model, {"a": HookPoint.at(model, layer.format(0))}, **_inputs())
        assert counts["layer1"] == 0 and got["a"].shape == (3, 7, 16)
        # the input of layer 1 is also reached before layer 1 runs
        got = run_and_capture(model, {"a": HookPoint.at(model, layer.format(1), "input")}, **_inputs())
        assert counts["layer1"] == 0
        with capture({"a": HookPoint.at(model, layer.format(0))}, stop=False):
            model(**_inputs())
        assert counts["layer1"] == 1
    finally:
        for h in handles:
            h.remove()
    assert _no_hooks(model)


@torch.inference_mode()
def test_hooks_removed_after_exceptions_and_stop_never_escapes(tiny):
    _, model, layer = tiny
    point = HookPoint.at(model, layer.format(0))
    with pytest.raises(RuntimeError, match="boom"), capture({"a": point}), edit(point, lambda a: a):
        assert not _no_hooks(model)
        raise RuntimeError("boom")
    assert _no_hooks(model)

    def bad(_a):
        raise KeyError("inside the hook")

    with pytest.raises(KeyError), edit(point, bad):
        model(**_inputs())
    assert _no_hooks(model)
    # a stop raised by an enclosing capture passes through an inner one and is swallowed by its owner
    with capture({"outer": point}, stop=True) as outer:
        with capture({"inner": HookPoint.at(model, layer.format(1))}) as inner:
            model(**_inputs())
        pytest.fail("the outer stop must leave the block")  # pragma: no cover
    assert "outer" in outer and "inner" not in inner and _no_hooks(model)
    with pytest.raises(StopForward), capture({"a": point}):  # raised by nobody's capture: not swallowed
        raise StopForward(object())


@torch.inference_mode()
def test_model_output_and_keyword_inputs():
    """A module returning a ModelOutput (BERT's encoder) and a module called with keywords only."""
    model, _ = _bert()
    inputs = _inputs()
    clean = model(**inputs).last_hidden_state
    encoder = HookPoint.at(model, "encoder")
    assert torch.equal(run_and_capture(model, {"e": encoder}, **inputs)["e"], clean)
    with edit(encoder, lambda a: a * 2):
        assert torch.equal(model(**inputs).last_hidden_state, clean * 2)

    lin = torch.nn.Linear(4, 2)
    x = torch.randn(5, 4)
    with capture({"x": HookPoint(lin, "input")}) as got:
        lin(input=x)
    assert torch.equal(got["x"], x)
    with edit(HookPoint(lin, "input"), torch.zeros_like):
        assert torch.equal(lin(input=x), lin.bias.expand(5, 2))


@torch.inference_mode()
def test_bad_points_and_replacements_are_one_line_errors():
    model, layer = _gpt2()
    with pytest.raises(DataError, match="close matches: transformer.h.1"):
        HookPoint.at(model, "transformer.h1")
    with pytest.raises(DataError, match="side"):
        HookPoint(model, "inside")  # type: ignore[arg-type]
    unused = HookPoint(torch.nn.Linear(2, 2))
    with pytest.raises(DataError, match="never reached"):
        run_and_capture(model, {"unused": unused}, **_inputs())
    first = HookPoint.at(model, layer.format(0))
    with pytest.raises(DataError, match="expected \\(3, 7, 16\\)"), edit(first, lambda a: a[:, :2]):
        model(**_inputs())
    wrong = torch.ones(2, 7, dtype=torch.bool)
    with pytest.raises(DataError, match="positions are \\(2, 7\\)"), edit(first, lambda a: a, positions=wrong):
        model(**_inputs())
    assert _no_hooks(model)


@torch.inference_mode()
def test_threads_sharing_a_model_never_see_each_others_hooks():
    """8 threads hammer one model: half capture with stop, half edit with zeros or run plainly; every result
    equals its single-threaded answer."""
    model, layer = _gpt2()
    point0, point1 = HookPoint.at(model, layer.format(0)), HookPoint.at(model, layer.format(1))
    inputs = [_inputs(seed) for seed in range(8)]
    want_capture = [run_and_capture(model, {"a": point0}, **x)["a"].clone() for x in inputs]
    want_plain = [model(**x).logits for x in inputs]
    with edit(point1, torch.zeros_like):
        want_zeroed = [model(**x).logits for x in inputs]

    def job(i: int) -> bool:
        x = inputs[i % 8]
        with torch.inference_mode():
            if i % 3 == 0:
                return torch.equal(run_and_capture(model, {"a": point0}, **x)["a"], want_capture[i % 8])
            if i % 3 == 1:
                with edit(point1, torch.zeros_like):
                    return torch.equal(model(**x).logits, want_zeroed[i % 8])
            return torch.equal(model(**x).logits, want_plain[i % 8])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(240)))
    assert _no_hooks(model)


def test_hooks_act_only_in_their_own_thread():
    model, layer = _gpt2()
    x = _inputs()
    with torch.inference_mode():
        clean = model(**x).logits
    seen: list[int] = []
    other: dict[str, torch.Tensor] = {}
    with intercept(HookPoint.at(model, layer.format(0)), lambda a: seen.append(threading.get_ident())):

        def plain() -> None:
            with torch.inference_mode():
                other["logits"] = model(**x).logits

        t = threading.Thread(target=plain)
        t.start()
        t.join()
    assert seen == [] and torch.equal(other["logits"], clean)


def test_exclusive_is_one_reentrant_lock_per_model():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    free: dict[str, bool] = {}

    def probe() -> None:
        for name, m in (("a", a), ("b", b)):
            free[name] = model_lock(m).acquire(blocking=False)
            if free[name]:
                model_lock(m).release()

    with exclusive(a), exclusive(a):  # re-entrant in the holding thread
        t = threading.Thread(target=probe)
        t.start()
        t.join()
    assert free == {"a": False, "b": True}  # held against other threads; another model's lock is separate
    probe()
    assert free == {"a": True, "b": True}
