"""
Checkpoint I/O, the one place every script loads and saves models through.

Paths: a path ending in .pt is a checkpoint file; any other path is a folder (an out_dir) that holds
ckpt.pt, created when a checkpoint is first written there. Nothing is guessed from what exists on disk.

A checkpoint (out_dir/ckpt.pt) is a dict of tensors and plain Python types, so
torch.load(path, weights_only=True) reads it. Keys written by train.py / inherit.py:
  model        state dict of the unwrapped model (no "_orig_mod." / "module." prefixes)   (always)
  model_args   GPTConfig fields   (always)
  config       the run's config as train.py keys: a resume, and a re-run of the same command, start from it
  iter_num, round_start_iter, best_val_loss, optimizer, scaler, rng, sampler   (train.py, for exact resume)
  last_eval    {iter, train_loss, val_loss} of the last evaluation (a resume at that iter does not repeat it)
  log_size     bytes of out_dir/log.jsonl when the checkpoint was saved (a resume drops what came after)
  inherit      {source, layers, source_n_layer, fresh, reference_val_loss, reference_eval, settings}   (inherit.py)
  growth       {round, layers, target_val_loss, done, last_round_end, end}   (train.py with grow_every)
  compute      {tokens, flops}: training tokens and FLOPs so far, all rounds   (train.py; as in log.jsonl's evals)
"""

import hashlib
import os
import re

import torch

from atomic import atomic_write, stale_temporaries
from model import GPT, GPTConfig

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "model_args")


class CheckpointError(ValueError):
    pass


def checkpoint_path(path):
    """The checkpoint file a path names: a .pt path itself, any other path (a folder) + /ckpt.pt."""
    return path if str(path).endswith(".pt") else os.path.join(path, CKPT_NAME)


def is_checkpoint(path):
    """Whether path names one of our checkpoints: a .pt path (existing or not), or a folder holding ckpt.pt."""
    return str(path).endswith(".pt") or os.path.isfile(os.path.join(path, CKPT_NAME))


def save_checkpoint(obj, path):
    """Write atomically: a temporary file, flushed and fsynced, renamed over the old checkpoint.

    A crash, kill or full disk during the save leaves the previous checkpoint as it was; temporary files
    left by an earlier save that was killed are removed first.
    """
    path = checkpoint_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for stale in stale_temporaries(path):
        os.remove(stale)
    with atomic_write(path) as f:
        writer = WriteErrorKeeper(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
                raise writer.error from None
            raise


class WriteErrorKeeper:
    """A file's write, keeping the OSError it raised (torch.save hides it behind a RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def damaged(path, reason):
    """The error for a checkpoint file that exists but cannot be used."""
    leftovers = stale_temporaries(path)
    note = (f"; {os.path.basename(leftovers[0])} beside it is an unfinished save, not a usable checkpoint"
            if leftovers else "")
    return CheckpointError(f"{path} is damaged ({reason}) and cannot be loaded. No earlier checkpoint is kept: "
                           f"each save replaces {os.path.basename(path)}{note}. Restore it from a copy, or start over")


def load_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint dict at path (an out_dir or a .pt file), loaded with weights_only=True; mmap=True maps the
    tensors from the file instead of reading them (to read a big checkpoint's metadata)."""
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: pass an out_dir that holds {CKPT_NAME} or a .pt file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # a truncated or overwritten file fails in torch.load's zip, pickle or unpickler code
        first_sentence = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]
        raise damaged(path, f"{type(e).__name__}: {first_sentence}" if first_sentence else type(e).__name__) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise damaged(path, f"no {' / '.join(missing)} in it")
    return ckpt


