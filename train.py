"""
Train a GPT, nanoGPT-style: one process on CPU / CUDA / MPS, DDP under torchrun, or FSDP2 (--fsdp=True).

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py

Inheritune: --init_from=inherit starts from the first blocks of --reference; --grow_every=N adds blocks every N
iterations until the val loss reaches the reference's. Logs go to out_dir/log.jsonl; the same command again continues
a run from its checkpoint exactly (inheritune/run.py). SIGTERM / SIGINT save within log_interval steps and exit 0.
"""

import json
import math
import os
import signal
import time
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F

import analyze_rank
import inherit
from inheritune import configurator, data, perf, run
from inheritune.checkpoint import (CheckpointError, find_checkpoint, load_optimizer_state, load_shards,
                                   model_fingerprint, strip_wrapper_prefixes)
from inheritune.distributed import (Processes, fail, finish, gather, is_master, shape_of, share_from_rank0,
                                    sum_over_processes)
from inheritune.hf import ModelLoadError
from inheritune.source import known_model_tokenizer_meta, load_model
from model import GPT, GPTConfig


def config_keys(before=()):
    """The config keys assigned so far (nanoGPT's config_keys: the plain values among the globals), less before."""
    return [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))
            and k not in before]


# -----------------------------------------------------------------------------
# default config, overridden by config files and --key=value (inheritune/configurator.py). Every key defines the run
# (a continue with another value is refused) unless it is in the last two sections; a fork's new key goes where it fits
# data
dataset = "openwebtext"
data_dir = ""  # default: data/<dataset>
gradient_accumulation_steps = 5 * 8  # [1, inf): global count, divided by the number of processes
batch_size = 12  # [1, inf): micro-batch size per process
sampling = "random"  # training windows: 'random' (drawn with replacement) | 'epochs' (each window once per epoch)
eval_iters = 200  # [1, inf): validation batches per eval: eval_iters * batch_size fixed windows
seed = 1337  # [0, 4294967295]
# model: these and every other plain field of model.py's GPTConfig (norm, mlp, pos_emb, n_kv_head, ...) are flags, for
# a model from scratch; pretrained, inherited and resumed models bring their shape, and a flag that disagrees is refused
block_size = 1024  # [1, inf)
n_layer = 12  # [1, inf)
n_head = 12  # [1, inf)
n_embd = 768  # [1, inf)
dropout = 0.0  # [0, 1): 0 for pretraining, try 0.1+ for finetuning
bias = False  # biases in Linears and LayerNorms; False is a bit faster
vocab_size = 0  # [0, inf): 0: the dataset's (meta.json); GPT-2 configs pad 50257 to 50304, a multiple of 64, for speed
# AdamW
learning_rate = 6e-4  # (0, inf): peak learning rate
weight_decay = 1e-1  # [0, inf)
decay_embeddings = True  # weight decay on the embeddings too (nanoGPT); the paper's GPT-2 code: Linear weights only
beta1 = 0.9  # [0, 1)
beta2 = 0.95  # [0, 1)
grad_clip = 1.0  # [0, inf): clip gradients at this norm; 0.0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr (counted from the round's start)
decay_lr = True
warmup_iters = 2000  # [0, inf)
min_lr = 6e-5  # [0, inf): ~ learning_rate / 10 per Chinchilla
TRAINED_KEYS = config_keys()  # the sections above: how the model trains
# how the run begins: it defines the run, but a student that inherit.py makes of this run does not take it
init_from = "scratch"  # 'scratch' | 'resume' (out_dir/ckpt.pt) | 'inherit' | a GPT-2 name, HF folder or our checkpoint
# Inheritune: init_from='inherit' takes the first n_layer blocks (or inherit_layers) of a reference model
reference = ""  # the larger pre-trained model: a GPT-2 name, an HF GPT-2 / Llama / Qwen2 / Mistral folder, our out_dir
inherit_layers = ""  # explicit reference block indices, e.g. "0,1,2,3" (default: the first n_layer)
inherit_fresh = ""  # parts left at fresh init instead of copied: "wpe", "ln_f", "wpe,ln_f"
# growth: every grow_every iterations, evaluate; below the target stop, else add grow_by blocks
grow_every = 0  # [0, inf): iterations per round; 0 = no growth
grow_by = 2  # [1, inf)
max_layers = 0  # [0, inf): 0: the reference's depth
grow_mode = "restart"  # 'restart': each round afresh (new optimizer and schedule) | 'continue': both go on
grow_init = "reference"  # how the new blocks are made (inherit.GROW_INITS)
target_val_loss = 0.0  # [0, inf): 0: the reference's val loss (without a reference: none, grow at every round end)
# knowledge distillation: loss = kd_alpha * CE + (1 - kd_alpha) * kd_temperature^2 * KL(teacher || student)
teacher = ""  # the frozen teacher: a GPT-2 name, a Hugging Face folder, or our out_dir / ckpt.pt ("": none)
kd_alpha = 0.6  # [0, 1]: the cross-entropy's weight; the teacher's KL gets 1 - kd_alpha
kd_temperature = 1.0  # (0, inf): softmax temperature of both distributions in the KL
BEGIN_KEYS = config_keys(TRAINED_KEYS)  # how the run begins
# may change between attempts of one run: how long, evaluation, logging (a continue keeps its recorded value unless
# given; a student takes it too)
max_iters = 600000  # [0, inf): 0 evaluates the model once and exits
lr_decay_iters = 600000  # [0, inf): ~ max_iters per Chinchilla; a continue extending max_iters may extend the cosine
stop_at_target = True  # end the run once a growth round reaches the target
stop_at_max_depth = True  # end the run with the round at max depth, as Algorithm 1 (False: train on to max_iters)
eval_interval = 2000  # [1, inf)
log_interval = 1  # [1, inf): also how often the loss is read back from the device (NaN check, stop requests)
always_save_checkpoint = True  # save at every eval, not only when val loss improves
collapse_every = 0  # [0, inf): log analyze_rank.py's attention-collapse metrics per layer every N iterations (0: off)
collapse_windows = 20  # [1, inf): ... on this many fixed non-overlapping val windows (analyze_rank.py --num_samples)
collapse_seq_len = 128  # [1, inf): ... of this many tokens (analyze_rank.py --seq_len; at most block_size)
wandb_log = False
wandb_project = "inheritune"
wandb_run_name = "gpt2"
KEPT_KEYS = config_keys(TRAINED_KEYS + BEGIN_KEYS)  # may change, kept by a continue
# this command and this machine: a continue takes them from its command line (or these defaults), not its checkpoint
out_dir = "out"  # a folder: ckpt.pt and log.jsonl go there (it is created when first written to)
overwrite = False  # True: a new run may replace the checkpoint and log.jsonl of another run in out_dir
eval_only = False  # evaluate once, print the losses and exit (writes nothing)
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
dtype = "auto"  # 'float32' | 'bfloat16' | 'float16' | 'auto': bfloat16 on CUDA (float16 on old GPUs), else float32
compile = device == "cuda"  # torch.compile the model; works on CPU too, but is slow to start there
backend = "auto"  # DDP backend: 'auto' (nccl on CUDA, gloo elsewhere) | 'nccl' | 'gloo'
dist_timeout_s = 600  # (0, inf): DDP: a rendezvous or collective waiting longer fails, so torchrun can restart
fsdp = False  # under torchrun: shard parameters, gradients and AdamW state over the processes (FSDP2) instead of DDP
fsdp_shard_size = 0  # [0, inf): processes per shard group, 0: all; e.g. GPUs per node (HSDP: replicate across nodes)
fsdp_cpu_offload = False  # FSDP: keep the shards of parameters, gradients and AdamW state in CPU memory
activation_checkpointing = False  # recompute each block's activations in the backward pass instead of keeping them
# -----------------------------------------------------------------------------
OWN_KEYS = config_keys(TRAINED_KEYS + BEGIN_KEYS + KEPT_KEYS)  # this command's and this machine's
MODEL_KEYS = [f.name for f in fields(GPTConfig) if type(f.default) in (int, float, bool, str)]
RUN_KEYS = list(dict.fromkeys(TRAINED_KEYS + BEGIN_KEYS + MODEL_KEYS))  # every GPTConfig field defines the run too
STUDENT_KEYS = config_keys(BEGIN_KEYS + OWN_KEYS)  # what a student of this run trains with (inherit.py)
defaults = {k: globals()[k] for k in config_keys()}
defaults |= {f.name: f.default for f in fields(GPTConfig) if f.name in MODEL_KEYS and f.name not in defaults}
run.refuse_assigned_keys(__file__, defaults)
given = configurator.overrides_or_exit(defaults, comment_files=["model.py"], notes={"grow_init": "; ".join(
    f"{name}: {init.what}" for name, init in inherit.GROW_INITS.items())})

