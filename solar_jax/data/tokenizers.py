"""Tokenizers behind one small interface (encode_batch, decode, vocab_size, eos_id, bos_id):
UTF-8 bytes, a Hugging Face tokenizer directory (tokenizer.json, no remote code), or a
sentencepiece .model file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from solar_jax.errors import SolarError

class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256, EOS = 0, no BOS): tests and tiny models."""

    vocab_size = 256
    bos_id = None
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode("utf-8") if b != 0]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A local Hugging Face tokenizer (tokenizer.json or sentencepiece tokenizer.model)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise SolarError(f"cannot load a tokenizer from {path} ({type(e).__name__})") from None
        self.vocab_size = len(self._tok)
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        if self.eos_id is None:
            raise SolarError(f"tokenizer in {path} has no EOS token")

    @property
    def hf(self):
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        # add_special_tokens follows the tokenizer's convention: Llama/Mistral prepend <s>,
        # SmolLM2 adds nothing.
        return self._tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


class SentencePieceTokenizer:
    """A sentencepiece model file (tokenizer.model); BOS/EOS from the model's own ids."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise SolarError(f"cannot load sentencepiece model {path} ({type(e).__name__})") from None
        self.vocab_size = self._sp.GetPieceSize()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        if self.eos_id is None:
            raise SolarError(f"sentencepiece model {path} has no EOS id")

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        ids = self._sp.EncodeAsIds(list(texts))
        if add_special_tokens and self.bos_id is not None:
            ids = [[self.bos_id] + x for x in ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds(list(ids))


def load_tokenizer(spec: str, model_dir: str | None = None):
    """'bytes', a sentencepiece .model file, a directory with tokenizer files, or '' for the
    model's own directory."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec.endswith(".model"):
        if not Path(spec).is_file():
            raise SolarError(f"sentencepiece model {spec} does not exist")
        return SentencePieceTokenizer(spec)
    path = spec or model_dir
    if not path:
        raise SolarError("no tokenizer: set tokenizer (a directory, or 'bytes') or model_dir")
    if not Path(path).is_dir():
        raise SolarError(f"tokenizer directory {path} does not exist")
    return HFTokenizer(path)
