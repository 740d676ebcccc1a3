"""
Train a GPT, nanoGPT-style: one process on CPU / CUDA / MPS, or DDP under torchrun, or FSDP2 (--fsdp=True) for
models whose weights, gradients and AdamW state do not fit one GPU: each process then holds a shard of them.

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/SOME_CONFIG.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py ...
    torchrun --standalone --nproc_per_node=8 train.py config/SOME_CONFIG.py --fsdp=True

Every log and eval line is also appended as JSON to out_dir/log.jsonl. Checkpoints (out_dir/ckpt.pt; under FSDP
the sharded out_dir/ckpt.dcp/, see inheritune/checkpoint.py) hold everything needed to continue exactly: --init_from=resume
on CPU reproduces an uninterrupted run's losses bit for bit. SIGTERM / SIGINT save a checkpoint at the next step
boundary and exit 0.

Requeue-safe: the same command run again (a Slurm requeue, a torchrun restart) continues from out_dir's
checkpoint when that checkpoint's config is this command's (max_iters and the other RESUMABLE_KEYS may
differ), and log.jsonl goes on from the checkpoint without repeated records. A new run never replaces
another run's checkpoint or log: it stops with an error unless given --overwrite=True. A resumed run
takes its settings from the checkpoint's config, overridden by what config files and flags set.
"""

import faulthandler
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from inheritune import configurator
from inheritune import data
import inherit
from inheritune import perf
from inheritune.checkpoint import (SHARDED_NAME, CheckpointError, checkpoint_path, empty_model, find_checkpoint, load_checkpoint,
                        load_model, load_optimizer_state, load_shards, model_fingerprint, save_checkpoint,
                        save_sharded_checkpoint, strip_wrapper_prefixes)
from inheritune.hf import ModelLoadError
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config, overridden by config files and --key=value (see configurator.py)
# I/O
out_dir = "out"  # a folder: ckpt.pt and log.jsonl go there (it is created when first written to)
init_from = "scratch"  # 'scratch' | 'resume' (out_dir/ckpt.pt) | 'inherit' | a GPT-2 name, HF folder or our checkpoint
overwrite = False  # True: a new run may replace the checkpoint and log.jsonl of another run in out_dir
eval_interval = 2000
log_interval = 1
eval_iters = 200  # validation batches per eval: eval_iters * batch_size fixed windows
eval_only = False  # evaluate once, print the losses and exit (writes nothing)
always_save_checkpoint = True  # save at every eval, not only when val loss improves
# wandb logging
wandb_log = False
wandb_project = "inheritune"
wandb_run_name = "gpt2"
# data
dataset = "openwebtext"
data_dir = ""  # default: data/<dataset>
gradient_accumulation_steps = 5 * 8  # global count, divided by the number of processes
batch_size = 12  # micro-batch size per process
block_size = 1024
# model (for init_from='scratch'; pretrained and resumed models bring their own shape)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining, try 0.1+ for finetuning
bias = False  # biases in Linears and LayerNorms; False is a bit faster
scale_attn_by_inverse_layer_idx = False
vocab_size = 0  # 0: the dataset's (meta.json); GPT-2 configs pad 50257 to 50304, a multiple of 64, for speed
# Inheritune: init_from='inherit' takes the first n_layer blocks (or inherit_layers) of a reference model
reference = ""  # the larger pre-trained model: a GPT-2 name, an HF GPT-2 / Llama / Qwen2 / Mistral folder, our out_dir
inherit_layers = ""  # explicit reference block indices, e.g. "0,1,2,3" (default: the first n_layer)
inherit_fresh = ""  # parts left at fresh init instead of copied: "wpe", "ln_f", "wpe,ln_f"
# growth: every grow_every iterations, evaluate; below the target stop, else add grow_by blocks
grow_every = 0  # iterations per round; 0 = no growth
grow_by = 2
max_layers = 0  # 0: the reference's depth
grow_mode = "restart"  # 'restart': each round afresh (new optimizer and schedule) | 'continue': both go on
grow_init = "reference"  # new blocks: 'reference' | 'stack' (all blocks twice) | continue mode: 'copy' 'identity' 'random'
target_val_loss = 0.0  # 0: the reference's val loss (without a reference: none, grow at every round end)
stop_at_target = True  # end the run once a round reaches the target
# knowledge distillation: loss = kd_alpha * CE + (1 - kd_alpha) * kd_temperature^2 * KL(teacher || student)
teacher = ""  # the frozen teacher: a GPT-2 name, a Hugging Face folder, or our out_dir / ckpt.pt ("": none)
kd_alpha = 0.6  # the cross-entropy's weight; the teacher's KL gets 1 - kd_alpha
kd_temperature = 1.0  # softmax temperature of both distributions in the KL
# AdamW
learning_rate = 6e-4  # peak learning rate
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this norm; 0.0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr (counted from the round's start)
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000  # ~ max_iters per Chinchilla
min_lr = 6e-5  # ~ learning_rate / 10 per Chinchilla
# system
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
dtype = "auto"  # 'float32' | 'bfloat16' | 'float16' | 'auto': bfloat16 on CUDA (float16 on old GPUs), else float32
compile = device == "cuda"  # torch.compile the model; works on CPU too, but is slow to start there
backend = "auto"  # DDP backend: 'auto' (nccl on CUDA, gloo elsewhere) | 'nccl' | 'gloo'
dist_timeout_s = 600  # DDP: a rendezvous or collective waiting longer fails, so torchrun can restart (gloo's own: 1800)
fsdp = False  # under torchrun: shard parameters, gradients and AdamW state over the processes (FSDP2) instead of DDP
fsdp_shard_size = 0  # processes per shard group, 0: all; e.g. GPUs per node: shard in a node, replicate across (HSDP)
fsdp_cpu_offload = False  # FSDP: keep the shards of parameters, gradients and AdamW state in CPU memory
activation_checkpointing = False  # recompute each block's activations in the backward pass instead of keeping them
seed = 1337
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items()
               if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str))]
defaults = {k: globals()[k] for k in config_keys}
given = configurator.overrides_or_exit(defaults)  # what config files and --key=value flags set
config = defaults | given
globals().update(config)
# -----------------------------------------------------------------------------
master_process = int(os.environ.get("RANK", "0")) == 0  # rank 0 (or the only process): it prints and writes

MODEL_SHAPE_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name != "dropout")  # a Llama shape survives resume
TRAINING_STATE_KEYS = ("model", "model_args", "config", "optimizer", "scaler", "iter_num", "round_start_iter",
                       "best_val_loss", "rng", "sampler", "last_eval", "log_size", "compute")
# A resumed run takes this machine's and this command's keys from the command line (or the defaults) only, and
# every other key from the checkpoint's config unless a config file or flag sets it.
MACHINE_KEYS = ("device", "dtype", "compile", "backend", "dist_timeout_s", "fsdp", "fsdp_shard_size",
                "fsdp_cpu_offload", "activation_checkpointing")
