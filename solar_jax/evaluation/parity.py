"""python -m solar_jax.verify: solar_jax against transformers on one HF dir.

Prints the max |logit difference| on a real prompt and whether greedy generation gives the
same tokens; exits 1 when either check fails. Needs torch (the `test` extra).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from solar_jax.weights import hf
from solar_jax.errors import SolarError
from solar_jax.inference.generate import generate


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, return_dict=False))
    return tokenizer(prompt)["input_ids"]


def verify(model_dir: str, prompt: str, chat: bool = True, max_new_tokens: int = 20) -> dict:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SolarError("verify needs torch: pip install -e '.[test]'") from None
    hf.read_hf_config(model_dir)
    start = time.perf_counter()
    ours = hf.load_hf(model_dir)
    load_s = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = prompt_ids(tokenizer, prompt, chat)
    theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits.float().numpy()
        ref_tokens = theirs.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    got = np.asarray(ours(jnp.asarray([ids], jnp.int32)))
    tokens = generate(ours, [ids], max_new_tokens)[0]
    return dict(max_abs_logit_diff=float(np.abs(ref - got).max()), greedy_equal=tokens == ref_tokens,
                tokens=tokens, text=tokenizer.decode(tokens), prompt_tokens=len(ids), load_seconds=load_s)
