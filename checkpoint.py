"""
Checkpoint I/O, the one place every script loads and saves models through.

A checkpoint (out_dir/ckpt.pt) is a dict of tensors and plain Python types, so
torch.load(path, weights_only=True) reads it. Keys written by train.py / inherit.py:
  model        state dict of the unwrapped model (no "_orig_mod." / "module." prefixes)
  model_args   GPTConfig fields
  config       the resolved run config
  iter_num, round_start_iter, best_val_loss, optimizer, scaler, rng, sampler   (train.py, for exact resume)
  inherit      {source, layers, source_n_layer, reference_val_loss, ...}   (inherit.py)
  growth       {round, layers, target_val_loss, done, ...}   (train.py with grow_every: where growth stands)
  compute      {tokens, flops}: training tokens and FLOPs so far, all rounds   (train.py; as in log.jsonl's evals)
"""

import os

import torch

from atomic import atomic_write
from model import GPT, GPTConfig

CKPT_NAME = "ckpt.pt"


class CheckpointError(ValueError):
    pass


def checkpoint_path(path):
    """out_dir -> out_dir/ckpt.pt; a file path is kept."""
    return os.path.join(path, CKPT_NAME) if os.path.isdir(path) else path


def is_checkpoint(path):
    return os.path.isfile(checkpoint_path(path)) and checkpoint_path(path).endswith(".pt")


def save_checkpoint(obj, path):
    """Write atomically: a temporary file, flushed and fsynced, renamed over the old checkpoint.

    A crash or kill during the save leaves the previous checkpoint as it was.
    """
    path = checkpoint_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint dict at path (an out_dir or a .pt file), loaded with weights_only=True; mmap=True maps the
    tensors from the file instead of reading them (to read a big checkpoint's metadata)."""
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: pass an out_dir that holds {CKPT_NAME} or a .pt file")
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def strip_wrapper_prefixes(state_dict):
    """Keys of a DDP / torch.compile wrapped model's state dict, as the plain model's."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.replace(prefix, "")
        out[k] = v
    return out


def model_from_checkpoint(ckpt):
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(strip_wrapper_prefixes(ckpt["model"]))
    return model


def load_model(source, device="cpu"):
    """(model, checkpoint dict or None) for one of our checkpoints, a GPT-2 name or a Hugging Face folder."""
    if is_checkpoint(source):
        ckpt = load_checkpoint(source)
        return model_from_checkpoint(ckpt).to(device), ckpt
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise CheckpointError(f"{source} holds neither {CKPT_NAME} nor a Hugging Face config.json")
    return GPT.from_pretrained(source).to(device), None
