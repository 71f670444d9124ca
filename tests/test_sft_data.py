"""Instruction and preference data: masks, templates, truncation, bad rows, synthetic math."""

import json

import numpy as np
import pytest

from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.data import synth_math
from solar_jax.data import sft_data
from solar_jax.errors import SolarError

ROWS = [
    ("a", {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5\n#### 5"}),
    ("b", {"instruction": "Summarise.", "input": "The cat sat.", "output": "A cat sat."}),
    ("c", {"prompt": "Capital of France?", "completion": "Paris."}),
    ("d", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "2*4?"}, {"role": "assistant", "content": "8"}]}),
]


@pytest.fixture(scope="module")
def tok(real_model_dir):
    return tokenizer_lib.load_tokenizer("", str(real_model_dir))


@pytest.mark.parametrize("template", sft_data.TEMPLATES)
def test_loss_mask_covers_exactly_the_response_unpacked_and_packed(tok, template):
    examples, counts = sft_data.sft_examples(ROWS, template, tok, seq_len=256)
    assert counts.total == 4 and counts.cut == 0 and counts.dropped == 0
    responses = []
    for (where, row), ex in zip(ROWS, examples):
        _, response = sft_data.parse_sft_row(row, where)
        response_ids = tok.encode_batch([response])[0] + [tok.eos_id]
        responses.append(response_ids)
        np.testing.assert_array_equal(ex["targets"][ex["loss_mask"] == 1], response_ids)
        # Every unmasked target is a prompt token: the prompt is the sequence minus the response.
        prompt_len = len(ex["inputs"]) + 1 - len(response_ids)
        assert (ex["loss_mask"] == 0).sum() == prompt_len - 1
        padded = sft_data.pad_example(ex, 256)
        assert padded["loss_mask"][padded["segment_ids"] == 0].sum() == 0
        np.testing.assert_array_equal(padded["targets"][padded["loss_mask"] == 1], response_ids)
    # Packed: each segment's masked targets are one example's response; padding unmasked.
    batch = next(iter(sft_data.train_dataset(examples, 256, 2, seed=0, packing=True)))
    seen = []
    for row in range(2):
        seg = batch["segment_ids"][row]
        assert batch["loss_mask"][row][seg == 0].sum() == 0
        for s in np.unique(seg[seg > 0]):
            sel = seg == s
            seen.append(batch["targets"][row][sel][batch["loss_mask"][row][sel] == 1].tolist())
    assert all(r in responses for r in seen) and len(seen) >= 2


def test_templates_render_the_expected_text(tok):
    prompt, _ = sft_data.parse_sft_row(ROWS[1][1], "b")
    assert sft_data.render_prompt(prompt, "alpaca").endswith(
        "### Instruction:\nSummarise.\n\n### Input:\nThe cat sat.\n\n### Response:\n")
    prompt, _ = sft_data.parse_sft_row(ROWS[3][1], "d")
    assert sft_data.render_prompt(prompt, "solar") == (
        "### User:\nHi\n\n### Assistant:\nHello!\n\n### User:\n2*4?\n\n### Assistant:\n")
    assert "<|im_start|>assistant" in sft_data.render_prompt(prompt, "chat", tok)


def test_truncation_cuts_responses_and_drops_prompts_that_do_not_fit(tok):
    long_prompt = {"prompt": "word " * 300, "completion": "ok"}
    long_answer = {"prompt": "Say it.", "completion": "la " * 300}
    examples, counts = sft_data.sft_examples([("x", long_prompt), ("y", long_answer), ROWS[2]], "solar", tok, 64)
    assert (counts.total, counts.cut, counts.dropped) == (3, 1, 1)
    assert len(examples) == 2 and all(len(e["inputs"]) <= 64 for e in examples)
    assert examples[0]["loss_mask"].sum() > 0  # the cut response keeps what fits
    assert "1 cut" in counts.report("sft") and "1 dropped" in counts.report("sft")


def test_dpo_rows_strings_and_messages(tok):
    rows = [("s", {"prompt": "2+2?", "chosen": "2 + 2 = 4.\n#### 4", "rejected": "#### 5"}),
            ("m", {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}],
                   "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "go away"}]})]
    examples, counts = sft_data.dpo_examples(rows, "chat", tok, 128)
    assert len(examples) == 2 and counts.dropped == 0
    for ex, (where, row) in zip(examples, rows):
        _, chosen, rejected = sft_data.parse_dpo_row(row, where)
        np.testing.assert_array_equal(ex["chosen_targets"][ex["chosen_loss_mask"] == 1],
                                      tok.encode_batch([chosen])[0] + [tok.eos_id])
        np.testing.assert_array_equal(ex["rejected_targets"][ex["rejected_loss_mask"] == 1],
                                      tok.encode_batch([rejected])[0] + [tok.eos_id])
        n = int((ex["chosen_loss_mask"] == 0).sum())  # the same prompt before both
        np.testing.assert_array_equal(ex["chosen_inputs"][:n], ex["rejected_inputs"][:n])


@pytest.mark.parametrize("row, match", [
    ({"instruction": "x"}, "missing fields"),
    ({"prompt": "x", "completion": "   "}, "empty response"),
    ({"messages": [{"role": "user", "content": "x"}]}, "last message must be the assistant"),
])
def test_bad_sft_rows(row, match):
    with pytest.raises(SolarError, match=match):
        sft_data.parse_sft_row(row, "f.jsonl:7")


@pytest.mark.parametrize("row, match", [
    ({"prompt": "x", "chosen": "a"}, "missing field rejected"),
    ({"prompt": "x", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "empty chosen"),
])
def test_bad_dpo_rows(row, match):
    with pytest.raises(SolarError, match=f"f.jsonl:3: .*{match}"):
        sft_data.parse_dpo_row(row, "f.jsonl:3")


def test_unknown_template(tok):
    with pytest.raises(SolarError, match="unknown template 'vicuna'; known: alpaca, solar, chat"):
        sft_data.sft_examples(ROWS, "vicuna", tok, 64)


def test_synthetic_math_sets(tmp_path):
    train, held = synth_math.generate(300, 50, seed=1)
    assert not {p["question"] for p in train} & {p["question"] for p in held}
    assert not {p["rephrased_question"] for p in train} & {p["rephrased_question"] for p in held}
    for p in train[:50]:
        assert p["rephrased_answer"].endswith(f"#### {p['answer']}") and p["original_answer"].endswith(f"#### {p['answer']}")
        assert p["rephrased_answer"] != p["original_answer"]
    assert synth_math.generate(300, 50, seed=1) == (train, held)
    out = synth_math.write_sets(str(tmp_path / "sm"), 40, 10, seed=0)
    align = [json.loads(l) for l in (out / "math_alignment_train.jsonl").read_text().splitlines()]
    instruct = [json.loads(l) for l in (out / "math_instruct_train.jsonl").read_text().splitlines()]
    assert len(align) == len(instruct) == 40
    assert align[0]["chosen"] == instruct[0]["output"] and align[0]["prompt"] == instruct[0]["instruction"]
    assert {"prompt", "chosen", "rejected"} == set(align[0])