# -----------------------------------------------------------------------------
# the run: a new one, or one to continue (--init_from=resume, or the same command again after a crash)
config = defaults | given
if config["fsdp"] and "RANK" not in os.environ:  # (under torchrun, even one process runs FSDP: its cost against DDP's)
    print("note: fsdp=True in a single process (not under torchrun) has nothing to shard: training as one plain "
          "process")
    given["fsdp"] = config["fsdp"] = False
try:
    ckpt = run.open_run(config["out_dir"], config, RUN_KEYS, weights=not config["fsdp"])
except CheckpointError as e:
    fail(f"{e}: a new run with --overwrite=True")
resuming = ckpt is not None
if resuming:  # the run's recorded settings, under what this command's config files and flags set
    config = defaults | run.recorded_config(ckpt, defaults, given, OWN_KEYS) | given
    config["init_from"] = (ckpt.get("config") or {}).get("init_from", "resume")  # how the run began
globals().update(config)
try:
    configurator.check_device(device)
    for warning in run.check_settings(config, not resuming and init_from == "scratch", inherit.GROW_INITS):
        if is_master():
            print(f"warning: {warning}")
except configurator.ConfigError as e:
    fail(e)
if resuming and not eval_only:
    run.exit_if_complete(ckpt, config)

# -----------------------------------------------------------------------------
# setup: processes, devices, precision
procs = Processes(device, dtype, backend, dist_timeout_s, fsdp, fsdp_shard_size, fsdp_cpu_offload, compile,
                  activation_checkpointing)
