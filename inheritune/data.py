"""
Tokenized datasets on disk and the windows drawn from them.

A prepared dataset is a folder with train.bin / val.bin (token ids, read as np.memmap) and meta.json
({"tokenizer": "gpt2" | "char" | "hf", "vocab_size": ..., "chars" for char, tokenizer.hf_tokenizer_meta for hf,
token counts, and "dtype": "uint32" above 65,536 ids; without it, uint16}). Training windows come from a seeded
torch.Generator whose state is checkpointed (exact resume); validation windows are a fixed set per seed.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inheritune.atomic import atomic_write
from inheritune.tokenizer import CharTokenizer, GPT2Tokenizer, describe, meta_fingerprint

TOKEN_DTYPE = np.uint16  # GPT-2's 50257 ids fit; larger vocabularies are written as uint32
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
GPT2_VOCAB_SIZE = 50257
GPT2_PADDED_VOCAB_SIZE = 50304  # nanoGPT's padding of GPT-2's vocabulary to a multiple of 64
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root, above this package


class DataError(ValueError):
    pass


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise DataError(f"{data_dir} has no meta.json: prepare the data first "
                        f"(python prepare_owt.py ..., or python data/shakespeare/prepare.py)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is damaged (not JSON: {e}): prepare the data again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) or "tokenizer" not in meta:
        raise DataError(f"{path} is damaged (no tokenizer / vocab_size): prepare the data again")
    return meta


def dtype_for_vocab(vocab_size):
    """The smallest token dtype that holds ids below vocab_size: "uint16" up to 65,536 ids, else "uint32"."""
    if vocab_size > np.iinfo(np.uint32).max + 1:
        raise DataError(f"a vocabulary of {vocab_size} ids does not fit the uint32 .bin format "
                        f"(at most {np.iinfo(np.uint32).max + 1}); use a tokenizer with a smaller vocabulary")
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def run_dataset_meta(run_config):
    """(meta.json of the dataset a run was trained on, or None; the folders looked in): its config's data_dir,
    else its dataset under data/ (here or in the repo)."""
    dataset = (run_config or {}).get("dataset")
    looked_in = [os.path.join("data", dataset), os.path.join(REPO_DIR, "data", dataset)] if dataset else []
    for folder in filter(None, [(run_config or {}).get("data_dir"), *looked_in]):
        if os.path.isfile(os.path.join(folder, "meta.json")):
            return load_meta(folder), [folder]
    return None, looked_in


def check_data_tokenizer(meta, data_dir, model_meta, model_source):
    """Refuse a dataset tokenized otherwise than the model (model_meta: ModelSource.known_tokenizer_meta; None: unknown,
    nothing to compare), by their vocabulary fingerprints."""
    if model_meta is None or meta_fingerprint(meta) == meta_fingerprint(model_meta):
        return
    how = {"hf": f" (python prepare_owt.py --tokenizer={model_meta.get('tokenizer_source')})",
           "gpt2": " (python prepare_owt.py --tokenizer=gpt2)"}.get(model_meta["tokenizer"], "")
    raise DataError(f"{data_dir} was tokenized with {describe(meta)}, but {model_source} uses {describe(model_meta)}: "
                    f"its token ids mean other words to the model; prepare the data with the model's tokenizer{how}")


def run_tokenizer_meta(run_config, vocab_size):
    """The meta.json of the dataset a checkpoint was trained on (run_dataset_meta), which says the tokenizer;
    GPT-2 BPE ({"tokenizer": "gpt2"}) for models without one that have GPT-2's vocabulary (50257 ids, or padded to
    50304); a vocabulary of another size (a Llama's) is no reason to guess."""
    dataset = (run_config or {}).get("dataset")
    meta, looked_in = run_dataset_meta(run_config)
    if meta is not None:
        return meta
    if GPT2_VOCAB_SIZE <= vocab_size <= GPT2_PADDED_VOCAB_SIZE:
        if dataset:
            print(f"note: dataset '{dataset}' is not prepared here (no meta.json in {' or '.join(looked_in)}); "
                  f"using GPT-2 BPE", file=sys.stderr)
        return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE}
    raise DataError(f"the model has a {vocab_size}-token vocabulary, not GPT-2's, and its dataset's meta.json "
                    + (f"is not in {' or '.join(looked_in)}" if dataset else "is unknown (no 'dataset' in its config)")
                    + ": prepare that dataset (e.g. python data/shakespeare/prepare.py) to get its tokenizer, or keep "
                    "a Hugging Face model's tokenizer files in its folder")


def write_tokens(path, ids, total=None, desc=None, dtype=TOKEN_DTYPE):
    """Write token ids (one array, or an iterable of chunks: a corpus larger than memory) to path atomically;
    returns how many were written. total (tokens expected) turns on a progress bar labelled desc."""
    chunks = [ids] if isinstance(ids, np.ndarray) else ids
    written = 0
    with atomic_write(path) as f, tqdm(total=total, desc=desc, unit="tok", unit_scale=True,
                                       disable=total is None) as bar:
        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=dtype)
            f.write(chunk.tobytes())
            written += chunk.size
            bar.update(chunk.size)
    return written