def strip_wrapper_prefixes(state_dict):
    """Keys of a DDP / torch.compile wrapped model's state dict, as the plain model's."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.replace(prefix, "")
        out[k] = v
    return out


BLOCK_NAME = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")  # our block tensors: index, rest


def select_blocks(state_dict, layers):
    """The tensors of a model made of blocks[layers] (renumbered 0, 1, ... in that order; a repeated block is a
    copy) and every tensor outside the blocks. Only the tensors it returns are touched (read, for a mapped file)."""
    out = {}
    for name, tensor in state_dict.items():
        match = BLOCK_NAME.match(name)
        if match is None:
            out[name] = tensor
            continue
        i, rest = int(match.group(1)), match.group(2)
        targets = [j for j, source in enumerate(layers) if source == i]
        for k, j in enumerate(targets):
            out[f"transformer.h.{j}.{rest}"] = tensor if k == 0 else tensor.clone()
    return out


def model_from_checkpoint(ckpt, path="the checkpoint", layers=None):
    """Our GPT of a checkpoint dict; layers: only these blocks (any order, repeats allowed), as hf.load_pretrained."""
    args, state_dict = ckpt["model_args"], strip_wrapper_prefixes(ckpt["model"])
    if layers is not None:
        layers = list(layers)
        n_layer = args.get("n_layer")
        bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n_layer)]
        if bad:
            raise CheckpointError(f"layers {bad} are not block indices of {path} ({n_layer} blocks, 0..{n_layer - 1})")
        args, state_dict = dict(args, n_layer=len(layers)), select_blocks(state_dict, layers)
    try:
        model = GPT(GPTConfig(**args))
        model.load_state_dict(state_dict)
    except (TypeError, RuntimeError, ValueError, AttributeError) as e:  # weights that do not fit model_args
        raise damaged(path, f"its weights do not fit its model_args: {str(e).splitlines()[0][:120]}") from None
    return model


def load_model(source, device="cpu", layers=None):
    """(model, checkpoint dict or None) for one of our checkpoints, a GPT-2 name or a Hugging Face folder.

    layers: only these blocks (any order, repeats allowed; renumbered in that order) with the embeddings, final norm
    and head, read without the rest: a checkpoint is memory-mapped and only the chosen tensors are copied out of
    it, a Hugging Face folder's safetensors are read tensor by tensor (hf.load_pretrained).
    """
    if is_checkpoint(source):
        ckpt = load_checkpoint(source, mmap=layers is not None)
        return model_from_checkpoint(ckpt, checkpoint_path(source), layers).to(device), ckpt
    check_hf_folder(source)
    return GPT.from_pretrained(source, layers=layers).to(device), None


def check_hf_folder(source):
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise CheckpointError(f"{source} holds neither {CKPT_NAME} nor a Hugging Face config.json")


def load_model_config(source):
    """(GPTConfig, checkpoint dict or None) of a model source without reading its weights: a checkpoint's
    model_args (its tensors memory-mapped, not read), or a Hugging Face folder's config.json."""
    if is_checkpoint(source):
        ckpt = load_checkpoint(source, mmap=True)
        try:
            return GPTConfig(**ckpt["model_args"]), ckpt
        except (TypeError, ValueError) as e:
            raise damaged(checkpoint_path(source), f"its model_args are not a model: {e}") from None
    check_hf_folder(source)
    from hf import gpt_config_from_hf, resolve_hf_folder

    return gpt_config_from_hf(resolve_hf_folder(source), source), None


def model_fingerprint(model, sample=65536):
    """A short hash of a model's weights: its parameter names, shapes and dtypes, and up to `sample` evenly
    spaced values of each tensor (all of a small one). Tells two models apart cheaply (e.g. an analysis of
    one model from another), whatever path or device they were loaded from."""
    return fingerprint_tensors(sorted(model.state_dict().items()), sample)


def fingerprint_tensors(named_tensors, sample=65536):
    """model_fingerprint of a model's (name, tensor) pairs in name order, which may be read one at a time."""
    h = hashlib.sha256()
    for name, t in named_tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.detach().reshape(-1)
        flat = flat[::max(1, flat.numel() // sample)][:sample]
        h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