master_process, rank_device, device_type = procs.master, procs.device, procs.device_type
if gradient_accumulation_steps % procs.world_size != 0:
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} (the global count) is not divisible by "
         f"the {procs.world_size} processes; make it a multiple of {procs.world_size}")
grad_accum_per_process = gradient_accumulation_steps // procs.world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size  # independent of the process count
config["dtype"] = procs.dtype
run.seed_everything(seed + 1000 * procs.rank)  # DDP broadcasts rank 0's initial weights, so ranks may differ here
torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 matmuls and convolutions on Ampere and later
torch.backends.cudnn.conv.fp32_precision = "tf32"

# data, checked before the config is printed: a missing dataset is one line, not a line after 70
data_folder = data_dir or os.path.join("data", dataset)
try:
    meta = data.load_meta(data_folder)
    train_tokens, val_tokens = data.open_tokens(data_folder, "train"), data.open_tokens(data_folder, "val")
    train_batches = data.TrainBatches(train_tokens, block_size, batch_size, seed, sampling, procs.rank,
                                       procs.world_size)
    eval_offsets = {split: data.eval_offsets(tokens, block_size, eval_iters, batch_size, seed)
                    for split, tokens in (("train", train_tokens), ("val", val_tokens))}
    collapse_windows_ids = analyze_rank.draw_windows(val_tokens, collapse_windows, collapse_seq_len, seed) \
        if collapse_every else None
except ValueError as e:  # a DataError, or an AnalysisError: too few val windows for the collapse metrics
    fail(e)
if master_process:
    print(f"config:\n{json.dumps(config, indent=1)}")
    print(f"{procs.describe()}, {grad_accum_per_process} micro-steps each: {tokens_per_iter:,} tokens per iteration")


def eval_loss(model, tokens, offsets, loss_fn=None):
    """model's mean loss on the fixed windows at offsets, the same number on every rank."""
    return data.evaluate_loss(model, tokens, offsets, block_size, batch_size, rank_device, procs.autocast, procs.rank,
                              procs.world_size, loss_fn=loss_fn)


# -----------------------------------------------------------------------------
# model: rank 0 builds it (under FSDP in CPU memory, the other ranks its shape; wrap() shards it)
MODEL_SHAPE_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name != "dropout")
# what save_checkpoint writes (checked against it by a test); every other checkpoint key is carried over as it was
TRAINING_STATE_KEYS = ("model", "model_args", "config", "optimizer", "scaler", "iter_num", "round_start_iter",
                       "best_val_loss", "rng", "sampler", "last_eval", "log_size", "compute", "last_collapse",
                       "student_keys")