COMMAND_KEYS = ("out_dir", "init_from", "eval_only", "overwrite")
# Keys in which attempts of one run may differ (train longer, log differently, the reference moved): the same
# command with other values still continues the run; any other difference makes out_dir's checkpoint another run's.
RESUMABLE_KEYS = ("max_iters", "lr_decay_iters", "eval_interval", "log_interval", "always_save_checkpoint",
                  "wandb_log", "wandb_run_name", "reference", "teacher")


def fail(message):
    """A user error: say what was wrong and what to do (rank 0 says it), exit non-zero."""
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(f"error: {message}" if master_process else 1)


def check_settings(cfg, new_model):
    """Refuse settings that cannot work, naming the key (ConfigError), before any work; return warnings
    about settings that work but are likely mistakes."""
    positive = ["learning_rate", "batch_size", "block_size", "gradient_accumulation_steps", "eval_iters",
                "eval_interval", "log_interval", "dist_timeout_s"]
    positive += ["n_layer", "n_head", "n_embd"] if new_model else []
    positive += ["grow_by"] if cfg["grow_every"] else []
    for key in positive:
        if not cfg[key] > 0:
            raise configurator.ConfigError(f"{key}={cfg[key]!r} must be positive")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "grad_clip", "vocab_size",
                "grow_every", "max_layers", "target_val_loss", "fsdp_shard_size"):
        if cfg[key] < 0:
            raise configurator.ConfigError(f"{key}={cfg[key]!r} must not be negative"
                                           + (" (0 evaluates the model once and exits)" if key == "max_iters" else ""))
    for key in ("dropout", "beta1", "beta2"):
        if not 0 <= cfg[key] < 1:
            raise configurator.ConfigError(f"{key}={cfg[key]!r} must be at least 0 and below 1")
    for key, allowed in (("dtype", ("auto", "float32", "bfloat16", "float16")), ("backend", ("auto", "nccl", "gloo")),
                         ("grow_mode", ("restart", "continue")), ("grow_init", inherit.GROW_INITS)):
        if cfg[key] not in allowed:
            raise configurator.ConfigError(f"{key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    if cfg["fsdp"] and cfg["dtype"] == "float16":
        raise configurator.ConfigError("dtype='float16' cannot train under fsdp=True (its loss scaling would have to "
                                       "span the shards): use bfloat16 (or float32)")
    if cfg["grow_every"] and cfg["grow_mode"] == "restart" and cfg["grow_init"] not in ("reference", "stack"):
        raise configurator.ConfigError(
            f"grow_init={cfg['grow_init']!r} adds blocks to the trained ones and keeps training them: use "
            f"grow_mode='continue' (restart mode starts each round from the reference's blocks or, with 'stack', "
            f"from the trained blocks twice)")
    if not 0 <= cfg["kd_alpha"] <= 1:
        raise configurator.ConfigError(f"kd_alpha={cfg['kd_alpha']!r} must be between 0 and 1: the weight of the "
                                       f"cross-entropy (the teacher's KL gets 1 - kd_alpha)")
    if not cfg["kd_temperature"] > 0:
        raise configurator.ConfigError(f"kd_temperature={cfg['kd_temperature']!r} must be positive (1.0: the plain "
                                       f"softmax)")
    if new_model and cfg["n_embd"] % cfg["n_head"]:
        raise configurator.ConfigError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}: "
                                       f"each head gets n_embd / n_head dimensions")
    if cfg["decay_lr"] and cfg["min_lr"] > cfg["learning_rate"]:
        raise configurator.ConfigError(f"min_lr={cfg['min_lr']} is above learning_rate={cfg['learning_rate']}: "
                                       f"the cosine would rise; lower min_lr (e.g. to learning_rate / 10)")
    if cfg["decay_lr"] and cfg["warmup_iters"] >= cfg["lr_decay_iters"]:
        raise configurator.ConfigError(
            f"warmup_iters={cfg['warmup_iters']} is not below lr_decay_iters={cfg['lr_decay_iters']}: the learning "
            f"rate would drop from its peak straight to min_lr; raise lr_decay_iters or lower warmup_iters")
    warnings, round_iters = [], cfg["grow_every"]
    if round_iters and cfg["decay_lr"]:
        # Restart mode gives each round its own warmup and cosine: a round no longer than the warm-up ends before
        # the learning rate ever decays, and its round_end decision would compare a model trained only at rising
        # learning rates with the target, which cannot be what was meant: refused. A cosine longer than a round
        # only ends each round above min_lr (a choice: warned); in continue mode the schedule spans the whole run,
        # so a warm-up longer than a round is unusual but well defined (warned).
        if cfg["warmup_iters"] >= round_iters and cfg["grow_mode"] == "restart":
            raise configurator.ConfigError(
                f"warmup_iters={cfg['warmup_iters']} is not below grow_every={round_iters}: in restart mode every "
                f"round would be pure warm-up; lower warmup_iters (the paper: 2K of a 100K round)")
        if cfg["warmup_iters"] >= round_iters:
            warnings.append(f"warmup_iters={cfg['warmup_iters']} >= grow_every={round_iters}: the first round ends "
                            f"while the learning rate is still warming up")
        if cfg["lr_decay_iters"] > round_iters and cfg["grow_mode"] == "restart":
            warnings.append(f"lr_decay_iters={cfg['lr_decay_iters']} > grow_every={round_iters}: each round ends "
                            f"before its cosine reaches min_lr (the paper's configs set lr_decay_iters = grow_every)")
    if round_iters and cfg["max_iters"] < round_iters:
        warnings.append(f"max_iters={cfg['max_iters']} < grow_every={round_iters}: no round ends in this run")
    return warnings


def recorded_config(ckpt):
    """The settings a checkpoint records of its run, as train.py keys: its model's context and its saved config
    (keys this train.py knows, with a value of the right type; an empty string means "not recorded"), less this
    machine's and this command's keys."""
    saved = {"block_size": ckpt["model_args"].get("block_size")} | dict(ckpt.get("config") or {})
    recorded = {k: v for k, v in saved.items() if k in defaults and k not in MACHINE_KEYS + COMMAND_KEYS
                and type(v) is type(defaults[k]) and v != ""}
    if "dataset" in given and "data_dir" not in given:
        recorded.pop("data_dir", None)  # --dataset names the data; the run's recorded data_dir would win over it
    return recorded


def run_differences(saved, cfg):
    """'key=value there, value here' for each setting that tells two runs apart and differs between them."""
    ignored = MACHINE_KEYS + RESUMABLE_KEYS + ("out_dir", "eval_only", "overwrite")  # init_from: how a run began
    return [f"{k}={saved[k]!r} there, {v!r} here" for k, v in cfg.items()
            if k in saved and k not in ignored and saved[k] != v]


def logged_run_config(path):
    """The config of the run_start record that begins a log.jsonl, or None."""
    try:
        with open(path) as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return first.get("config") if isinstance(first, dict) and first.get("event") == "run_start" else None


