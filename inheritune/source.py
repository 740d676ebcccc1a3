"""
Model sources: what a --model / --init_from / --ckpt / --reference name means, decided once (open_source), and a
ModelSource that reads from it only what is asked for; load_model and load_pretrained load a model by its name.

A name is, in this order:
  checkpoint   one of our single-file checkpoints: a .pt file, or an out_dir holding ckpt.pt
  sharded      our sharded checkpoint: an out_dir holding ckpt.dcp/ (or that folder itself)
  hf_folder    a local Hugging Face model folder (config.json + weights)
               or a GGUF file (.gguf), de-quantized into a folder in the Hugging Face cache (hf.gguf_folder)
  hub          a Hugging Face Hub id: a GPT-2 name (gpt2, gpt2-medium, ...) or org/name, downloaded into (or found in)
               the Hugging Face cache
Anything else is an error at once, without the network: a path-like name (./x, /x, a/b/c, a name under an existing
folder) that does not exist, or a single word that is no GPT-2 name (a typo of a local folder gets its spelling).
"""

import contextlib
import difflib
import functools
import os

import torch

from inheritune import hf
from inheritune.checkpoint import (BLOCK_NAME, CKPT_NAME, SHARDED_NAME, CheckpointError, damaged, find_checkpoint,
                                   fingerprint_tensors, load_checkpoint, load_sharded_checkpoint, load_sharded_model,
                                   model_from_checkpoint, strip_wrapper_prefixes)
from inheritune.data import GPT2_VOCAB_SIZE, DataError, run_dataset_meta, run_tokenizer_meta
from inheritune.hf import HUB_GPT2_NAMES, ModelLoadError, hub_folder, load_folder
from inheritune.tokenizer import describe, hf_tokenizer_meta, meta_fingerprint
from model import GPT, GPTConfig

HF_KINDS = ("hf_folder", "hub")