iter_num, round_start_iter, best_val_loss, checkpoint_extras = 0, 0, float("inf"), {}
last_collapse, last_eval = None, None  # the last collapse record's iteration; the last eval's iter and losses
compute = {"tokens": 0, "flops": 0.0}  # training tokens and FLOPs so far, all rounds (FLOPs a float: they pass int64)
ref_model = None  # the reference of init_from='inherit' and of growth: an inherit.Reference, read block by block
try:
    if fsdp and not master_process:
        pass  # rank 0 reads and builds the model alone; this rank gets its shape below and its shards from wrap()
    elif resuming:  # (checkpoints written before a GPTConfig field existed get GPT-2's default for it)
        model_args = {k: v for k, v in ckpt["model_args"].items() if k in MODEL_SHAPE_KEYS} | {"dropout": dropout}
        # under FSDP a sharded checkpoint's weights are read into the sharded model (every rank its own shards)
        raw_model = GPT(GPTConfig(**model_args)) if "model" in ckpt else shape_of(GPTConfig(**model_args))
        if "model" in ckpt:
            raw_model.load_state_dict(strip_wrapper_prefixes(ckpt["model"]))
        run.check_model_flags(given, raw_model.config, f"the checkpoint in {out_dir}", ckpt.get("config"))
        iter_num, round_start_iter = ckpt.get("iter_num", 0), ckpt.get("round_start_iter", 0)
        best_val_loss, last_eval = ckpt.get("best_val_loss", float("inf")), ckpt.get("last_eval")
        last_collapse = ckpt.get("last_collapse")
        compute = ckpt.get("compute", compute if iter_num == 0 else None)  # None: saved before they were counted
        checkpoint_extras = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE_KEYS}
    elif init_from == "scratch":
        model_args = {k: config[k] for k in MODEL_KEYS} | {"vocab_size": vocab_size or meta["vocab_size"]}
        raw_model = GPT(GPTConfig(**model_args))
    elif init_from == "inherit":
        if not reference:
            fail("init_from='inherit' needs reference=... (a GPT-2 name, a Hugging Face folder or our out_dir)")
        ref_model = inherit.Reference(reference)  # its config now; inherit() reads only the chosen blocks
        layers = inherit.parse_layers(inherit_layers, n_layer, ref_model.config.n_layer)
        fresh = [p for p in inherit_fresh.split(",") if p]
        raw_model = inherit.inherit(ref_model, layers, fresh, block_size=min(block_size, ref_model.config.block_size),
                                    dropout=dropout)
        run.check_model_flags(given, raw_model.config, f"reference {reference}", inherited=True)
        width = {k: given[k] for k in ("n_embd", "n_head") if k in given}  # the half-width baseline
        if any(getattr(raw_model.config, k) != v for k, v in width.items()):
            raw_model = inherit.shrink_width(raw_model, **width)
        model_args = {k: getattr(raw_model.config, k) for k in MODEL_SHAPE_KEYS} | {"dropout": dropout}
        checkpoint_extras["inherit"] = inherit.inherit_metadata(reference, layers, ref_model, fresh)
        if raw_model.config.n_embd != ref_model.config.n_embd:  # narrowed
            checkpoint_extras["inherit"]["source_width"] = [ref_model.config.n_embd, ref_model.config.n_head]
        if master_process:  # (under DDP every rank inherits)
            print(f"inherited blocks {layers} of {reference} ({ref_model.config.n_layer} layers): "
                  f"{raw_model.config.n_embd} wide with {raw_model.config.n_head} heads")
    else:
        pretrained = load_model(init_from)[0]
        run.check_model_flags(given, pretrained.config, f"init_from={init_from}")
        model_args = {k: getattr(pretrained.config, k) for k in MODEL_SHAPE_KEYS} | {"dropout": dropout}
        raw_model = GPT(GPTConfig(**model_args))
        raw_model.load_state_dict(pretrained.state_dict())
        del pretrained
    if master_process or not fsdp:
        raw_model = raw_model if raw_model.lm_head.weight.is_meta else raw_model.to(procs.build_device)
except (CheckpointError, ModelLoadError) as e:
    fail(f"init_from={init_from!r} (scratch, resume, a GPT-2 name, a Hugging Face folder or a checkpoint): {e}")
except ValueError as e:  # an InheritError, or a model option GPTConfig refuses
    fail(e)
if fsdp:  # the other ranks take what rank 0 built: shapes (meta device) and the run's state
    model_config, ref_config, model_args, iter_num, round_start_iter, best_val_loss, last_eval, compute, \
        checkpoint_extras, last_collapse = share_from_rank0(
            (raw_model.config, ref_model and ref_model.config, model_args, iter_num, round_start_iter, best_val_loss,
             last_eval, compute, checkpoint_extras, last_collapse) if master_process else None)
    if not master_process:
        raw_model, ref_model = shape_of(model_config), ref_config and shape_of(ref_config)
if block_size > raw_model.config.block_size:
    fail(f"block_size={block_size} is longer than the model's context of {raw_model.config.block_size}")
if block_size < raw_model.config.block_size:
    raw_model.crop_block_size(block_size)
    model_args["block_size"] = block_size
if meta["vocab_size"] > model_args["vocab_size"]:
    fail(f"{data_folder} has a vocabulary of {meta['vocab_size']} ids but the model only {model_args['vocab_size']}: "
         f"use a dataset made with the model's tokenizer (from scratch: vocab_size=0 takes the dataset's)")
if not resuming and init_from != "scratch":  # a pretrained model's data must be tokenized as it was trained
    try:
        model_source = reference if init_from == "inherit" else init_from
        data.check_data_tokenizer(meta, data_folder, known_model_tokenizer_meta(model_source), model_source)
    except ValueError as e:  # DataError, or a TokenizerError: the model's tokenizer files cannot be read
        fail(e)
if master_process:
    print(f"model: {asdict(raw_model.config)}, {raw_model.get_num_params() / 1e6:.2f}M parameters")