def open_run():
    """The checkpoint this command continues, or None for a new run.

    --init_from=resume continues out_dir's checkpoint. Any other command into an out_dir that already holds a
    checkpoint or log.jsonl continues that run when the configs agree (as litgpt's resume="auto": the same
    command again after a crash or preemption needs no edit) and otherwise stops: replacing another run's
    checkpoint takes --overwrite=True.
    """
    if init_from == "resume":
        if overwrite:
            fail("overwrite=True starts a new run in out_dir; it cannot be combined with init_from='resume'")
        if find_checkpoint(out_dir) is None:
            fail(f"init_from='resume' found no checkpoint at {ckpt_path}: point out_dir at the run to continue")
        return load_checkpoint(out_dir, weights=not fsdp)  # FSDP reads the weights after sharding the model
    has_checkpoint = find_checkpoint(out_dir) is not None
    if overwrite or not (has_checkpoint or os.path.isfile(log_path)):
        return None
    previous = load_checkpoint(out_dir, weights=not fsdp) if has_checkpoint else None
    saved = (previous.get("config") if previous else logged_run_config(log_path)) or {}
    differences = run_differences(saved, config)
    if not saved or differences:
        what = f"the checkpoint (iter {previous.get('iter_num', 0)})" if previous else "the log.jsonl"
        why = f" has {'; '.join(differences[:3])}" if differences else " records no config to compare"
        fail(f"out_dir={out_dir} holds another run: {what}{why}. Continue that run with --init_from=resume, "
             f"pick another --out_dir, or replace it with --overwrite=True")
    if master_process:
        print(f"continuing the run in {out_dir} from its checkpoint at iter {previous.get('iter_num', 0)}: its config "
              f"is this command's (--overwrite=True starts over)" if previous else
              f"starting the run in {out_dir} again: its earlier attempt stopped before its first checkpoint")
    return previous


# Building blocks, kept small so that growing the model mid-run can call them again.
def build_model(model_args, state_dict=None):
    """A GPT of model_args on build_device, with state_dict's weights if given."""
    model = GPT(GPTConfig(**model_args))
    if state_dict is not None:
        model.load_state_dict(strip_wrapper_prefixes(state_dict))
    return model.to(build_device)


def shape_of(config):
    """A GPT of config on the meta device: its shape without memory (what FSDP ranks other than 0 build)."""
    with torch.device("meta"):
        return GPT(config)


def shapes_only():
    """Under FSDP, where ranks other than 0 build models: on the meta device (rank 0 builds the weights alone)."""
    return torch.device("meta") if fsdp and not master_process else nullcontext()


def checkpoint_activations(model):
    """Per-block activation checkpointing: each block's forward runs again in the backward pass to recompute its
    activations instead of keeping them (the same numbers; less memory, about a third more compute)."""
    for block in model.transformer.h:
        block.forward = recomputed(block.forward)


def recomputed(forward):
    """forward, its activations recomputed in the backward pass (a function, not a partial: torch.compile traces it)."""
    def checkpointed(*args):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False)
    return checkpointed


def wrap_model(raw_model, weights=True):
    """The module the training step calls: raw_model compiled and/or DDP-wrapped as configured, or under FSDP a
    sharded copy of it (shard_model; weights=False: its weights are read from a sharded checkpoint afterwards)."""
    if fsdp:
        return shard_model(raw_model, weights)
    if activation_checkpointing:
        checkpoint_activations(raw_model)
    model = torch.compile(raw_model) if compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[ddp_local_rank] if device_type == "cuda" else None)
    return model


def shard_model(raw_model, weights=True, training=True, compiled=None):
    """FSDP2 as torchtitan applies it: raw_model's shape made on every rank (on the meta device), each block sharded
    over the mesh with fully_shard, then the root (the embeddings, final norm and head); parameters gathered in
    dtype for compute, gradients reduced in float32; the shards in CPU memory with fsdp_cpu_offload. For training,
    activation checkpointing and torch.compile per block come first (compiled=True: a frozen model's blocks are
    compiled too, as a teacher's). The weights are rank 0's raw_model's, sent to every rank's shards (the other
    ranks' raw_model is only a shape)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    with torch.device("meta"):
        model = GPT(raw_model.config)
    settings = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32),
                    offload_policy=CPUOffloadPolicy(pin_memory=device_type == "cuda") if fsdp_cpu_offload
                    else OffloadPolicy())
    if training and activation_checkpointing:
        checkpoint_activations(model)
    for block in model.transformer.h:
        if compile and (training if compiled is None else compiled):
            block.compile()
        fully_shard(block, **settings)
    fully_shard(model, **settings, reshard_after_forward=None if training else True)  # a frozen model: no backward
    model.to_empty(device="cpu" if fsdp_cpu_offload else device)
    if weights:
        set_model_state_dict(model, raw_model.state_dict() if master_process else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def full_model(model):
    """Under FSDP, the whole model gathered into rank 0's CPU memory (a collective); its shape on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not master_process:
        return shape_of(model.config)
    full = empty_model(asdict(model.config))
    full.load_state_dict(state)
    return full


def share_from_rank0(values):
    """Rank 0's values (picklable) on every rank."""
    box = [values]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, dist.DistError):
        if master_process:
            raise
        sys.exit(1)  # rank 0 stopped first (with its error message) and torchrun stops the others
    return box[0]


def reference_on_rank0(source):
    """inherit.Reference(source); under FSDP only rank 0 opens it (and reads its blocks), the other ranks hold the
    reference's shape (meta device), for which inherit() and grow() build shapes too."""
    if not fsdp:
        return inherit.Reference(source)
    reference = inherit.Reference(source) if master_process else None
    config = share_from_rank0(reference.config if master_process else None)
    return reference if master_process else shape_of(config)


def clip_gradients(parameters, max_norm):
    """Scale the gradients down to a total norm of max_norm if above it; returns the total norm before. Under FSDP
    each rank holds a shard of every gradient (DTensors): the norm is the whole gradient's, summed over the shards."""
    parameters = list(parameters)
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if fsdp:  # a DTensor: the whole gradient's norm, from every rank's shards
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def make_optimizer(raw_model):
    return raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)


def get_lr(it, round_start_iter):
    """Linear warmup, then cosine decay to min_lr; iterations count from the current round's start."""
    if not decay_lr:
        return learning_rate
    it -= round_start_iter
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def distillation_loss(student_logits, teacher_logits):
    """KL(teacher || student) of the next-token distributions at kd_temperature, summed over the vocabulary per
    token and averaged over tokens, in float32. Both softmaxes run over the data's token ids only (the first
    meta["vocab_size"] logits): ids that padding adds (GPT-2's 50257 to 50304) never occur in the data, so a
    teacher and a student whose vocabularies differ only by padding are compared on the same distribution."""
    v = meta["vocab_size"]
    log_q = F.log_softmax(student_logits[..., :v].float() / kd_temperature, dim=-1).reshape(-1, v)
    log_p = F.log_softmax(teacher_logits[..., :v].float() / kd_temperature, dim=-1).reshape(-1, v)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def rng_state():
    """This process's RNG states as tensors and plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "cached_gaussian": np_state[4]},
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if device_type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (a collective: every rank must call it)."""
    if not ddp:
        return [obj]
    objs = [None] * ddp_world_size
    dist.all_gather_object(objs, obj)
    return objs