def write_meta(data_dir, meta):
    with atomic_write(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def write_dataset(data_dir, splits, meta, totals=None):
    """Write each {split: token ids (array or iterable of chunks)} as data_dir/{split}.bin, then meta.json (with
    "{split}_tokens", and "dtype" above 65,536 ids); totals ({split: expected tokens}) shows progress bars.
    The .bin files are staged and renamed in only when all are complete, after the old meta.json is removed: a
    failed preparation leaves the folder as it was (or without meta.json), never a new .bin beside an old meta."""
    dtype = dtype_for_vocab(meta["vocab_size"])
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"out_dir {data_dir} is a file: the output is a folder (train.bin, val.bin, meta.json)")
    created = not os.path.exists(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    meta = dict(meta) | ({"dtype": dtype} if dtype != "uint16" else {})
    staged = {}
    try:
        for split, ids in splits.items():
            staged[split] = os.path.join(data_dir, f".{split}.bin.staged")
            meta[f"{split}_tokens"] = write_tokens(staged[split], ids, total=(totals or {}).get(split),
                                                   desc=f"writing {split}.bin", dtype=TOKEN_DTYPES[dtype])
        Path(data_dir, "meta.json").unlink(missing_ok=True)
        for split, path in staged.items():
            os.replace(path, os.path.join(data_dir, f"{split}.bin"))
    except BaseException:
        for path in staged.values():
            Path(path).unlink(missing_ok=True)
        if created and not os.listdir(data_dir):
            os.rmdir(data_dir)
        raise
    write_meta(data_dir, meta)
    return meta


# -----------------------------------------------------------------------------
# the bundled Shakespeare corpus (data/shakespeare/texts/, 42 works): the demo's and the tests' dataset

SHAKESPEARE_TEXTS = os.path.join(REPO_DIR, "data", "shakespeare", "texts")
SHAKESPEARE_VAL_FRACTION = 0.1


def shakespeare_works():
    """[(file name, text)] of the 42 works, in file-name order."""
    return [(path.name, path.read_text(encoding="utf-8")) for path in sorted(Path(SHAKESPEARE_TEXTS).glob("*.txt"))]


def split_work(text, val_fraction=SHAKESPEARE_VAL_FRACTION):
    """(train, val) text of one work: val is its last val_fraction, cut at the line break before that point."""
    cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1
    return text[:cut], text[cut:]


def prepare_shakespeare(out_dir=None, tokenizer="char"):
    """Write the Shakespeare corpus as out_dir (default data/shakespeare_{tokenizer})/train.bin, val.bin, meta.json;
    returns the meta dict. val is the last 10% of every work (split_work). tokenizer="char": one id per distinct
    character; "gpt2": GPT-2 BPE, each work's part followed by <|endoftext|>."""
    out_dir = out_dir or os.path.join(REPO_DIR, "data", f"shakespeare_{tokenizer}")
    works = shakespeare_works()
    halves = [split_work(text) for _, text in works]
    parts = {"train": [train for train, _ in halves], "val": [val for _, val in halves]}
    if tokenizer == "char":
        chars = sorted(set("".join(text for _, text in works)))
        tok = CharTokenizer(chars)
        ids = {split: np.array(tok.encode("".join(texts)), dtype=TOKEN_DTYPE) for split, texts in parts.items()}
        meta = dict(tokenizer="char", vocab_size=tok.n_vocab, chars=tok.chars)
    elif tokenizer == "gpt2":
        tok = GPT2Tokenizer()
        ids = {split: [np.array(doc, dtype=TOKEN_DTYPE) for doc in tok.encode_documents(texts)]
               for split, texts in parts.items()}
        meta = dict(tokenizer="gpt2", vocab_size=tok.n_vocab, eot_token=tok.eot)
    else:
        raise DataError(f"unknown tokenizer '{tokenizer}' for Shakespeare: use 'char' or 'gpt2'")
    meta.update(source="data/shakespeare/texts", works=len(works),
                split=f"last {SHAKESPEARE_VAL_FRACTION:.0%} of each work (from a line break) is val")
    return write_dataset(out_dir, ids, meta)


def open_tokens(data_dir, split):
    """The token ids of data_dir/{split}.bin as a read-only memmap, in meta.json's dtype (uint16 when none), checked
    in O(1) against damage: a whole number of tokens, and the count meta.json records ("{split}_tokens")."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: prepare the data first")
    meta = load_meta(data_dir) if os.path.isfile(os.path.join(data_dir, "meta.json")) else None
    dtype = TOKEN_DTYPES.get((meta or {}).get("dtype", "uint16"))
    if dtype is None:
        raise DataError(f"meta.json's dtype {meta['dtype']!r} is not one of {', '.join(TOKEN_DTYPES)}: prepare the "
                        f"data again")
    size = os.path.getsize(path)
    token_bytes = np.dtype(dtype).itemsize
    if size % token_bytes:
        raise DataError(f"{path} is damaged: its {size:,} bytes are not a whole number of {token_bytes}-byte "
                        f"tokens (a truncated copy?); prepare the data again")
    if size == 0:
        raise DataError(f"{path} is empty: prepare the data again")
    recorded = (meta or {}).get(f"{split}_tokens")
    if recorded is not None and recorded != size // token_bytes:
        raise DataError(f"{path} holds {size // token_bytes:,} tokens but {os.path.join(data_dir, 'meta.json')} "
                        f"records {recorded:,}: the folder mixes two preparations or a file is damaged; "
                        f"prepare the data again")
    return np.memmap(path, dtype=dtype, mode="r")


def windows_to_batch(tokens, offsets, block_size):
    """x, y int64 tensors (len(offsets), block_size): y is x shifted by one token."""
    windows = torch.from_numpy(np.stack([tokens[i:i + block_size + 1].astype(np.int64) for i in offsets]))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def check_window_fits(tokens, block_size):
    """Raise DataError, naming the file and what to change, unless tokens hold one window of block_size + 1."""
    if len(tokens) > block_size:
        return
    path = getattr(tokens, "filename", None) or "the data"
    fix = ("prepare the data again with a larger --val_fraction (prepare_owt.py)"
           if os.path.basename(str(path)).startswith("val") else "prepare more data")
    raise DataError(f"{path} has {len(tokens):,} tokens, too few for one window of block_size + 1 = "
                    f"{block_size + 1} tokens: use a smaller block_size, or {fix}")


def eval_offsets(tokens, block_size, eval_iters, batch_size, seed):
    """The eval_iters * batch_size window starts of train.py's evaluation (also inherit.py's reference loss), drawn once
    with seed: the same for every call (and every run) on the same data."""
    check_window_fits(tokens, block_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(len(tokens) - block_size, (eval_iters * batch_size,), generator=generator).tolist()


class TrainBatches:
    """Training windows; state_dict() makes a resumed run draw the same batches. sampling="random": any start, drawn
    with replacement (each process its generator, seed + 1000 * rank). "epochs": the non-overlapping windows, each once
    per epoch, in an order drawn with seed + epoch that the processes share and take batches of in turn."""

    def __init__(self, tokens, block_size, batch_size, seed, sampling="random", rank=0, world_size=1):
        check_window_fits(tokens, block_size)
        self.tokens, self.block_size, self.batch_size, self.sampling = tokens, block_size, batch_size, sampling
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.generator = torch.Generator().manual_seed(seed + 1000 * rank)
        self.batches, self.epoch, self.order = 0, None, None  # epochs: batches this process has read; the epoch's order

    def window_start(self, i):
        """The start of the i-th window of the run's stream of epochs."""
        count = (len(self.tokens) - 1) // self.block_size  # whole windows, each with the token after it
        epoch, j = divmod(i, count)
        if epoch != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self.epoch, self.order = epoch, torch.randperm(count, generator=generator)
        return int(self.order[j]) * self.block_size

    def next(self, device="cpu"):
        """The next batch (x, y) on device (from pinned memory, without waiting, on CUDA)."""
        if self.sampling == "epochs":
            first = (self.batches * self.world_size + self.rank) * self.batch_size
            offsets = [self.window_start(i) for i in range(first, first + self.batch_size)]
            self.batches += 1
        else:
            offsets = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,),
                                    generator=self.generator).tolist()
        x, y = windows_to_batch(self.tokens, offsets, self.block_size)
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def state_dict(self):
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.batches = state.get("batches", 0)  # (checkpoints of random sampling before epochs existed have none)


@torch.no_grad()
def evaluate_loss(model, tokens, offsets, block_size, batch_size, device, autocast_ctx, rank=0, world_size=1,
                  loss_fn=None):
    """Mean loss over the windows at offsets; ranks split them and all-reduce, so every rank gets the same number.
    loss_fn(model, x, y): another per-batch mean to average instead of the model's cross-entropy."""
    was_training = model.training
    model.eval()
    mine = offsets[rank::world_size]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, window count
    # every rank runs as many batches as the rank with the most windows: an FSDP-sharded model's forward is a
    # collective (a rank out of windows runs one more on a window it does not count)
    for i in range(0, -(-len(offsets) // world_size), batch_size):
        batch = mine[i:i + batch_size]
        x, y = windows_to_batch(tokens, batch or offsets[:1], block_size)
        x, y = x.to(device), y.to(device)
        with autocast_ctx:
            loss = model(x, y)[1] if loss_fn is None else loss_fn(model, x, y)
        if batch:
            total += torch.stack([loss.double() * len(x), torch.tensor(len(x), dtype=torch.float64, device=device)])
    if world_size > 1:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()