def open_source(name, download=True):
    """The ModelSource `name` names (an opened one is returned as it is). download=False: a Hub id only from the
    Hugging Face cache. Raises CheckpointError / ModelLoadError, naming what to pass instead."""
    if isinstance(name, ModelSource):
        return name
    name = str(name)
    path = os.path.expanduser(name)
    found = find_checkpoint(path)
    if found is not None:
        return ModelSource(name, "checkpoint" if found[0] == "single" else "sharded", found[1])
    if path.endswith(".pt"):
        raise CheckpointError(f"no checkpoint at {name}: pass an out_dir that holds {CKPT_NAME} or {SHARDED_NAME}/, "
                              f"or a .pt file{did_you_mean(name)}")
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ModelLoadError(f"no such GGUF file: {name}")
        return ModelSource(name, "hf_folder", hf.gguf_folder(path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(f"{name} holds neither {CKPT_NAME} nor a Hugging Face config.json")
        return ModelSource(name, "hf_folder", path)
    if os.path.exists(path):
        raise ModelLoadError(f"{name} is a file but not a .pt checkpoint: pass an out_dir or .pt of ours, a .gguf "
                             f"file or a Hugging Face model folder (config.json + weights)")
    if looks_like_path(name):
        raise ModelLoadError(f"no such folder: {name} (pass an existing folder with config.json and the weights, "
                             f"an out_dir of ours, or a Hub name){did_you_mean(name)}")
    if "/" not in name and name not in HUB_GPT2_NAMES:
        raise ModelLoadError(f"unknown model '{name}': no such folder here, and not one of "
                             f"{', '.join(HUB_GPT2_NAMES)} (or an 'org/name' Hub id){did_you_mean(name)}")
    return ModelSource(name, "hub", hub_folder(name, download))


def looks_like_path(name):
    """True for a name that can only mean a local folder: absolute, ./ ../ ~, two or more '/', or a name
    under a folder that exists here; such a name is never sent to the Hub."""
    if name.startswith(("./", "../", "~")) or os.path.isabs(name) or name.count("/") > 1:
        return True
    parent = os.path.dirname(name)
    return bool(parent) and os.path.isdir(parent)


def did_you_mean(name):
    """'; did you mean X?' for the folder, .pt file or GPT-2 name closest to a name that is none of them, else ''."""
    parent, base = os.path.split(name.rstrip("/"))
    folder = os.path.expanduser(parent or ".")
    try:
        near = [e for e in os.listdir(folder) if e.endswith(".pt") or os.path.isdir(os.path.join(folder, e))]
    except OSError:  # the parent folder is missing too
        near = []
    close = difflib.get_close_matches(base, near + ([] if parent else list(HUB_GPT2_NAMES)), n=1)
    return f"; did you mean {os.path.join(parent, close[0])}?" if close else ""


class ModelSource:
    """A model on disk, located: name (as given), kind (see above), path (ckpt.pt, ckpt.dcp/ or the Hugging Face
    folder), checkpoint (ours: the dict without its weights; else None); the rest is read when asked for."""

    def __init__(self, name, kind, path):
        self.name, self.kind, self.path = name, kind, path
        # ckpt.pt: memory-mapped, its tensors read only when used; ckpt.dcp/: extras.pt's keys, the shards unread
        self.checkpoint = (load_sharded_checkpoint(path, weights=False) if kind == "sharded"
                           else load_checkpoint(path, weights=False) if kind == "checkpoint" else None)

    def __str__(self):
        return self.name

    @functools.cached_property
    def config(self):
        """Our GPTConfig of the model (full depth), without reading its weights; one model.py does not implement is
        refused (ModelLoadError)."""
        if self.checkpoint is None:
            return hf.gpt_config_from_hf(self.path, self.name)
        try:
            return GPTConfig(**self.checkpoint["model_args"])
        except (TypeError, ValueError) as e:
            raise damaged(self.path, f"its model_args are not a model: {e}") from None

    def load(self, layers=None, device="cpu"):
        """Our GPT of the embeddings, blocks[layers] (any order, repeats allowed, renumbered in that order; None:
        every block), final norm and head, on device. Only those tensors are read: ckpt.pt's from the mapped file,
        ckpt.dcp/'s from their shards, a Hugging Face folder's from its safetensors."""
        if self.kind == "sharded":
            model = load_sharded_model(self.path, self.checkpoint["model_args"], layers)
        elif self.kind == "checkpoint":
            model = model_from_checkpoint(self.checkpoint, self.path, layers)
        else:
            model = hf.load_folder(self.path, self.config, self.name, layers)
        return model.to(device)

    def named_tensors(self):
        """(name, tensor) of the whole model in name order, one block in memory at a time."""
        if self.checkpoint is not None:  # ckpt.pt is memory-mapped (a tensor is read when used); ckpt.dcp/ read whole
            state = self.load().state_dict() if self.kind == "sharded" else self.checkpoint["model"]
            yield from sorted(strip_wrapper_prefixes(state).items())
            return
        rest = hf.our_state_dict(self.path, self.config, [], self.name)  # embeddings, final norm, head
        with torch.device("meta"):
            names = sorted(GPT(self.config).state_dict())
        block, block_index = {}, None
        for name in names:  # a block's tensors are contiguous in name order
            match = BLOCK_NAME.match(name)
            if match is None:
                yield name, rest[name]
                continue
            i, part = int(match.group(1)), match.group(2)
            if i != block_index:
                block, block_index = hf.our_state_dict(self.path, self.config, [i], self.name, rest=False), i
            yield name, block[f"transformer.h.0.{part}"]

    def fingerprint(self):
        """checkpoint.model_fingerprint of the model (what analyze_rank.py records), read block by block."""
        return fingerprint_tensors(self.named_tensors())

    def files_stamp(self):
        """(path, inode, size, mtime) of the files the weights are read from: equal as long as they are not replaced
        (a ckpt.dcp/ save swaps in a new folder, a new inode)."""
        paths = [self.path] if self.checkpoint is not None else sorted(
            os.path.join(self.path, f) for f in os.listdir(self.path)
            if f.endswith((".safetensors", ".bin")) or f == hf.SAFETENSORS_INDEX)
        stats = [(path, os.stat(path)) for path in paths if os.path.exists(path)]
        return [(path, st.st_ino, st.st_size, st.st_mtime_ns) for path, st in stats]

    def origin(self):
        """The source the model was inherited from (inherit.py / train.py record it), opened from what is here (no
        download); None when none is recorded. ModelLoadError when it is not here."""
        name = ((self.checkpoint or {}).get("inherit") or {}).get("source")
        if not name or name == self.name:
            return None
        try:
            return open_source(name, download=False)
        except (CheckpointError, ModelLoadError):
            raise ModelLoadError(f"{name}, which the model was inherited from, is not here") from None

    def known_tokenizer_meta(self):
        """The tokenizer the model was trained with, as a meta.json-like dict, when something says it: for ours, the
        meta.json of the dataset it was trained on (else the tokenizer of the model it was inherited from); for a
        Hugging Face model with tokenizer files, that tokenizer (GPT-2's own BPE stays "gpt2"). None otherwise."""
        if self.checkpoint is not None:
            meta, _ = run_dataset_meta(self.checkpoint.get("config"))
            if meta is None:
                with contextlib.suppress(ModelLoadError):  # the model it was inherited from is not here
                    meta = (origin := self.origin()) and origin.known_tokenizer_meta()
            return meta
        vocabularies = ("tokenizer.json", "tokenizer.model", "vocab.json")  # a tokenizer_config.json alone is none
        if not any(os.path.isfile(os.path.join(self.path, f)) for f in vocabularies):
            return None
        meta = hf_tokenizer_meta(self.path)
        if meta["tokenizer_fingerprint"] == meta_fingerprint({"tokenizer": "gpt2"}):
            return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE}  # GPT-2's: tiktoken, bundled, as ever
        return meta

    def tokenizer_meta(self):
        """The tokenizer to encode and decode the model's text with (tokenizer.tokenizer_from_meta makes it): the
        known one, else GPT-2 BPE for a GPT-2-sized vocabulary. Refused (DataError) when there is none, or when its
        ids do not fit the model's vocabulary."""
        vocab_size = self.config.vocab_size
        meta = self.known_tokenizer_meta() or run_tokenizer_meta((self.checkpoint or {}).get("config"), vocab_size)
        if meta["vocab_size"] > vocab_size:
            raise DataError(f"{describe(meta)} has {meta['vocab_size']} ids but the model {self.name} only "
                            f"{vocab_size}: it is not this model's tokenizer")
        return meta


# -----------------------------------------------------------------------------
# loading by name

def load_model(source, device="cpu", layers=None):
    """(model, checkpoint dict without weights or None) of a model name (open_source): ModelSource.load's
    blocks[layers] (None: all), read without the rest of the model."""
    source = open_source(source)
    return source.load(layers, device), source.checkpoint


def load_pretrained(name_or_path, layers=None, dtype=torch.float32):
    """Our GPT from a Hugging Face GPT-2, Llama, Qwen2 or Mistral model: a GPT-2 name, Hub id or local folder
    (open_source finds it); see hf.load_folder."""
    source = open_source(name_or_path)
    if source.kind not in HF_KINDS:
        raise ModelLoadError(f"{name_or_path} is one of our checkpoints, not a Hugging Face model: load it with "
                             f"source.load_model")
    return load_folder(source.path, source.config, name_or_path, layers, dtype)


def known_model_tokenizer_meta(source):
    """ModelSource.known_tokenizer_meta of a model name, opened from what is here (no download); None when
    it is not here (train.py checks its data on every rank, where under FSDP only rank 0 opened the model)."""
    with contextlib.suppress(CheckpointError, ModelLoadError):
        return open_source(source, download=False).known_tokenizer_meta()