def init_distributed(backend_name):
    """The process group of this torchrun launch, failing after dist_timeout_s (not the default 30 minutes of gloo)
    when a rendezvous or collective cannot complete (a peer died or never came), so torchrun can restart the group.

    torchrun's agent keeps one TCPStore for every restart of its workers, and PyTorch gives the process group no
    per-restart key prefix: a restarted group can read the dead group's addresses from it and fail to connect
    ("Connection refused", or a hang at start-up; pytorch/pytorch#135712). On one node every worker comes from one
    agent and sees the same TORCHELASTIC_RESTART_COUNT, which then names a key space of the group's own. (Across
    nodes the counts can differ; there, run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.)
    """
    timeout = timedelta(seconds=dist_timeout_s)
    env = os.environ
    # gloo's connection set-up can wait past the timeout it is given (seen: minutes in Pair::waitUntilConnected with
    # a 30 s timeout): then faulthandler's watchdog thread, which needs no GIL, prints where it hangs and exits
    faulthandler.dump_traceback_later(dist_timeout_s + min(dist_timeout_s, 60), exit=True)
    try:
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and env.get("LOCAL_WORLD_SIZE") == env["WORLD_SIZE"]:
            agent_store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
            store = dist.PrefixStore(f"inheritune/restart{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)
            dist.init_process_group(backend_name, store=store, rank=ddp_rank, world_size=ddp_world_size,
                                    timeout=timeout)
        else:
            dist.init_process_group(backend_name, timeout=timeout)
    except (RuntimeError, dist.DistError) as e:  # a peer that never came, an address that does not answer
        message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        sys.exit(f"error: rank {ddp_rank}: the process group was not set up within dist_timeout_s={dist_timeout_s} "
                 f"({message})")
    faulthandler.cancel_dump_traceback_later()


def save_training_checkpoint():
    """Everything needed to continue exactly, written atomically: by rank 0 as ckpt.pt, or under FSDP by every rank
    (its own shards) as ckpt.dcp/ (every rank must call this).

    A failed write (a full disk) leaves the previous checkpoint as it was and stops every rank with a message.
    """
    global checkpoint_iter
    rng_states, sampler_states = gather(rng_state()), gather(train_batches.state_dict())
    ckpt = dict(checkpoint_extras)  # keys other scripts wrote (e.g. inherit.py's metadata) are kept
    ckpt.update(
        model_args=model_args, config=config, scaler=scaler.state_dict(),
        iter_num=iter_num, round_start_iter=round_start_iter, best_val_loss=best_val_loss, compute=compute,
        rng=rng_states, sampler=sampler_states, last_eval=last_eval, log_size=log_size,
    )
    where, error = os.path.join(out_dir, SHARDED_NAME) if fsdp else ckpt_path, None
    try:
        if fsdp:
            save_sharded_checkpoint(ckpt, out_dir, raw_model, optimizer)
        elif master_process:
            save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict()} | ckpt, ckpt_path)
        if master_process:
            print(f"saved checkpoint at iter {iter_num} to {where}")
    except OSError as e:
        kept = (f"the previous checkpoint (iter {checkpoint_iter}) is intact" if find_checkpoint(out_dir)
                else "no checkpoint was written")
        error = (f"could not save the checkpoint of iter {iter_num} to {where} ({e.strerror or e}); {kept}. "
                 f"Free space and run the same command again: it continues from the checkpoint")
    if ddp:  # no rank goes on (or exits on preemption) before rank 0's save has succeeded or failed
        outcome = [error]
        dist.broadcast_object_list(outcome, src=0)
        error = outcome[0]
    if error:
        fail(error)
    checkpoint_iter = iter_num


def log(record):
    """Print a log record and append it as one JSON line to out_dir/log.jsonl (and wandb); eval_only only prints."""
    if not master_process:
        return
    print(" | ".join(f"{k} {v:.4f}" if k.endswith("loss") else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items() if v is not None))
    if eval_only:
        return
    append_log(record)
    if wandb_log:
        wandb.log({k: v for k, v in record.items() if v is not None}, step=record["iter"])


def append_log(record):
    """Append record to out_dir/log.jsonl; log_size follows the file's length (each checkpoint records it)."""
    global log_size
    os.makedirs(out_dir, exist_ok=True)  # out_dir appears with the first thing written into it
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
        log_size = f.tell()


def finish():
    """Leave wandb and the process group after a run that went to its end; exit 0."""
    if wandb_log and master_process:
        wandb.finish()
    if ddp:
        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            # PyTorch's gloo now and then aborts in its C++ teardown at interpreter exit, after all work is done (3
            # runs in 60 of a minimal DDP script on CPU), and torchrun then reports a failed run: leave without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    sys.exit(0)


# -----------------------------------------------------------------------------
# the run: a new one, or one to continue (--init_from=resume, or the same command again after a crash)
world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's process count
if fsdp and "RANK" not in os.environ:  # (under torchrun, even one process runs FSDP: its cost against DDP's)
    print("note: fsdp=True in a single process (not under torchrun) has nothing to shard: training as one plain "
          "process")
    fsdp = given["fsdp"] = config["fsdp"] = False
if fsdp and fsdp_shard_size and world_size % fsdp_shard_size:
    fail(f"fsdp_shard_size={fsdp_shard_size} does not divide the {world_size} processes: shard groups of that "
         f"size cannot tile them (e.g. the GPUs per node, with a multiple of it in processes)")
if out_dir.endswith(".pt"):
    fail(f"out_dir={out_dir!r} ends in .pt, but out_dir is a folder (train.py writes ckpt.pt and log.jsonl into it)")
ckpt_path, log_path = checkpoint_path(out_dir), os.path.join(out_dir, "log.jsonl")
try:
    ckpt = open_run()
except CheckpointError as e:
    fail(f"{e}: a new run with --overwrite=True")
resuming = ckpt is not None
if resuming:  # the run's recorded settings, under what this command's config files and flags set
    config = defaults | recorded_config(ckpt) | given
    config["init_from"] = (ckpt.get("config") or {}).get("init_from", "resume")  # how the run began
    globals().update(config)
try:
    configurator.check_device(device)
    for warning in check_settings(config, new_model=not resuming and init_from == "scratch"):
        if master_process:
            print(f"warning: {warning}")
except configurator.ConfigError as e:
    fail(e)
if resuming and not eval_only:
    # A requeued job of a finished run succeeds without work. Stopping before the checkpoint's iteration cannot be
    # done (training is not undone): refused, so that a script that meant to extend the run notices.
    done_iters, growth_end = ckpt.get("iter_num", 0), (ckpt.get("growth") or {}).get("end")
    if max_iters < done_iters:
        fail(f"max_iters={max_iters} is below the iteration of the checkpoint in {out_dir} ({done_iters}): pass "
             f"--max_iters above {done_iters} to train on")
    evaluated = (ckpt.get("last_eval") or {"iter": done_iters})["iter"] == done_iters
    at_target = growth_end == "target reached" and stop_at_target
    if (done_iters == max_iters and evaluated) or at_target:
        if master_process:
            print(f"nothing to do: the run in {out_dir} is complete at iter {done_iters} ("
                  + ("it reached its target val loss; --stop_at_target=False trains on" if at_target
                     else f"max_iters={max_iters}; a larger --max_iters trains on") + ")")
        sys.exit(0)

