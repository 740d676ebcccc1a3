"""
Checkpoint I/O, the one place every script loads and saves models through.

Paths: a path ending in .pt is a checkpoint file; any other path is a folder (an out_dir) holding the run's checkpoint
in one of two formats: ckpt.pt (one file, written by one process) or ckpt.dcp/ (train.py --fsdp=True: every process
writes its own shards through torch.distributed.checkpoint). Every loader reads both, so scripts need not know how a
run was trained; `python -m inheritune.checkpoint --to_single=... / --to_sharded=...` converts.

A checkpoint is a dict of tensors and plain Python types, so torch.load(path, weights_only=True) reads ckpt.pt.
Keys written by train.py / inherit.py:
  model        state dict of the unwrapped model (no "_orig_mod." / "module." prefixes)   (always)
  model_args   GPTConfig fields   (always)
  config       the run's config as train.py keys: a resume, and a re-run of the same command, start from it
  iter_num, round_start_iter, best_val_loss, optimizer, scaler, rng, sampler   (train.py, for exact resume)
  last_eval    {iter, train_loss, val_loss} of the last evaluation (a resume at that iter does not repeat it)
  log_size     bytes of out_dir/log.jsonl when the checkpoint was saved (a resume drops what came after)
  inherit      {source, layers, source_n_layer, fresh, reference_val_loss, reference_eval, settings}   (inherit.py)
  growth       {round, layers, target_val_loss, done, last_round_end, end}   (train.py with grow_every)
  compute      {tokens, flops}: training tokens and FLOPs so far, all rounds   (train.py; as in log.jsonl's evals)

ckpt.dcp/ holds the same: torch.distributed.checkpoint's files with "model" and "optimizer" (keyed by parameter
name; absent before the optimizer's first step), and extras.pt with every other key. It is written under a temporary
name and swapped in whole, so a kill at any moment leaves the previous checkpoint loadable. A save in one format
removes the other format's checkpoint afterwards; a folder holding both (a kill in between) is read from the newer.
"""

import hashlib
import os
import re
import shutil
import sys
import types
import warnings

import torch

from inheritune.atomic import (aside_name, atomic_write, restore_folder, stale_temporaries, swap_in_folder,
                               temporary_name)
from inheritune.configurator import configure_or_exit
from model import GPT, GPTConfig

CKPT_NAME = "ckpt.pt"
SHARDED_NAME = "ckpt.dcp"
EXTRAS_NAME = "extras.pt"  # a sharded checkpoint's keys other than its shards' "model" and "optimizer"
REQUIRED_KEYS = ("model", "model_args")


class CheckpointError(ValueError):
    pass


def checkpoint_path(path):
    """The checkpoint file a path names: a .pt path itself, any other path (a folder) + /ckpt.pt."""
    return path if str(path).endswith(".pt") else os.path.join(path, CKPT_NAME)


def find_checkpoint(path):
    """("single", file) or ("sharded", folder) of the checkpoint at path (an out_dir or a .pt file), or None; a
    sharded folder whose swap was killed is found under its aside name, of both formats the one written last."""
    if str(path).endswith(".pt"):
        return ("single", path) if os.path.isfile(path) else None
    found = [("single", checkpoint_path(path))] if os.path.isfile(checkpoint_path(path)) else []
    folder = path if os.path.isfile(os.path.join(path, EXTRAS_NAME)) else os.path.join(path, SHARDED_NAME)
    found += [("sharded", f) for f in (folder, aside_name(folder)) if os.path.isdir(f)][:1]
    return max(found, key=lambda kind_path: os.path.getmtime(kind_path[1]), default=None)


def save_checkpoint(obj, path):
    """Write atomically (a crash, kill or full disk leaves the previous checkpoint as it was), removing what a killed
    save left first and an out_dir's sharded checkpoint after."""
    path = checkpoint_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for stale in stale_temporaries(path):
        os.remove(stale)
    with atomic_write(path) as f:
        torch_save(obj, f)
    if os.path.basename(path) == CKPT_NAME:
        remove_sharded(os.path.dirname(path))


