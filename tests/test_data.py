"""Data: file formats, tokenizers, the eval split, process sharding of documents."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solar_jax.data import pretrain as pretrain_lib
from solar_jax.data import text as text_lib
from solar_jax.data import tokenizers as tokenizer_lib
from solar_jax.errors import SolarError


def test_txt_jsonl_parquet_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n\n\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    pq.write_table(pa.table({"text": ["from parquet", "again"]}), tmp_path / "c.parquet")
    files = text_lib.expand_files(f"{tmp_path}/a.txt,{tmp_path}/*.jsonl,{tmp_path}/c.parquet")
    docs = text_lib.read_documents(files)
    assert docs == ["first paragraph\nstill first", "second paragraph", "from jsonl", "two", "from parquet", "again"]


def test_bad_data_files_name_the_problem(tmp_path):
    with pytest.raises(SolarError, match="does not exist"):
        text_lib.expand_files(f"{tmp_path}/*.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(SolarError, match=r"bad.jsonl:2: no string field 'text'"):
        text_lib.read_documents([tmp_path / "bad.jsonl"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SolarError, match="unsupported file type"):
        text_lib.read_documents([tmp_path / "x.csv"])


def test_eval_split_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(100)]
    train, held = text_lib.split_eval(docs, 0.1, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and len(train) + len(held) == 100
    assert text_lib.split_eval(docs, 0.1, seed=3) == (train, held)
    assert text_lib.split_eval(docs, 0.1, seed=4)[1] != held


def test_hf_and_sentencepiece_tokenizers(tmp_path, real_model_dir):
    tok = tokenizer_lib.load_tokenizer("", str(real_model_dir))
    ids = text_lib.tokenize_documents(["Hello world"], tok)[0]
    assert ids[-1] == tok.eos_id and tok.decode(ids[:-1]) == "Hello world"
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(text_lib.builtin_documents("pydoc")[:40]))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    sp = tokenizer_lib.load_tokenizer(str(tmp_path / "sp.model"))
    ids = text_lib.tokenize_documents(["the import statement"], sp)[0]
    assert ids[0] == 1 and ids[-1] == 2 and sp.decode(ids[1:-1]) == "the import statement"
    with pytest.raises(SolarError, match="does not exist"):
        tokenizer_lib.load_tokenizer(str(tmp_path / "missing.model"))


def test_packed_rows_carry_every_token_once():
    docs = [np.arange(1, n + 1, dtype=np.int32) for n in (5, 9, 3, 12)]
    batches = pretrain_lib.eval_batches(docs, 8, 2, 0)
    got = np.concatenate([b["inputs"][b["inputs_segment_ids"] > 0] for b in batches])
    np.testing.assert_array_equal(got, np.concatenate([d[:-1] for d in docs]))
    targets = np.concatenate([b["targets"][b["targets_segment_ids"] > 0] for b in batches])
    np.testing.assert_array_equal(targets, np.concatenate([d[1:] for d in docs]))