# -----------------------------------------------------------------------------
# setup: processes, devices, precision
ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
if ddp:
    ddp_rank, ddp_local_rank, ddp_world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{ddp_local_rank}"
        torch.cuda.set_device(device)
    backend_name = ("nccl" if device.startswith("cuda") else "gloo") if backend == "auto" else backend
    if backend_name == "nccl" and fsdp and fsdp_cpu_offload:  # offloaded shards: clipping reduces CPU tensors too
        backend_name = "cpu:gloo,cuda:nccl"
    init_distributed(backend_name)
else:
    ddp_rank, ddp_local_rank, ddp_world_size = 0, 0, 1
device_type = "cuda" if device.startswith("cuda") else "mps" if device.startswith("mps") else "cpu"
if fsdp:  # the processes FSDP shards over: all of them (1-D), or groups of fsdp_shard_size replicated (2-D: HSDP)
    from torch.distributed.device_mesh import init_device_mesh

    shard_size = fsdp_shard_size or ddp_world_size
    mesh = init_device_mesh(device_type, (ddp_world_size // shard_size, shard_size),
                            mesh_dim_names=("replicate", "shard"))
    if shard_size == ddp_world_size:
        mesh = mesh["shard"]
# where models are built: under FSDP rank 0 holds the only full copy, in CPU memory, until wrap_model shards it
build_device = device if not fsdp else "cpu" if master_process else "meta"
if gradient_accumulation_steps % ddp_world_size != 0:
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} (the global count) is not divisible by "
         f"the {ddp_world_size} processes; make it a multiple of {ddp_world_size}")
grad_accum_per_process = gradient_accumulation_steps // ddp_world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size  # independent of the process count
if dtype == "auto":
    cuda_bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = "bfloat16" if cuda_bf16 else "float16" if device_type == "cuda" else "float32"
    config["dtype"] = dtype
if fsdp and dtype == "float16":
    fail("dtype=auto is float16 on this GPU, which has no bfloat16, and fsdp=True cannot train in float16: pass "
         "--dtype=float32")
torch.manual_seed(seed + 1000 * ddp_rank)  # DDP broadcasts rank 0's initial weights, so ranks may differ here
np.random.seed(seed + 1000 * ddp_rank)
random.seed(seed + 1000 * ddp_rank)
torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 matmuls and convolutions on Ampere and later
torch.backends.cudnn.conv.fp32_precision = "tf32"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
# FSDP casts the gathered parameters to ptdtype itself and reduces gradients in float32 (MixedPrecisionPolicy)
autocast_ctx = nullcontext() if dtype == "float32" or fsdp else torch.autocast(device_type=device_type, dtype=ptdtype)
if master_process:
    print(f"config:\n{json.dumps(config, indent=1)}")
    print(f"{ddp_world_size} process(es), {grad_accum_per_process} micro-steps each: "
          f"{tokens_per_iter:,} tokens per iteration"
          + (f"; FSDP over a {' x '.join(map(str, mesh.shape))} mesh {mesh.mesh_dim_names}" if fsdp else ""))

# data
data_dir = data_dir or os.path.join("data", dataset)
try:
    meta = data.load_meta(data_dir)
    train_tokens, val_tokens = data.open_tokens(data_dir, "train"), data.open_tokens(data_dir, "val")
    train_batches = data.TrainBatches(train_tokens, block_size, batch_size, seed + 1000 * ddp_rank)
    eval_offsets = {split: data.eval_offsets(tokens, block_size, eval_iters, batch_size, seed)
                    for split, tokens in (("train", train_tokens), ("val", val_tokens))}
except data.DataError as e:
    fail(e)


def get_batch():
    x, y = train_batches.next()
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# model
iter_num, round_start_iter, best_val_loss, checkpoint_extras = 0, 0, float("inf"), {}
last_eval = None  # {iter, train_loss, val_loss} of the last evaluation
compute = {"tokens": 0, "flops": 0.0}  # training tokens and FLOPs so far, all rounds (FLOPs a float: they pass int64)
ref_model = None  # the reference of init_from='inherit' and of growth: an inherit.Reference, read block by block
try:
    if fsdp and not master_process:
        pass  # rank 0 reads and builds the model alone; this rank gets its shape below and its shards from wrap_model
    elif resuming:  # (checkpoints written before a GPTConfig field existed get GPT-2's default for it)
        saved_args = ckpt["model_args"]
        model_args = {k: saved_args[k] for k in MODEL_SHAPE_KEYS if k in saved_args} | {"dropout": dropout}
        # under FSDP a sharded checkpoint's weights are read into the sharded model (every rank its own shards)
        raw_model = build_model(model_args, ckpt["model"]) if "model" in ckpt else shape_of(GPTConfig(**model_args))
        iter_num = ckpt.get("iter_num", 0)
        round_start_iter = ckpt.get("round_start_iter", 0)
        best_val_loss = ckpt.get("best_val_loss", float("inf"))
        last_eval = ckpt.get("last_eval")
        compute = ckpt.get("compute", compute if iter_num == 0 else None)  # None: saved before they were counted
        checkpoint_extras = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE_KEYS}
    elif init_from == "scratch":
        model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                          vocab_size=vocab_size or meta["vocab_size"], dropout=dropout,
                          scale_attn_by_inverse_layer_idx=scale_attn_by_inverse_layer_idx)
        raw_model = build_model(model_args)
    elif init_from == "inherit":
        if not reference:
            fail("init_from='inherit' needs reference=... (a GPT-2 name, a Hugging Face folder or our out_dir)")
        ref_model = inherit.Reference(reference)  # its config now; inherit() reads only the chosen blocks
        layers = inherit.parse_layers(inherit_layers, n_layer, ref_model.config.n_layer)
        fresh = [p for p in inherit_fresh.split(",") if p]
        raw_model = inherit.inherit(ref_model, layers, fresh, block_size=min(block_size, ref_model.config.block_size),
                                    dropout=dropout).to(build_device)
        width = {k: given[k] for k in ("n_embd", "n_head") if k in given}  # the half-width baseline
        if any(getattr(raw_model.config, k) != v for k, v in width.items()):
            raw_model = inherit.shrink_width(raw_model, **width)
        model_args = {k: getattr(raw_model.config, k) for k in MODEL_SHAPE_KEYS} | {"dropout": dropout}
        checkpoint_extras["inherit"] = inherit.inherit_metadata(reference, layers, ref_model, fresh)
        if raw_model.config.n_embd != ref_model.config.n_embd:
            checkpoint_extras["inherit"]["source_width"] = [ref_model.config.n_embd, ref_model.config.n_head]
        if master_process:
            narrowed = raw_model.config.n_embd != ref_model.config.n_embd
            print(f"inherited blocks {layers} of {reference} ({ref_model.config.n_layer} layers)"
                  + (f", narrowed to n_embd={raw_model.config.n_embd}, n_head={raw_model.config.n_head}" if narrowed
                     else ""))
    else:
        pretrained, _ = load_model(init_from)
        model_args = {k: getattr(pretrained.config, k) for k in MODEL_SHAPE_KEYS} | {"dropout": dropout}
        raw_model = build_model(model_args, pretrained.state_dict())
        del pretrained
