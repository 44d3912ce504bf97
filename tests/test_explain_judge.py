"""The local judge answers a batch of questions (shared prefix computed once, tails padded) exactly as it answers
each alone in a plain forward pass; the explanation stops after its first line without changing."""

from __future__ import annotations

import pytest

from sparsecode.explain.llm import JUDGE_BATCH, LocalChat
from sparsecode.explain.prompts import detection_messages, fuzzing_messages

TEMPLATE = (
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] "
    "{% endif %}"
)
EXCERPTS = [
    "the cat sat",
    "In 1999 there were 42 apples and 7 oranges on the table, said the farmer from Oslo",
    "Paris",
    "a <<sunny>> morning at the beach with some bread and tea",
    "numbers like 12, 13 and 14 keep coming back in the report of the third quarter of the year",
]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, minilm_dir):
    """A 2-layer Llama (rotary positions, grouped KV heads) with random seeded weights, MiniLM's tokenizer and a
    plain chat template: what LocalChat needs of a model, small."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so yes and no are far apart
        model.lm_head.weight.normal_(0, 1)
    model.eval().save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(out))
    return out


def _same_as_alone(chat: LocalChat, questions, distinct: bool = True) -> None:
    alone = [chat.p_yes_alone(q) for q in questions]
    batched = chat.judge(questions)
    assert [a.p_yes for a in batched] == pytest.approx(alone, abs=1e-5)
    assert [a.yes for a in batched] == [p > 0.5 for p in alone]
    assert not distinct or len({round(p, 3) for p in alone}) > 1  # the questions do get different answers


def test_batched_judge_matches_one_question_at_a_time(tiny_llama_dir):
    chat = LocalChat(str(tiny_llama_dir))
    # one feature's test set: the same explanation, excerpts of different lengths (padding between prefix and tail)
    _same_as_alone(chat, [detection_messages("numbers and dates", e) for e in EXCERPTS])
    # questions sharing only the start of the template, more of them than one batch holds, and a lone question
    mixed = [detection_messages(f"explanation {i}", EXCERPTS[i % 5]) for i in range(JUDGE_BATCH + 3)]
    _same_as_alone(chat, mixed + [fuzzing_messages("weather words", EXCERPTS[3])])
    _same_as_alone(chat, [detection_messages("weather words", EXCERPTS[0])] * 2, distinct=False)  # all but 1 shared
    assert chat.usage.requests == 5 + JUDGE_BATCH + 4 + 2  # one request per question, as over HTTP


def test_explanation_stops_after_its_first_line_unchanged(tiny_llama_dir):
    from sparsecode.explain.prompts import explain_messages, parse_explanation

    chat = LocalChat(str(tiny_llama_dir))
    messages = explain_messages(EXCERPTS)
    whole = chat.chat(messages, 40)
    short = chat.chat(messages, 40, first_line=True)
    assert parse_explanation(short) == parse_explanation(whole)
    assert whole.startswith(short)