# growth: the reference (on disk: growth reads the blocks it needs), the target, and where the rounds stand
GROW_INIT = inherit.GROW_INITS[grow_init]
growth = checkpoint_extras.get("growth")  # a resumed growing run brings its state
if grow_every > 0:
    info = checkpoint_extras.get("inherit")
    if info is None and GROW_INIT.needs_reference:
        fail(f"grow_init={grow_init!r} needs a model inherited from a reference (init_from='inherit', or resume an "
             f"inherit.py checkpoint); to grow without one, use another grow_init (--help lists them) and max_layers")
    if ref_model is None and info is not None and (GROW_INIT.needs_reference or not target_val_loss):
        try:  # resuming: the reference must still be there and be the one this run was inherited from
            ref_model = procs.on_rank0(lambda: inherit.Reference(reference or info["source"]))
        except (CheckpointError, ModelLoadError) as e:
            fail(f"this growing run's reference {reference or info['source']!r} cannot be loaded ({e}); "
                 f"pass its current location with --reference=...")
        if inherit.source_shape(ref_model.config) != inherit.source_shape(raw_model.config, info):
            fail(f"reference {reference or info['source']!r} (n_layer, n_embd, n_head) = "
                 f"{inherit.source_shape(ref_model.config)} is not the one this run was inherited from "
                 f"{inherit.source_shape(raw_model.config, info)}")
    if GROW_INIT.needs_reference and meta["vocab_size"] > ref_model.config.vocab_size:
        fail(f"{data_folder} has {meta['vocab_size']} token ids, more than the reference's "
             f"{ref_model.config.vocab_size}")
    if GROW_INIT.needs_reference and ref_model.config.n_embd != model_args["n_embd"]:
        fail(f"grow_init={grow_init!r} adds the reference's {ref_model.config.n_embd}-wide blocks to a "
             f"{model_args['n_embd']}-wide model: grow a narrowed model with another grow_init (--help lists them)")
    max_depth = max_layers or (info["source_n_layer"] if info else 0)
    if not max_depth:
        fail("growing without a reference needs max_layers")
    added = raw_model.config.n_layer if GROW_INIT.doubles else grow_by
    if growth is None and raw_model.config.n_layer + added > max_depth:  # refused now, not at a round end
        no_room = (f"grow_by={grow_by} cannot grow the {raw_model.config.n_layer}-layer model once: {added} more "
                   f"layers exceed max depth {max_depth}")
        if max_layers:
            fail(f"{no_room} (max_layers={max_layers}); raise max_layers, or lower grow_by or n_layer")
        if master_process:  # e.g. inherit.py --n_layer=auto chose a depth near the reference's: one round, then the end
            print(f"warning: {no_room} (the reference's depth): the run ends after its first round")
    if growth is None and GROW_INIT.needs_reference and max_depth > ref_model.config.n_layer:
        fail(f"max_layers={max_layers} is deeper than the reference's {ref_model.config.n_layer} blocks, which "
             f"grow_init={grow_init!r} adds: at most {ref_model.config.n_layer}")
    if growth is None:
        growth = {"round": 0, "layers": list(info["layers"]) if info else [None] * raw_model.config.n_layer,
                  "done": False, "target_val_loss": target_val_loss or None}
    if target_val_loss:
        growth["target_val_loss"] = target_val_loss
    this_eval = dict(data_dir=os.path.abspath(data_folder), block_size=block_size, eval_iters=eval_iters,
                     batch_size=batch_size, seed=seed)
    if growth["target_val_loss"] is None and info and info.get("reference_eval") == this_eval:
        growth["target_val_loss"] = info["reference_val_loss"]  # inherit.py measured it on these very windows
    if growth["target_val_loss"] is None and info:  # the reference's loss on this run's own windows: all of it, once
        full_reference = ref_model.load() if isinstance(ref_model, inherit.Reference) else ref_model
        full_reference = procs.frozen(full_reference, compiled=False)
        growth["target_val_loss"] = eval_loss(full_reference, val_tokens, eval_offsets["val"])
        del full_reference
        info["reference_val_loss"], info["reference_eval"] = growth["target_val_loss"], this_eval
    checkpoint_extras["growth"] = growth
    if master_process:  # without a reference or a target: a fixed schedule, growing at every round end
        target = growth["target_val_loss"]
        print(f"growth: round {growth['round']}, {raw_model.config.n_layer} layers, "
              + (f"target val loss {target:.4f}" if target is not None else "no target (a fixed schedule)")
              + f", {'doubled' if GROW_INIT.doubles else f'+{grow_by} layers'} every {grow_every} iters up to "
              f"{max_depth}")
if not (grow_every > 0 and GROW_INIT.needs_reference):
    ref_model = None  # inherited from already; growth does not need it