except inherit.InheritError as e:
    fail(e)
except (CheckpointError, ModelLoadError) as e:
    fail(f"init_from={init_from!r} (scratch, resume, a GPT-2 name, a Hugging Face folder or a checkpoint): {e}")
if fsdp:  # the other ranks take what rank 0 built: shapes (meta device) and the run's state
    model_config, ref_config, model_args, iter_num, round_start_iter, best_val_loss, last_eval, compute, \
        checkpoint_extras = share_from_rank0((raw_model.config, ref_model and ref_model.config, model_args, iter_num,
                                              round_start_iter, best_val_loss, last_eval, compute, checkpoint_extras)
                                             if master_process else None)
    if not master_process:
        raw_model, ref_model = shape_of(model_config), ref_config and shape_of(ref_config)
checkpoint_iter = iter_num  # the iteration of the checkpoint on disk (for messages)
if block_size > raw_model.config.block_size:
    fail(f"block_size={block_size} is longer than the model's context of {raw_model.config.block_size}")
if block_size < raw_model.config.block_size:
    raw_model.crop_block_size(block_size)
    model_args["block_size"] = block_size
if meta["vocab_size"] > model_args["vocab_size"]:
    fail(f"{data_dir} has a vocabulary of {meta['vocab_size']} ids but the model only {model_args['vocab_size']}: "
         f"use a dataset made with the model's tokenizer (from scratch: vocab_size=0 takes the dataset's)")
if not resuming and init_from != "scratch":  # a pretrained model's data must be tokenized as it was trained
    try:
        model_source = reference if init_from == "inherit" else init_from
        opened = ref_model.checkpoint if isinstance(ref_model, inherit.Reference) else None  # (FSDP: on rank 0)
        data.check_data_tokenizer(meta, data_dir, data.known_model_tokenizer_meta(model_source, opened), model_source)
    except ValueError as e:  # DataError, or a TokenizerError: the model's tokenizer files cannot be read
        fail(e)
if master_process:
    print(f"model: {asdict(raw_model.config)}, {raw_model.get_num_params() / 1e6:.2f}M parameters")

# growth: the reference (on disk: growth reads the blocks it needs), the target, and where the rounds stand
growth = checkpoint_extras.get("growth")  # a resumed growing run brings its state
if grow_every > 0:
    info = checkpoint_extras.get("inherit")
    needs_reference = grow_init == "reference"
    if info is None and needs_reference:
        fail("grow_init='reference' needs a model inherited from a reference (init_from='inherit', or resume an "
             "inherit.py checkpoint); to grow on a fixed schedule without one, use grow_init='stack' (or "
             "grow_mode='continue' with copy, identity or random) and max_layers")
    if ref_model is None and info is not None and (needs_reference or not target_val_loss):
        try:  # resuming: the reference must still be there and be the one this run was inherited from
            ref_model = reference_on_rank0(reference or info["source"])
        except (CheckpointError, ModelLoadError) as e:
            fail(f"this growing run's reference {reference or info['source']!r} cannot be loaded ({e}); "
                 f"pass its current location with --reference=...")
        ref_shape = (ref_model.config.n_layer, ref_model.config.n_embd, ref_model.config.n_head)
        source_shape = (info["source_n_layer"], *info.get("source_width", (model_args["n_embd"], model_args["n_head"])))
        if ref_shape != source_shape:
            fail(f"reference {reference or info['source']!r} (n_layer, n_embd, n_head) = {ref_shape} is not the one this "
                 f"run was inherited from {source_shape}")
    if needs_reference and meta["vocab_size"] > ref_model.config.vocab_size:
        fail(f"{data_dir} has {meta['vocab_size']} token ids, more than the reference's {ref_model.config.vocab_size}")
    if needs_reference and ref_model.config.n_embd != model_args["n_embd"]:
        fail(f"grow_init='reference' adds the reference's {ref_model.config.n_embd}-wide blocks to a "
             f"{model_args['n_embd']}-wide model: grow a narrowed model with grow_init='stack' (or continue mode's "
             f"copy, identity, random)")
    max_depth = max_layers or (info["source_n_layer"] if info else 0)
    if not max_depth:
        fail("growing without a reference needs max_layers")
    if growth is None:
        growth = {"round": 0, "layers": list(info["layers"]) if info else [None] * raw_model.config.n_layer,
                  "done": False, "target_val_loss": target_val_loss or None}
    if target_val_loss:
        growth["target_val_loss"] = target_val_loss
    this_eval = dict(data_dir=os.path.abspath(data_dir), block_size=block_size, eval_iters=eval_iters,
                     batch_size=batch_size, seed=seed)
    if growth["target_val_loss"] is None and info and info.get("reference_eval") == this_eval:
        growth["target_val_loss"] = info["reference_val_loss"]  # inherit.py measured it on these very windows
    if growth["target_val_loss"] is None and info:  # the reference's loss on this run's own windows: all of it, once
        # (under FSDP rank 0 reads it and it is sharded over the ranks, the other ranks holding only its shape)
        full_reference = ref_model.load() if isinstance(ref_model, inherit.Reference) else ref_model
        full_reference = shard_model(full_reference, training=False) if fsdp else full_reference.to(device)
        growth["target_val_loss"] = data.evaluate_loss(full_reference, val_tokens, eval_offsets["val"], block_size,
                                                       batch_size, device, autocast_ctx, ddp_rank, ddp_world_size)
        del full_reference
        info["reference_val_loss"], info["reference_eval"] = growth["target_val_loss"], this_eval
    checkpoint_extras["growth"] = growth
    if master_process:  # without a reference or a target: a fixed schedule, growing at every round end
        target = growth["target_val_loss"]
        print(f"growth: round {growth['round']}, {raw_model.config.n_layer} layers, "
              + (f"target val loss {target:.4f}" if target is not None else "no target (a fixed schedule)")
              + f", {'doubled' if grow_init == 'stack' else f'+{grow_by} layers'} every {grow_every} iters up to "
              f"{max_depth}")
if not (grow_every > 0 and needs_reference):
    ref_model = None  # inherited from already; growth does not need it