def torch_save(obj, f):
    """torch.save to an open file, raising the OSError of a failed write (a full disk) as itself."""
    errors = []

    def write(data):
        try:
            return f.write(data)
        except OSError as e:
            errors.append(e)
            raise

    try:
        torch.save(obj, types.SimpleNamespace(write=write, flush=f.flush))
    except RuntimeError:
        if errors:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise errors[0] from None
        raise


def damaged(path, reason):
    """The error for a checkpoint that exists but cannot be used."""
    leftovers = stale_temporaries(path)
    note = (f"; {os.path.basename(leftovers[0])} beside it is an unfinished save, not a usable checkpoint"
            if leftovers else "")
    return CheckpointError(f"{path} is damaged ({reason}) and cannot be loaded. No earlier checkpoint is kept: "
                           f"each save replaces {os.path.basename(path)}{note}. Restore it from a copy, or start over")


def first_line(e):
    return (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]


def load_checkpoint(path, map_location="cpu", mmap=False, weights=True):
    """The checkpoint dict at path (an out_dir or a .pt file), in ckpt.pt's layout whichever format is on disk.

    mmap=True maps ckpt.pt's tensors instead of reading them; a sharded checkpoint is consolidated in this process.
    weights=False reads no model or optimizer tensors (ckpt.pt mapped; a sharded one: its other keys only)."""
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint at {checkpoint_path(path)}: pass an out_dir that holds {CKPT_NAME} "
                              f"or {SHARDED_NAME}/, or a .pt file")
    kind, path = found
    if kind == "sharded":
        return load_sharded_checkpoint(path, weights)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap or not weights)
    except Exception as e:  # a truncated or overwritten file fails in torch.load's zip, pickle or unpickler code
        raise damaged(path, f"{type(e).__name__}: {first_line(e)}" if first_line(e) else type(e).__name__) from None
    if missing := [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]:
        raise damaged(path, f"no {' / '.join(missing)} in it")
    return ckpt


# -----------------------------------------------------------------------------
# sharded checkpoints (torch.distributed.checkpoint)