# knowledge distillation: the teacher, frozen (never DDP-wrapped); under FSDP rank 0 reads it, sharded like the student
teacher_model, teacher_flops_per_token = None, 0.0
if teacher:
    try:
        with torch.random.fork_rng(devices=[]):  # building it draws no numbers from this run's random stream
            teacher_model = procs.on_rank0(lambda: load_model(teacher)[0])
    except (CheckpointError, ModelLoadError) as e:
        fail(f"teacher={teacher!r} (a GPT-2 name, a Hugging Face folder or our out_dir / .pt) cannot be loaded: {e}")
    fingerprint = share_from_rank0(model_fingerprint(teacher_model) if master_process else None)
    if meta["vocab_size"] > teacher_model.config.vocab_size:
        fail(f"teacher {teacher!r} has a vocabulary of {teacher_model.config.vocab_size} ids, fewer than the "
             f"{meta['vocab_size']} of {data_folder}: distill from a teacher of the data's tokenizer")
    if block_size > teacher_model.config.block_size:
        fail(f"teacher {teacher!r} has a context of {teacher_model.config.block_size} tokens, shorter than "
             f"block_size={block_size}: lower block_size or pick a teacher with a longer context")
    distilled_from = checkpoint_extras.get("distill", {}).get("teacher_fingerprint", fingerprint)
    if distilled_from != fingerprint:  # resuming: the teacher moved (allowed), or was replaced (refused)
        fail(f"teacher {teacher!r} (fingerprint {fingerprint}) is not the teacher this run was distilled from "
             f"(fingerprint {distilled_from}): pass its current location with --teacher=...")
    checkpoint_extras["distill"] = {"teacher": teacher, "teacher_fingerprint": fingerprint}
    teacher_flops_per_token = teacher_model.flops_per_token(block_size) / 3  # its forward pass: 2N + attention
    teacher_model = procs.frozen(teacher_model.requires_grad_(False).eval())
    if master_process:
        print(f"distilling from {teacher} ({teacher_model.config.n_layer} layers): loss = {kd_alpha:g} * CE + "
              f"{1 - kd_alpha:g} * {kd_temperature:g}^2 * KL(teacher || student)")

# -----------------------------------------------------------------------------
# optimizer, and a resumed run's state
def make_optimizer(raw_model):
    return raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, decay_embeddings)


scaler = torch.amp.GradScaler(device_type, enabled=(procs.dtype == "float16"))
from_shards = resuming and "model" not in ckpt  # FSDP resuming a sharded checkpoint: each rank reads its shards
model = procs.wrap(raw_model, weights=not from_shards)
raw_model = procs.unwrapped(model, raw_model)
optimizer = make_optimizer(raw_model)
rundir = run.RunDir(out_dir, procs, eval_only, wandb_log and (wandb_project, wandb_run_name), checkpoint_iter=iter_num)
if resuming:
    if from_shards:
        load_shards(find_checkpoint(out_dir)[1], raw_model, optimizer)
    elif "optimizer" in ckpt:  # a checkpoint written by inherit.py has weights only: fresh optimizer
        load_optimizer_state(raw_model, optimizer, ckpt["optimizer"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    run.restore_random_state(ckpt, procs, train_batches)
rundir.start_log(config, resuming, ckpt.get("log_size") if resuming else None)
del ckpt  # free the weights and optimizer state it held
gpu_name, peak_flops = perf.gpu_peak_flops(rank_device)
flops_per_token = raw_model.flops_per_token(block_size) + teacher_flops_per_token  # a KD step runs the teacher too
if master_process:
    print(perf.describe_peak(gpu_name, peak_flops, device_type))
log = rundir.log
stop = {"signal": None}  # preemption: the handler only notes the signal; the loop saves and exits at a log step
signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signal.Signals(signum).name))
signal.signal(signal.SIGINT, lambda signum, frame: stop.update(signal=signal.Signals(signum).name))


# -----------------------------------------------------------------------------
# the recipe's pieces: learning rate, distillation, evaluation, checkpoint, growth
def get_lr(it):
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
    """KL(teacher || student) at kd_temperature per token, in float32, over the data's token ids only: padded
    vocabularies (GPT-2's 50257 to 50304) compare on the same distribution."""
    v = meta["vocab_size"]
    log_q = F.log_softmax(student_logits[..., :v].float() / kd_temperature, dim=-1).reshape(-1, v)
    log_p = F.log_softmax(teacher_logits[..., :v].float() / kd_temperature, dim=-1).reshape(-1, v)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def split_losses():
    """Mean cross-entropy on the fixed train and val windows, the same number on every rank."""
    return {"train_loss": eval_loss(model, train_tokens, eval_offsets["train"]),
            "val_loss": eval_loss(model, val_tokens, eval_offsets["val"])}