# knowledge distillation: the teacher, frozen and in eval mode; it takes no gradients, so it is never DDP-wrapped;
# under FSDP rank 0 alone reads it and it is sharded over the ranks like the student
teacher_model, teacher_flops_per_token = None, 0.0
if teacher:
    try:
        with torch.random.fork_rng(devices=[]):  # building it draws no numbers from this run's random stream
            teacher_model = load_model(teacher)[0] if master_process or not fsdp else None
    except (CheckpointError, ModelLoadError) as e:
        fail(f"teacher={teacher!r} (a GPT-2 name, a Hugging Face folder or our out_dir / .pt) cannot be loaded: {e}")
    fingerprint = model_fingerprint(teacher_model) if teacher_model is not None else None
    if fsdp:  # the other ranks hold its shape until shard_model spreads rank 0's weights
        teacher_config, fingerprint = share_from_rank0((teacher_model.config, fingerprint) if master_process else None)
        teacher_model = teacher_model if master_process else shape_of(teacher_config)
    if meta["vocab_size"] > teacher_model.config.vocab_size:
        fail(f"teacher {teacher!r} has a vocabulary of {teacher_model.config.vocab_size} ids, fewer than the "
             f"{meta['vocab_size']} of {data_dir}: distill from a teacher of the data's tokenizer")
    if block_size > teacher_model.config.block_size:
        fail(f"teacher {teacher!r} has a context of {teacher_model.config.block_size} tokens, shorter than "
             f"block_size={block_size}: lower block_size or pick a teacher with a longer context")
    distilled_from = checkpoint_extras.get("distill", {}).get("teacher_fingerprint", fingerprint)
    if distilled_from != fingerprint:  # resuming: the teacher moved (allowed), or was replaced (refused)
        fail(f"teacher {teacher!r} (fingerprint {fingerprint}) is not the teacher this run was distilled from "
             f"(fingerprint {distilled_from}): pass its current location with --teacher=...")
    checkpoint_extras["distill"] = {"teacher": teacher, "teacher_fingerprint": fingerprint}
    if fsdp:
        with torch.random.fork_rng(devices=[]):
            teacher_model = shard_model(teacher_model, training=False, compiled=True)
    else:
        teacher_model = teacher_model.to(device)
    teacher_model.requires_grad_(False).eval()
    teacher_flops_per_token = teacher_model.flops_per_token(block_size) / 3  # its forward pass: 2N + attention
    if master_process:
        print(f"distilling from {teacher} ({teacher_model.config.n_layer} layers): loss = {kd_alpha:g} * CE + "
              f"{1 - kd_alpha:g} * {kd_temperature:g}^2 * KL(teacher || student)")
    if compile and not fsdp:
        teacher_model = torch.compile(teacher_model)

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
from_shards = resuming and "model" not in ckpt  # FSDP resuming a sharded checkpoint: each rank reads its shards
model = wrap_model(raw_model, weights=not from_shards)
raw_model = model if fsdp else raw_model  # FSDP shards the model in place: there is no wrapper around it
optimizer = make_optimizer(raw_model)
if resuming:
    if from_shards:
        load_shards(find_checkpoint(out_dir)[1], raw_model, optimizer)
    elif "optimizer" in ckpt:  # a checkpoint written by inherit.py has weights only: fresh optimizer
        load_optimizer_state(raw_model, optimizer, ckpt["optimizer"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    if "rng" in ckpt:
        if len(ckpt["sampler"]) == ddp_world_size:
            set_rng_state(ckpt["rng"][ddp_rank])
            train_batches.load_state_dict(ckpt["sampler"][ddp_rank])
        elif master_process:
            print(f"note: the checkpoint was written by {len(ckpt['sampler'])} process(es), this run has "
                  f"{ddp_world_size}: batches are drawn afresh, so this run does not replay an uninterrupted one")
    checkpoint_log_size = ckpt.get("log_size")
    del ckpt  # free the weights and optimizer state it held
gpu_name, peak_flops = perf.gpu_peak_flops(device)
flops_per_token = raw_model.flops_per_token(block_size) + teacher_flops_per_token  # a KD step runs the teacher too
if master_process:
    print(f"MFU against {gpu_name}'s bf16 dense peak of {peak_flops / 1e12:.0f} TFLOP/s" if peak_flops else
          f"MFU not reported: no known bf16 peak for {gpu_name or device_type}")
if wandb_log and master_process:
    import wandb

    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# log.jsonl: a resumed run drops the records written after its checkpoint (it writes them again); a new run
# starts it with a run_start record holding its config (what a re-run compares with, if no checkpoint comes)
log_size = 0
if master_process and not eval_only:
    if resuming and os.path.isfile(log_path):
        if checkpoint_log_size is not None and os.path.getsize(log_path) > checkpoint_log_size:
            os.truncate(log_path, checkpoint_log_size)
        log_size = os.path.getsize(log_path)
    elif not resuming:
        if os.path.isfile(log_path):  # --overwrite=True, or an earlier attempt of this run that saved nothing
            os.remove(log_path)
        append_log({"iter": 0, "event": "run_start", "config": config})

# preemption: the handler only sets a flag; the loop saves and exits at the next step boundary
stop_signal = None


def request_stop(signum, frame):
    global stop_signal
    stop_signal = signal.Signals(signum).name


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)


@torch.no_grad()
def estimate_losses():
    """Mean loss on the fixed train and val windows, the same number on every rank; with a teacher also val_kd,
    the KL term on the val windows (val_loss stays the plain cross-entropy, comparable across runs)."""
    losses = {f"{split}_loss": data.evaluate_loss(model, tokens, eval_offsets[split], block_size, batch_size,
                                                  device, autocast_ctx, ddp_rank, ddp_world_size)
              for split, tokens in (("train", train_tokens), ("val", val_tokens))}
    if teacher_model is not None:
        losses["val_kd"] = data.evaluate_loss(model, val_tokens, eval_offsets["val"], block_size, batch_size, device,
                                              autocast_ctx, ddp_rank, ddp_world_size,
                                              loss_fn=lambda m, x, y: distillation_loss(m(x)[0], teacher_model(x)[0]))
    return losses


# -----------------------------------------------------------------------------
# training loop
t_last_log, iters_since_log = time.time(), 0
while True:
    lr = get_lr(iter_num, round_start_iter)
    round_end = (grow_every > 0 and not growth["done"] and iter_num > 0 and iter_num % grow_every == 0
                 and growth.get("last_round_end") != iter_num)
    if iter_num % eval_interval == 0 or iter_num == max_iters or eval_only or round_end:
        if last_eval is not None and last_eval["iter"] == iter_num and not eval_only:
            # resumed from a checkpoint saved after this evaluation: it is in the log already
            losses = {k: last_eval[k] for k in ("train_loss", "val_loss")}
        else:
            losses = estimate_losses()
            depth = {"n_layer": raw_model.config.n_layer, "round": growth["round"]} if growth else {}
            log({"iter": iter_num, **losses, "lr": lr, **depth, **(compute or {})})
            if not math.isfinite(losses["val_loss"]):
                fail(f"the val loss is {losses['val_loss']} at iter {iter_num}: stopping without saving")
            improved = losses["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val_loss"])
            last_eval = {"iter": iter_num, **losses}
            if (improved or always_save_checkpoint) and iter_num > 0 and not eval_only:
                save_training_checkpoint()
        t_last_log, iters_since_log = time.time(), 0  # eval time is not training time
    if round_end:  # every rank decides alike: the val loss was all-reduced
        growth["last_round_end"] = iter_num
        target, depth = growth["target_val_loss"], raw_model.config.n_layer
        added = depth if grow_init == "stack" else grow_by
        reached = target is not None and losses["val_loss"] <= target  # no target: a fixed schedule
        can_grow = not reached and depth + added <= max_depth and iter_num < max_iters
        decision = ("target reached" if reached else "grow" if can_grow else "max_iters reached"
                    if iter_num >= max_iters else f"growth stops: {depth} + {added} layers exceed max depth {max_depth}")
        log({"iter": iter_num, "event": "round_end", "round": growth["round"], "n_layer": depth,
             "round_val_loss": losses["val_loss"], "target_val_loss": target, "decision": decision})
        if not can_grow:
            growth["done"], growth["end"] = True, decision
            if reached and stop_at_target:
                save_training_checkpoint()
                break
        else:
            old_params = dict(raw_model.named_parameters())
            # the reference's blocks are read from its files now; under FSDP rank 0 builds the grown model in CPU
            # memory (continue mode and stacking: from the gathered one), the other ranks its shape, and wrap_model
            # shards it
            try:
                if grow_mode == "restart" and grow_init == "reference":  # Algorithm 1: the first l + grow_by blocks
                    growth["layers"] += [growth["layers"][-1] + 1 + j for j in range(grow_by)]
                    with shapes_only():
                        raw_model = inherit.inherit(ref_model, growth["layers"], checkpoint_extras["inherit"]["fresh"],
                                                    block_size=block_size, dropout=dropout).to(build_device)
                elif grow_init == "stack":  # Gong et al. (2019): the trained blocks twice, in order
                    raw_model = full_model(raw_model) if fsdp else raw_model
                    with shapes_only():
                        raw_model = inherit.grow(raw_model, depth, "stack")
                    growth["layers"] = growth["layers"] * 2
                else:
                    next_ref = max((i for i in growth["layers"] if i is not None), default=-1) + 1
                    raw_model = full_model(raw_model) if fsdp else raw_model
                    with shapes_only():
                        raw_model = inherit.grow(raw_model, grow_by, grow_init, ref_model, next_ref)
                    growth["layers"] += [next_ref + j if grow_init == "reference" else None for j in range(grow_by)]
            except (inherit.InheritError, CheckpointError, ModelLoadError) as e:
                fail(f"growing at iter {iter_num}: {e} (the last checkpoint, before this growth, stays)")
            model_args["n_layer"] = raw_model.config.n_layer
            model = wrap_model(raw_model)
            raw_model = model if fsdp else raw_model
            new_optimizer = make_optimizer(raw_model)
            if grow_mode == "continue":  # kept parameters keep their AdamW moments (under FSDP: the same shards)
                for name, p in raw_model.named_parameters():
                    if name in old_params and old_params[name] in optimizer.state:
                        new_optimizer.state[p] = optimizer.state[old_params[name]]
            else:
                round_start_iter = iter_num  # fresh warmup and cosine
            optimizer = new_optimizer
            del old_params
            flops_per_token = raw_model.flops_per_token(block_size) + teacher_flops_per_token
            growth["round"] += 1
            best_val_loss = float("inf")  # a new round's losses are not comparable to the last one's
            log({"iter": iter_num, "event": "grow", "round": growth["round"], "n_layer": raw_model.config.n_layer,
                 "grow_mode": grow_mode, "grow_init": grow_init,
                 "layers": growth["layers"], "start_val_loss": estimate_losses()["val_loss"]})
            save_training_checkpoint()  # a resume continues at the grown depth
            lr = get_lr(iter_num, round_start_iter)
    if iter_num >= max_iters or eval_only:
        break

    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    kd_parts = torch.zeros(2, device=device)  # with a teacher: the step's mean CE and KL, logged apart
    for micro_step in range(grad_accum_per_process):
        last_micro_step = micro_step == grad_accum_per_process - 1
        if fsdp:  # reduce-scatter gradients only after the last micro-step (until then they accumulate unsharded)
            model.set_requires_gradient_sync(last_micro_step)
            model.set_is_last_backward(last_micro_step)
        elif ddp:  # all-reduce gradients only on the last micro-step
            model.require_backward_grad_sync = last_micro_step
        x, y = get_batch()
        with autocast_ctx:
            logits, loss = model(x, y)
            if teacher_model is not None:  # distillation: the CE weighted kd_alpha, the teacher's KL the rest
                with torch.no_grad():
                    teacher_logits, _ = teacher_model(x)
                ce, kd = loss, distillation_loss(logits, teacher_logits)
                loss = kd_alpha * ce + (1 - kd_alpha) * kd_temperature ** 2 * kd
                kd_parts += torch.stack([ce.detach(), kd.detach()]) / grad_accum_per_process
        loss = loss / grad_accum_per_process  # the mean over micro-steps, as one big batch would give
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    # one small all-reduce per step: the mean loss, and whether any rank was asked to stop
    status = torch.stack([loss_sum, torch.tensor(float(stop_signal is not None), device=device)])
    if ddp:
        dist.all_reduce(status)
    step_loss, stop_requested = (status / torch.tensor([ddp_world_size, 1.0], device=device)).tolist()
    if not math.isfinite(step_loss):
        found = find_checkpoint(out_dir)
        kept = f"the last good checkpoint ({found[1]}) stays" if found else "no checkpoint written"
        fail(f"the loss is {step_loss} at iter {iter_num}: stopping without saving ({kept}). "
             f"Lower learning_rate, raise warmup_iters, or use dtype=bfloat16 / float32.")
    grad_norm = None
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iters_since_log += 1
    if iter_num % log_interval == 0:
        dt = (time.time() - t_last_log) / iters_since_log
        tokens_per_s = tokens_per_iter / dt
        if teacher_model is not None and ddp:
            dist.all_reduce(kd_parts)
            kd_parts /= ddp_world_size
        kd_record = dict(zip(("ce", "kd"), kd_parts.tolist())) if teacher_model is not None else {}
        log({"iter": iter_num, "loss": step_loss, **kd_record, "lr": lr,
             "grad_norm": None if grad_norm is None else grad_norm.item(), "tok_per_s": round(tokens_per_s),
             "ms_per_step": round(dt * 1000, 2),
             "mfu": perf.mfu(flops_per_token, tokens_per_s, peak_flops, ddp_world_size)})
        t_last_log, iters_since_log = time.time(), 0
    iter_num += 1
    if compute is not None:
        compute["tokens"] += tokens_per_iter
        compute["flops"] += flops_per_token * tokens_per_iter  # at this round's depth

    if stop_requested:
        if master_process:
            print(f"received {stop_signal or 'a stop request on another rank'}: saving and exiting")
        save_training_checkpoint()
        if master_process:
            print(f"to continue, run the same command again (or: train.py --init_from=resume --out_dir={out_dir})")
        break

finish()