def load_sharded_checkpoint(folder, weights=True):
    """A sharded checkpoint as the dict ckpt.pt holds: its model and optimizer consolidated here (weights=False:
    extras.pt's keys only)."""
    extras_path = os.path.join(folder, EXTRAS_NAME)
    if not os.path.isfile(extras_path):
        raise damaged(folder, f"no {EXTRAS_NAME} in it")
    try:
        ckpt = torch.load(extras_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise damaged(folder, f"{EXTRAS_NAME}: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise damaged(folder, f"no model_args in its {EXTRAS_NAME}")
    if not weights:
        return ckpt
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    model = empty_model(ckpt["model_args"], folder)
    read_shards(folder, {"model": model.state_dict()})  # in place; shards of another shape are named as damage
    if "optimizer" not in shard_keys(folder):
        return ckpt | {"model": model.state_dict()}
    state = {}  # the optimizer's state read as format_utils.dcp_to_torch_save reads: no optimizer is built for it
    _load_state_dict(state, FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(keys={"optimizer"}),
                     no_dist=True)
    names = [name for group in state["optimizer"]["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}  # ckpt.pt's numbering: the order of the param_groups
    return ckpt | {"model": model.state_dict(), "optimizer": rekeyed(state["optimizer"], index)}


def empty_model(model_args, path="the checkpoint"):
    """A GPT of model_args on the CPU, its tensors allocated but not initialized (for weights about to be loaded)."""
    try:
        with torch.device("meta"):
            model = GPT(GPTConfig(**model_args))
    except (TypeError, ValueError) as e:
        raise damaged(path, f"its model_args are not a model: {first_line(e)}") from None
    model.to_empty(device="cpu")
    if model.config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # to_empty gave the two names their own tensors
    return model


def load_sharded_model(folder, model_args, layers=None):
    """The GPT a sharded checkpoint holds, read in this one process; layers: only these blocks (any order, repeats
    allowed, renumbered in that order) with everything outside the blocks, the other blocks' shards left unread."""
    layers = list(range(model_args.get("n_layer"))) if layers is None else block_indices(layers, model_args, folder)
    model = empty_model(dict(model_args, n_layer=len(layers)), folder)
    sources = {}  # a tensor's name in the checkpoint: the model's tensors it fills (a repeated block: several)
    for name, tensor in model.state_dict().items():
        match = BLOCK_NAME.match(name)
        source = name if match is None else f"transformer.h.{layers[int(match.group(1))]}.{match.group(2)}"
        sources.setdefault(source, []).append(tensor)
    read_shards(folder, {"model": {source: tensors[0] for source, tensors in sources.items()}})  # in place
    with torch.no_grad():
        for first, *copies in sources.values():
            for tensor in copies:
                tensor.copy_(first)
    return model


def read_shards(folder, state, collective=False):
    """torch.distributed.checkpoint.load of state (in place), by this process alone or (collective) by every rank;
    a shard that does not fit, or a file missing or cut short, is named as damage."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    shard_keys(folder)  # a missing or damaged .metadata, named as such
    try:
        with warnings.catch_warnings():  # that one process reads alone is meant
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(state, checkpoint_id=folder, no_dist=not collective)
    except CheckpointException as e:
        raise damaged(folder, f"its shards do not fit its model_args: {first_line(dcp_failure(e))}") from None


def shard_keys(folder, flat=False):
    """The top-level keys ("model", "optimizer") a sharded checkpoint's shards hold (flat: every key, dotted)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as e:
        raise damaged(folder, f"its .metadata: {type(e).__name__}: {first_line(e)}") from None
    return {key if flat else key.split(".", 1)[0] for key in metadata.state_dict_metadata}


def training_state(model, optimizer=None):
    """{"model": ..., "optimizer": ...} state dicts by parameter name, of a plain or an FSDP-sharded model (each
    process's own shards), as torch.distributed.checkpoint saves and loads them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:  # (for an optimizer without state yet it takes a step at lr 0 to make its state)
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def dcp_failure(e):
    """The first exception inside a torch.distributed.checkpoint CheckpointException (any rank's)."""
    return next((exc for exc, _ in e.failures.values()), e)


def load_shards(folder, model, optimizer=None):
    """Fill model (and optimizer) from a sharded checkpoint: an FSDP-sharded model its own shards on every process, a
    plain model all of them, whatever process count wrote them."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    if "optimizer" not in shard_keys(folder):  # converted from a weights-only checkpoint: a fresh optimizer
        optimizer = None
    state = training_state(model, optimizer)
    if optimizer is not None and "optimizer.param_groups.0.param_names" not in shard_keys(folder, flat=True):
        for group in state["optimizer"]["param_groups"]:  # saved before configure_optimizers named the parameters
            group.pop("param_names", None)
    read_shards(folder, state, collective=isinstance(next(model.parameters()), DTensor) and dist.is_initialized())
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_optimizer_state(model, optimizer, state):
    """optimizer.load_state_dict(state) of a ckpt.pt's optimizer state, also for an FSDP-sharded model: there every
    rank passes the whole state (memory-mapped) and keeps the shards of its own parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    if not isinstance(next(model.parameters()), DTensor):
        optimizer.load_state_dict(state)
        return
    name_of = {p: name for name, p in model.named_parameters()}  # (a checkpoint older than param_names has none)
    names = [name_of[p] for group in optimizer.param_groups for p in group["params"]]
    set_optimizer_state_dict(model, optimizer, rekeyed(state, names), options=StateDictOptions(full_state_dict=True))


def rekeyed(optimizer_state, key_of):
    """An optimizer's state dict with each parameter's key replaced by key_of[key]: ckpt.pt numbers the parameters
    in the optimizer's order (optimizer.state_dict()), torch.distributed.checkpoint names them."""
    return {"state": {key_of[k]: s for k, s in optimizer_state["state"].items()},
            "param_groups": [g | {"params": [key_of[k] for k in g["params"]]} for g in optimizer_state["param_groups"]]}


def save_sharded_checkpoint(extras, path, model=None, optimizer=None, state=None):
    """Write model's and optimizer's state (FSDP-sharded or plain; or state, a conversion's, keyed by name) and extras
    as out_dir path's sharded checkpoint, atomically, then remove its ckpt.pt. Every rank calls this and writes its
    own shards; rank 0 writes extras.pt and swaps the folder in. A failed write raises its OSError on every rank."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    distributed = dist.is_initialized()
    rank0 = not distributed or dist.get_rank() == 0
    folder = os.path.join(path, SHARDED_NAME)
    if rank0:
        os.makedirs(path, exist_ok=True)
        restore_folder(folder)  # what a killed save left: a folder set aside mid-swap, temporary folders
    tmp = [temporary_name(folder)]
    if distributed:  # every rank writes into rank 0's temporary folder (once rank 0 has cleaned up)
        dist.broadcast_object_list(tmp, src=0)
    tmp = tmp[0]
    try:
        try:
            # an optimizer that has not stepped yet (a restart growth's) is saved as none: a fresh one when loaded
            state = state or training_state(model, optimizer if optimizer is not None and optimizer.state else None)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
                dcp.save(state, checkpoint_id=tmp, no_dist=not distributed)
        except CheckpointException as e:  # every rank raises it when any rank failed
            failure = dcp_failure(e)
            raise failure if isinstance(failure, OSError) else e
        if rank0:
            with atomic_write(os.path.join(tmp, EXTRAS_NAME)) as f:
                torch_save(extras, f)
            swap_in_folder(tmp, folder)
            if os.path.isfile(os.path.join(path, CKPT_NAME)):
                os.remove(os.path.join(path, CKPT_NAME))  # the folder's checkpoint is the sharded one from now on
    except BaseException:
        if rank0 and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_sharded(path):
    """Remove out_dir path's sharded checkpoint (after a ckpt.pt took its place)."""
    folder = os.path.join(path, SHARDED_NAME)
    for f in (folder, aside_name(folder), *stale_temporaries(folder)):
        if os.path.isdir(f):
            shutil.rmtree(f)


def strip_wrapper_prefixes(state_dict):
    """Keys of a DDP / torch.compile wrapped model's state dict, as the plain model's."""
    return {k.replace("module.", "").replace("_orig_mod.", ""): v for k, v in state_dict.items()}


BLOCK_NAME = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")  # our block tensors: index, rest


def select_blocks(state_dict, layers):
    """The tensors of a model made of blocks[layers] (renumbered 0, 1, ... in that order; a repeated block is a
    copy) and every tensor outside the blocks. Only the tensors it returns are touched (read, for a mapped file)."""
    out = {}
    for name, tensor in state_dict.items():
        match = BLOCK_NAME.match(name)
        targets = [name] if match is None else [f"transformer.h.{j}.{match.group(2)}"
                                                for j, i in enumerate(layers) if i == int(match.group(1))]
        for k, target in enumerate(targets):
            out[target] = tensor if k == 0 else tensor.clone()
    return out


def matching_tensors(given, expected, what_given, what_expected, error=CheckpointError):
    """given (name -> tensor) when it has exactly expected's names and shapes; else error, one line naming both sides
    (a tensor copied by position, or broadcast by copy_, would pass silently)."""
    for name in [*expected, *(name for name in given if name not in expected)]:
        theirs, ours = given.get(name), expected.get(name)
        if theirs is None or ours is None or theirs.shape != ours.shape:
            has = f"has no {name}" if theirs is None else f"has {name} {list(theirs.shape)}"
            raise error(f"{what_given} {has}, {what_expected} " + ("has none" if ours is None else
                                                                   f"expects {list(ours.shape)}"))
    return given


def block_indices(layers, model_args, path, error=CheckpointError):
    """layers as a list, refused unless it names blocks of the model of model_args (a GPTConfig or its dict)."""
    layers, n_layer = list(layers), model_args["n_layer"] if isinstance(model_args, dict) else model_args.n_layer
    bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n_layer)]
    if bad or not layers:
        raise error(f"layers {bad or layers} are not block indices of {path} ({n_layer} blocks, 0..{n_layer - 1})")
    return layers


def model_with(config, weights, what_given, what_expected, error=CheckpointError):
    """A GPT of config holding weights (name -> tensor), which must have its tensors' names and shapes; it allocates
    and initializes nothing of its own."""
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(matching_tensors(weights, model.state_dict(), what_given, what_expected, error), assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True gave the two names their own Parameters
    return model


def model_from_checkpoint(ckpt, path="the checkpoint", layers=None):
    """Our GPT of a checkpoint dict; layers: only these blocks (any order, repeats allowed), as hf.load_folder."""
    args, state_dict = ckpt["model_args"], strip_wrapper_prefixes(ckpt["model"])
    if layers is not None:
        layers = block_indices(layers, args, path)
        args, state_dict = dict(args, n_layer=len(layers)), select_blocks(state_dict, layers)
    try:
        model = GPT(GPTConfig(**args))
    except (TypeError, ValueError) as e:
        raise damaged(path, f"its model_args are not a model: {first_line(e)}") from None
    model.load_state_dict(matching_tensors(state_dict, model.state_dict(), path, "a model of its model_args"))
    return model


def model_fingerprint(model, sample=65536):
    """A short hash of a model's weights (names, shapes, dtypes and up to `sample` evenly spaced values of each
    tensor): tells two models apart cheaply, whatever path or device they were loaded from."""
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


# -----------------------------------------------------------------------------
# conversion between the formats:
# python -m inheritune.checkpoint --to_single=OUT_DIR --out=... / --to_sharded=... --out=...

def to_single(source, out):
    """Write source's sharded checkpoint as one file: out's ckpt.pt (out: a folder, or a .pt file)."""
    if find_checkpoint(source) is None or find_checkpoint(source)[0] != "sharded":
        raise CheckpointError(f"{source} holds no sharded checkpoint ({SHARDED_NAME}/) to convert")
    save_checkpoint(load_checkpoint(source), out)
    return checkpoint_path(out)


def to_sharded(source, out):
    """Write source's ckpt.pt as out's sharded checkpoint (out/ckpt.dcp/), from this one process."""
    if find_checkpoint(source) is None or find_checkpoint(source)[0] != "single":
        raise CheckpointError(f"{source} holds no single-file checkpoint ({CKPT_NAME}) to convert")
    if str(out).endswith(".pt"):
        raise CheckpointError(f"--out={out} ends in .pt: a sharded checkpoint goes into an out_dir folder")
    ckpt = load_checkpoint(source)
    state = {"model": model_from_checkpoint(ckpt, checkpoint_path(source)).state_dict()}
    if "optimizer" in ckpt:  # no optimizer is built: its state is renamed as saved
        names = [name for group in ckpt["optimizer"]["param_groups"] for name in group.get("param_names", ())]
        if not names:
            raise CheckpointError(f"the optimizer state in {source} does not name its parameters (saved by an older "
                                  f"train.py): resume the run for one checkpoint first, then convert")
        state["optimizer"] = rekeyed(ckpt["optimizer"], names)
    extras = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    save_sharded_checkpoint(extras, out, state=state)
    return os.path.join(out, SHARDED_NAME)


CONVERT_DEFAULTS = dict(
    to_single="",  # an out_dir holding a sharded checkpoint (ckpt.dcp/): written as one ckpt.pt
    to_sharded="",  # an out_dir or .pt holding a single-file checkpoint: written as a sharded ckpt.dcp/
    out="",  # where: a folder (out/ckpt.pt or out/ckpt.dcp/), or a .pt file for --to_single
    overwrite=False,  # replace a checkpoint already at --out
)


def convert(to_single_from, to_sharded_from, out, overwrite):
    if bool(to_single_from) == bool(to_sharded_from):
        raise CheckpointError("pass one of --to_single=OUT_DIR and --to_sharded=OUT_DIR, and --out=WHERE")
    if not out:
        raise CheckpointError("pass where to write with --out=FOLDER (or --out=FILE.pt for --to_single)")
    if find_checkpoint(out) is not None and not overwrite:
        raise CheckpointError(f"--out={out} holds a checkpoint already: pick another --out, or replace it "
                              f"with --overwrite=True")
    return to_single(to_single_from, out) if to_single_from else to_sharded(to_sharded_from, out)


if __name__ == "__main__":
    cfg = configure_or_exit(CONVERT_DEFAULTS)
    try:
        written = convert(cfg["to_single"], cfg["to_sharded"], cfg["out"], cfg["overwrite"])
    except (CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {written}")