def val_distillation():
    """With a teacher: val_kd, the KL term on the val windows (val_loss stays the plain cross-entropy)."""
    if teacher_model is None:
        return {}
    return {"val_kd": eval_loss(model, val_tokens, eval_offsets["val"],
                                lambda m, x, y: distillation_loss(m(x)[0], teacher_model(x)[0]))}


# What an eval logs: each function returns a dict of JSON values (nested ones too); a new metric is one entry here.
EVAL_METRICS = [split_losses, val_distillation]


def evaluate():
    return {k: v for metric in EVAL_METRICS for k, v in metric().items()}


def save_checkpoint():
    """The weights, the optimizer and everything else needed to continue exactly."""
    rundir.save(dict(checkpoint_extras, model_args=model_args, config=config, student_keys=STUDENT_KEYS,
                     scaler=scaler.state_dict(), iter_num=iter_num, round_start_iter=round_start_iter,
                     best_val_loss=best_val_loss, compute=compute, last_collapse=last_collapse,
                     rng=gather(run.rng_state(device_type)), sampler=gather(train_batches.state_dict()),
                     last_eval=last_eval), raw_model, optimizer)


def round_decision(val_loss):
    """At a round's end: grow, or stop growing (target, max depth, max_iters); logged; every rank decides alike."""
    growth["last_round_end"] = iter_num
    target, depth = growth["target_val_loss"], raw_model.config.n_layer
    added = depth if GROW_INIT.doubles else grow_by
    reached = target is not None and val_loss <= target  # no target: a fixed schedule
    decision = ("target reached" if reached else "grow" if depth + added <= max_depth and iter_num < max_iters
                else "max_iters reached" if iter_num >= max_iters
                else f"growth stops: {depth} + {added} layers exceed max depth {max_depth}")
    log({"iter": iter_num, "event": "round_end", "round": growth["round"], "n_layer": depth,
         "round_val_loss": val_loss, "target_val_loss": target, "decision": decision})
    if decision != "grow":
        growth["done"], growth["end"] = True, decision
    return decision


def grow_model():
    """Inheritune's growth step (inherit.growth_step), the grown model wrapped and its optimizer: in continue mode the
    kept parameters keep their AdamW moments. Under FSDP rank 0 builds it in CPU memory, the other ranks its shape."""
    fresh = checkpoint_extras["inherit"]["fresh"] if "inherit" in checkpoint_extras else ()
    try:
        with procs.shapes_only():
            grown, layers, moved = inherit.growth_step(raw_model.config, lambda: procs.full_model(raw_model),
                                                       grow_init, grow_mode, grow_by, ref_model, growth["layers"],
                                                       fresh)
    except (inherit.InheritError, CheckpointError, ModelLoadError) as e:
        fail(f"growing at iter {iter_num}: {e} (the last checkpoint, before this growth, stays)")
    new_model = procs.wrap(grown if grown.lm_head.weight.is_meta else grown.to(procs.build_device))
    new_raw = procs.unwrapped(new_model, grown)
    new_optimizer = make_optimizer(new_raw)
    if grow_mode == "continue":  # the state follows each kept parameter to where the growth put it
        new_params = dict(new_raw.named_parameters())
        for name, p in raw_model.named_parameters():
            if p in optimizer.state:
                new_optimizer.state[new_params[moved[name]]] = optimizer.state[p]
    return new_model, new_raw, new_optimizer, layers


