"""
Tokenize a text corpus into out_dir/train.bin, val.bin (token ids) and meta.json for train.py.

    python prepare_owt.py                                            # OpenWebText: 8M docs, ~9B tokens, ~54 GB download
    python prepare_owt.py --dataset=HuggingFaceFW/fineweb-edu --subset=sample-10BT --out_dir=data/fineweb_edu
    python prepare_owt.py --input=my_corpus/ --out_dir=data/my_corpus     # local .txt / .jsonl / .parquet
    python prepare_owt.py --max_docs=2000 --out_dir=data/owt_tiny          # a quick run: streams 2000 documents
    python prepare_owt.py --tokenizer=/models/Llama-3.2-1B --input=my_corpus/ --out_dir=data/my_corpus_llama3

Each document is encoded with GPT-2 BPE (special tokens in the text are plain text) followed by <|endoftext|>, or
with --tokenizer's model's own tokenizer as that model was pre-trained (its BOS first if it adds one, its EOS last;
meta.json records the tokenizer, its fingerprint and these conventions). A fixed-seed random val_fraction of the
documents (at least one) goes to val.bin. Local inputs: a .txt file is one document, a .jsonl file one per line,
a .parquet file one per row; a folder is all such files in it, recursively. A failed run leaves out_dir as it was.
"""

import json
import os
import sys

import datasets
import numpy as np
import pyarrow.compute as pc
from tqdm import tqdm

from inheritune.configurator import configure_or_exit
from inheritune.data import TOKEN_DTYPES, DataError, dtype_for_vocab, write_dataset
from inheritune.hf import ModelLoadError
from inheritune.hub import hub_unreachable
from inheritune.source import open_source
from inheritune.tokenizer import GPT2Tokenizer, HFTokenizer, TokenizerError, hf_tokenizer_meta