# -----------------------------------------------------------------------------
# training loop
t_last_log, iters_since_log = time.time(), 0
nonfinite_steps = torch.zeros((), device=rank_device)  # a device-side sum, read back only at log steps (no host sync)
while True:
    lr = get_lr(iter_num)
    round_end = (grow_every > 0 and not growth["done"] and iter_num > 0 and iter_num % grow_every == 0
                 and growth.get("last_round_end") != iter_num)
    if iter_num % eval_interval == 0 or iter_num == max_iters or eval_only or round_end:
        if last_eval is not None and last_eval["iter"] == iter_num and not eval_only:
            # resumed from a checkpoint saved after this evaluation: it is in the log already
            losses = {k: last_eval[k] for k in ("train_loss", "val_loss")}
        else:
            losses = evaluate()
            depth = {"n_layer": raw_model.config.n_layer, "round": growth["round"]} if growth else {}
            log({"iter": iter_num, **losses, "lr": lr, **depth, **(compute or {})})
            if not math.isfinite(losses["val_loss"]):
                fail(f"the val loss is {losses['val_loss']} at iter {iter_num}: stopping without saving")
            improved = losses["val_loss"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val_loss"])
            last_eval = {"iter": iter_num, "train_loss": losses["train_loss"], "val_loss": losses["val_loss"]}
            if (improved or always_save_checkpoint) and iter_num > 0 and not eval_only:
                save_checkpoint()
        t_last_log, iters_since_log = time.time(), 0  # eval time is not training time
    if collapse_every and iter_num % collapse_every == 0 and last_collapse != iter_num and not eval_only:
        t_collapse = time.time()
        whole = procs.full_model(raw_model)  # FSDP: gathered on rank 0 (every rank takes part); else raw_model
        layers = analyze_rank.collapse_record(whole.to(rank_device), collapse_windows_ids, device=rank_device) \
            if master_process else None
        log({"iter": iter_num, "event": "collapse", "round": (growth or {}).get("round", 0),
             "n_layer": raw_model.config.n_layer, "layers": layers, "seconds": round(time.time() - t_collapse, 3)})
        last_collapse, t_last_log, iters_since_log = iter_num, time.time(), 0  # analysis time is not training time
    if round_end:
        decision = round_decision(losses["val_loss"])
        if decision.startswith("growth stops") and stop_at_max_depth and master_process:
            print(f"growth has ended at max depth {max_depth}: the run ends with this round, as Algorithm 1 "
                  f"(--stop_at_max_depth=False trains on to max_iters)")
        if (decision == "target reached" and stop_at_target) or (decision.startswith("growth") and stop_at_max_depth):
            save_checkpoint()
            break
        if decision == "grow":  # Inheritune: add blocks, then a new round (restart mode: a fresh warmup and cosine)
            model, raw_model, optimizer, growth["layers"] = grow_model()
            model_args["n_layer"] = raw_model.config.n_layer
            round_start_iter = iter_num if grow_mode == "restart" else round_start_iter
            flops_per_token = raw_model.flops_per_token(block_size) + teacher_flops_per_token
            growth["round"] += 1
            best_val_loss = float("inf")  # a new round's losses are not comparable to the last one's
            log({"iter": iter_num, "event": "grow", "round": growth["round"], "n_layer": raw_model.config.n_layer,
                 "grow_mode": grow_mode, "grow_init": grow_init, "layers": growth["layers"],
                 "start_val_loss": split_losses()["val_loss"]})
            save_checkpoint()  # a resume continues at the grown depth
            lr = get_lr(iter_num)
    if iter_num >= max_iters or eval_only:
        break

    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=rank_device)
    kd_parts = torch.zeros(2, device=rank_device)  # with a teacher: the step's mean CE and KL, logged apart
    for micro_step in range(grad_accum_per_process):
        procs.no_sync_unless(model, micro_step == grad_accum_per_process - 1)
        x, y = train_batches.next(rank_device)
        with procs.autocast:
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
    nonfinite_steps += ~torch.isfinite(loss_sum)
    grad_norm = torch.zeros((), device=rank_device)
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        grad_norm = procs.clip_gradients(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iters_since_log += 1
    stop_requested = False
    if iter_num % log_interval == 0:  # a training step's one host sync: one all-reduce and one read, at log steps
        summed = sum_over_processes(torch.stack([loss_sum, nonfinite_steps, *kd_parts,
                                                 torch.tensor(float(stop["signal"] is not None), device=rank_device)]))
        n = procs.world_size
        step_loss, nonfinite, ce, kd, stop_requested, norm = torch.cat(
            [summed / torch.tensor([n, 1, n, n, 1], device=rank_device), grad_norm.float().reshape(1)]).tolist()
        if nonfinite:
            found = find_checkpoint(out_dir)
            kept = f"the last good checkpoint ({found[1]}) stays" if found else "no checkpoint written"
            fail(f"the loss is {step_loss if not math.isfinite(step_loss) else 'not finite'} at iter {iter_num}: "
                 f"stopping without saving ({kept}). Lower learning_rate, raise warmup_iters, or use "
                 f"dtype=bfloat16 / float32.")
        dt = (time.time() - t_last_log) / iters_since_log
        log({"iter": iter_num, "loss": step_loss, **({"ce": ce, "kd": kd} if teacher_model is not None else {}),
             "lr": lr, "grad_norm": norm if grad_clip != 0.0 else None, "tok_per_s": round(tokens_per_iter / dt),
             "ms_per_step": round(dt * 1000, 2),
             "mfu": perf.mfu(flops_per_token, tokens_per_iter / dt, peak_flops, procs.world_size)})
        t_last_log, iters_since_log = time.time(), 0
    iter_num += 1
    if compute is not None:
        compute["tokens"] += tokens_per_iter
        compute["flops"] += flops_per_token * tokens_per_iter  # at this round's depth

    if stop_requested:  # on any rank (the flags were summed): every rank saves and leaves at this same step
        if master_process:
            print(f"received {stop['signal'] or 'a stop request on another rank'}: saving and exiting")
        save_checkpoint()
        if master_process:
            print(f"to continue, run the same command again (or: train.py --init_from=resume --out_dir={out_dir})")
        break

rundir.finish()
finish()