DEFAULTS = dict(
    dataset="Skylion007/openwebtext",  # a Hugging Face Hub dataset, or a local save_to_disk / data-files folder
    subset="",  # the Hub dataset's config name, e.g. sample-10BT for FineWeb-Edu
    split="train",
    revision="",  # a Hub revision; loading-script datasets fall back to their parquet conversion by themselves
    text_column="text",
    tokenizer="gpt2",  # gpt2 (tiktoken's GPT-2 BPE), or a Hugging Face model folder / Hub id: its own tokenizer
    input="",  # local .txt / .jsonl / .parquet file or folder; replaces --dataset when given
    max_docs=0,  # [0, inf): >0: only the first max_docs documents (streamed from the Hub, not the whole download)
    val_fraction=0.0005,  # (0, 1)
    seed=2357,  # [0, 4294967295]
    num_proc=max(1, (os.cpu_count() or 2) // 2),  # [1, inf)
    out_dir="data/openwebtext",
)
PARQUET_REVISION = "refs/convert/parquet"  # the Hub's automatic parquet copy of every public dataset
LOCAL_EXTENSIONS = (".txt", ".jsonl", ".parquet")
ROWS_PER_CHUNK = 8192  # documents per chunk when streaming token ids into the .bin files
GPT2_CONTEXT = 1024  # train.py's default block_size: a val.bin shorter than this + 1 gets a note


# -----------------------------------------------------------------------------
# loading documents: every source ends as a datasets.Dataset with one column, "text"

def only_text_column(ds, text_column, source):
    if text_column not in ds.column_names:
        raise DataError(f"{source} has no column '{text_column}' (its columns: {', '.join(ds.column_names)}); "
                        f"pass the one that holds the text with --text_column=NAME")
    dtype = getattr(ds.features[text_column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DataError(f"{source}: column '{text_column}' holds {ds.features[text_column]}, not text; "
                        f"pass the column that holds the text with --text_column=NAME")
    missing = ds.data.column(text_column).null_count
    if missing:
        raise DataError(f"{source}: {missing} of {len(ds)} documents have no '{text_column}' (null or missing); "
                        f"remove them or fill in their text")
    ds = ds.select_columns([text_column])
    return ds.rename_column(text_column, "text") if text_column != "text" else ds


def local_files(path):
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist: pass a .txt / .jsonl / .parquet file or a folder of them")
    if os.path.isfile(path):
        if not path.endswith(LOCAL_EXTENSIONS):
            raise DataError(f"input {path} is not a {' / '.join(LOCAL_EXTENSIONS)} file")
        return [path]
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.endswith(LOCAL_EXTENSIONS))
    if not files:
        raise DataError(f"input folder {path} holds no {' / '.join(LOCAL_EXTENSIONS)} files")
    return files


def first_bad_json_line(files):
    """(file, line number, reason) of the first line of files that is not a JSON object, or None."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    return path, number, f"not valid JSON: {e.msg} at column {e.colno}"
                if not isinstance(record, dict):
                    return path, number, f"a JSON {type(record).__name__}, not an object"
    return None


def read_files(builder, files, path, ext):
    """datasets.load_dataset(builder) of files; a file it cannot read is named (with the line, for .jsonl)."""
    kwargs = dict(sample_by="document") if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", **kwargs)
    except Exception as e:  # datasets' DatasetGenerationError says neither which file nor which line
        bad = first_bad_json_line(files) if builder == "json" else None
        if bad:
            raise DataError(f"{bad[0]} line {bad[1]} is {bad[2]}: fix or remove that line") from None
        cause = e.__cause__ or e
        raise DataError(f"cannot read the {ext} files of {path} ({type(cause).__name__}: {str(cause)[:300]})") from None


def load_local(path, text_column):
    """Documents of local files: a .txt file is one document, .jsonl one per line, .parquet one per row."""
    files = [f for f in local_files(path) if os.path.getsize(f) > 0]  # datasets' json reader fails on empty files
    parts = []
    for ext, builder in ((".txt", "text"), (".jsonl", "json"), (".parquet", "parquet")):
        group = [f for f in files if f.endswith(ext)]
        if not group:
            continue
        ds = read_files(builder, group, path, ext)
        column = "text" if builder == "text" else text_column
        parts.append(only_text_column(ds, column, f"{path} ({ext} files)"))
    if not parts:
        raise DataError(f"input {path} has no documents: every file is empty")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def load_hub(name, subset, split, revision, max_docs):
    """A Hub dataset split (or its first max_docs documents, streamed), or a local save_to_disk folder."""
    if os.path.isdir(name) and any(os.path.isfile(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name} has no split '{split}' (its splits: {', '.join(ds)}); pass --split=NAME")
            ds = ds[split]
        return ds
    kwargs = dict(name=subset or None, split=split, revision=revision or None)
    offline = hub_unreachable()  # then only datasets' cache is read

    def load(**kwargs):
        if not max_docs:
            return datasets.load_dataset(name, **kwargs)
        stream = datasets.load_dataset(name, streaming=True, **kwargs).take(max_docs)
        return datasets.Dataset.from_list(list(tqdm(stream, total=max_docs, desc=f"streaming {name}")))

    try:
        try:
            return load(**kwargs)
        except RuntimeError as e:  # datasets >= 4 refuses loading scripts (the original openwebtext repo)
            if "scripts are no longer supported" not in str(e) or revision:
                raise
            print(f"{name} is a loading-script dataset: using its parquet conversion ({PARQUET_REVISION})")
            return load(**{**kwargs, "revision": PARQUET_REVISION})
    except Exception as e:  # offline, unknown name or subset, gated: the user needs the reason, not a traceback
        what = f"dataset '{name}'{f' subset {subset}' if subset else ''} split '{split}'"
        if offline:
            raise DataError(f"{what} is not in the Hugging Face cache (HF_HOME) and needs the Hub, but {offline}: "
                            f"pass local files with --input=PATH, or run with network") from None
        raise DataError(f"could not load {what} ({type(e).__name__}: {e}). Check the name (and --subset / --split), "
                        f"or pass local files with --input=PATH") from None


# -----------------------------------------------------------------------------
# tokenizing in parallel (datasets.map with num_proc) and writing

_tokenizers = {}  # per worker process, made on first use: {fingerprint: tokenizer}


def tokenize_batch(batch, meta):
    """Token ids of each document (meta: the dataset's meta.json, which says the tokenizer and dtype)."""
    key = meta.get("tokenizer_fingerprint", meta["tokenizer"])
    if key not in _tokenizers:
        _tokenizers[key] = GPT2Tokenizer() if meta["tokenizer"] == "gpt2" else HFTokenizer(meta)
    dtype = TOKEN_DTYPES[dtype_for_vocab(meta["vocab_size"])]
    ids = [np.array(doc, dtype=dtype) for doc in _tokenizers[key].encode_documents(batch["text"])]
    return {"ids": ids, "len": [len(x) for x in ids]}


def token_chunks(tokenized):
    """The token ids of a tokenized split, concatenated in document order, as arrays of ROWS_PER_CHUNK docs."""
    for table in tokenized.with_format("arrow").iter(batch_size=ROWS_PER_CHUNK):
        yield pc.list_flatten(table.column("ids")).to_numpy()


def split_documents(docs, val_fraction, seed):
    """{"train": docs, "val": docs}: a fixed-seed shuffle, then val_fraction of the documents to val (1 to n - 1)."""
    if len(docs) < 2:
        raise DataError(f"only {len(docs)} document: need at least 2 (one for val.bin, the rest for train.bin)")
    n_val = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
    parts = docs.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return {"train": parts["train"], "val": parts["test"]}


def prepare(dataset, subset, split, revision, text_column, tokenizer, input, max_docs, val_fraction, seed, num_proc,
            out_dir):
    """Load, split, tokenize and write a corpus (the script's config as arguments); returns meta.json's dict."""
    if tokenizer == "gpt2":  # meta.json's tokenizer part, before any long work
        gpt2 = GPT2Tokenizer()
        tokenizer_part = dict(tokenizer="gpt2", vocab_size=gpt2.n_vocab, eot_token=gpt2.eot)
    else:
        try:  # a Hugging Face folder / Hub id; a .gguf file's tokenizer is in the folder it is de-quantized into
            folder = open_source(tokenizer).path if tokenizer.endswith(".gguf") else tokenizer
            tokenizer_part = hf_tokenizer_meta(folder)
        except (TokenizerError, ModelLoadError) as e:
            raise DataError(str(e)) from None
    dtype_for_vocab(tokenizer_part["vocab_size"])  # a vocabulary too large for the .bin format is refused here
    if os.path.isfile(out_dir):
        raise DataError(f"out_dir {out_dir} is a file: the output is a folder (train.bin, val.bin, meta.json)")
    if input:
        docs = load_local(input, text_column)
    else:
        docs = only_text_column(load_hub(dataset, subset, split, revision, max_docs), text_column, dataset)
    if max_docs and len(docs) > max_docs:
        docs = docs.select(range(max_docs))
    splits = split_documents(docs, val_fraction, seed)
    tokenized = {name: part.map(tokenize_batch, batched=True, remove_columns=["text"], desc=f"tokenizing {name}",
                                fn_kwargs={"meta": tokenizer_part},
                                num_proc=num_proc if num_proc > 1 and len(part) >= 2 * num_proc else None)
                 for name, part in splits.items()}
    totals = {name: int(np.sum(part["len"], dtype=np.int64)) for name, part in tokenized.items()}
    per_empty_doc = len(tokenize_batch({"text": [""]}, tokenizer_part)["ids"][0])  # the BOS / EOS a document gets
    if sum(totals.values()) == per_empty_doc * len(docs):  # nothing but those
        raise DataError(f"{input or dataset}: all {len(docs)} documents are empty (no tokens)")
    if totals["val"] <= GPT2_CONTEXT:
        print(f"note: val.bin gets only {totals['val']:,} tokens (val_fraction={val_fraction}): train.py needs "
              f"block_size + 1 of them for one window (GPT-2's block_size is {GPT2_CONTEXT}); a larger "
              f"--val_fraction gives more", file=sys.stderr)
    meta = dict(**tokenizer_part,
                source=os.path.abspath(input) if input else dataset, subset=subset, text_column=text_column,
                val_fraction=val_fraction, seed=seed,
                train_docs=len(tokenized["train"]), val_docs=len(tokenized["val"]))
    return write_dataset(out_dir, {name: token_chunks(part) for name, part in tokenized.items()}, meta, totals)


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        meta = prepare(**config)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {config['out_dir']}: train.bin {meta['train_tokens']:,} tokens ({meta['train_docs']:,} docs), "
          f"val.bin {meta['val_tokens']:,} tokens ({meta['val_docs']:,} docs)")


if __name__ == "__main__":
    main()
