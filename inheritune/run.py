"""A training run in its out_dir: which settings define it, whether a command continues it, its log.jsonl, the
atomic save of its checkpoint, and its random state (for an exact resume).

Requeue-safe: the same command run again (a Slurm requeue, a torchrun restart) continues from out_dir's checkpoint
when that checkpoint's run is this command's: its defining settings (train.py's config block says which: every key
outside its last two sections) agree, whatever else differs (max_iters, logging, evaluation, this machine).
A new run never replaces another run's checkpoint or log: it stops with an error unless given --overwrite=True.
"""

import ast
import dataclasses
import json
import os
import random
import shlex
import signal
import subprocess
import sys

import numpy as np
import psutil
import torch

from inheritune.checkpoint import (SHARDED_NAME, checkpoint_path, find_checkpoint, load_checkpoint, save_checkpoint,
                                   save_sharded_checkpoint)
from inheritune.configurator import ConfigError
from inheritune.distributed import fail, share_from_rank0


def refuse_assigned_keys(script, keys):
    """Refuse a script that assigns a config key again after its default: it would silently overwrite the flags."""
    with open(script) as f:
        names = [n for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    for key in keys:
        lines = sorted(n.lineno for n in names if n.id == key)
        if len(lines) > 1:
            fail(f"{script}:{lines[1]} assigns {key}, a config key (its default at line {lines[0]}): the script would "
                 f"overwrite --{key}; rename the script's variable or the key")


def recorded_config(ckpt, defaults, given, own_keys):
    """The settings a checkpoint records of its run (its context and saved config) as train.py keys of the right type,
    less own_keys (this machine's and this command's); an empty string means "not recorded"."""
    saved = {"block_size": ckpt["model_args"].get("block_size")} | dict(ckpt.get("config") or {})
    recorded = {k: v for k, v in saved.items() if k in defaults and k not in own_keys
                and type(v) is type(defaults[k]) and v != ""}
    if "dataset" in given and "data_dir" not in given:
        recorded.pop("data_dir", None)  # --dataset names the data; the run's recorded data_dir would win over it
    return recorded


def logged_run_config(path):
    """The config of the run_start record that begins a log.jsonl, or None."""
    try:
        with open(path) as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return first.get("config") if isinstance(first, dict) and first.get("event") == "run_start" else None


def open_run(out_dir, config, run_keys, weights=True):
    """The checkpoint this command continues, or None for a new run. Another command into an out_dir holding a run
    continues it when they agree in run_keys (litgpt's resume="auto"), else stops. weights=False: no tensors (FSDP)."""
    if out_dir.endswith(".pt"):
        fail(f"out_dir={out_dir!r} ends in .pt, but out_dir is a folder (train.py writes ckpt.pt and log.jsonl "
             f"into it)")
    log_path, has_checkpoint = os.path.join(out_dir, "log.jsonl"), find_checkpoint(out_dir) is not None
    if config["init_from"] == "resume":
        if config["overwrite"]:
            fail("overwrite=True starts a new run in out_dir; it cannot be combined with init_from='resume'")
        if not has_checkpoint:
            fail(f"init_from='resume' found no checkpoint at {checkpoint_path(out_dir)}: point out_dir at the run "
                 f"to continue")
        return load_checkpoint(out_dir, weights=weights)
    if config["overwrite"] or not (has_checkpoint or os.path.isfile(log_path)):
        return None
    previous = load_checkpoint(out_dir, weights=weights) if has_checkpoint else None
    saved = (previous.get("config") if previous else logged_run_config(log_path)) or {}
    differences = [f"{k}={saved[k]!r} there, {v!r} here" for k, v in config.items() if k in run_keys and k in saved
                   and saved[k] != v]
    if not saved or differences:
        what = f"the checkpoint (iter {previous.get('iter_num', 0)})" if previous else "the log.jsonl"
        why = f" has {'; '.join(differences[:3])}" if differences else " records no config to compare"
        fail(f"out_dir={out_dir} holds another run: {what}{why}. Continue that run with --init_from=resume, "
             f"pick another --out_dir, or replace it with --overwrite=True")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"continuing the run in {out_dir} from its checkpoint at iter {previous.get('iter_num', 0)}: it is "
              f"this command's run (--overwrite=True starts over)" if previous else
              f"starting the run in {out_dir} again: its earlier attempt stopped before its first checkpoint")
    return previous


def completion(ckpt, cfg):
    """Why the checkpoint's run is complete (evaluated at max_iters, growth's target reached or its max depth, as cfg's
    stop_at_* say), or None."""
    done_iters, growth_end = ckpt.get("iter_num", 0), (ckpt.get("growth") or {}).get("end") or ""
    if growth_end == "target reached" and cfg.get("stop_at_target"):
        return "it reached its target val loss; --stop_at_target=False trains on"
    if growth_end.startswith("growth stops") and cfg.get("stop_at_max_depth", True):
        return "its growth ended at max depth; --stop_at_max_depth=False trains on"
    if done_iters == cfg.get("max_iters") and (ckpt.get("last_eval") or {"iter": done_iters})["iter"] == done_iters:
        return f"max_iters={cfg['max_iters']}; a larger --max_iters trains on"
    return None


def run_finished(out_dir):
    """Whether the run in out_dir reached its own end, as its checkpoint records it (a preempted run, saved and
    exited 0, has not): what a wrapper of train.py asks, never the exit code."""
    if find_checkpoint(out_dir) is None:
        return False
    ckpt = load_checkpoint(out_dir, weights=False)
    config = ckpt.get("config") or {}  # inherit.py's checkpoint records no max_iters: not trained yet
    return completion(ckpt, config) is not None


def stage_threads():
    """Torch threads for a wrapper's CPU stages, unless OMP_NUM_THREADS is set: one per core of ours that other work
    leaves idle now (its use over a third of a second; the load average lags a minute), at least 1. torch's default of
    one per core thrashes beside other work (BENCHMARKS.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return os.environ["OMP_NUM_THREADS"]
    ours = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())  # (macOS)
    use = psutil.cpu_percent(interval=0.3, percpu=True)
    busy = sum(use[core] for core in ours if core < len(use)) / 100
    return str(max(1, len(ours) - round(busy)))


def continue_command():
    """What a wrapper (demo.py, layer_test.py) tells a user whose stage stopped: its own command, run again."""
    command = shlex.join(["python", os.path.basename(sys.argv[0]), *sys.argv[1:]])
    return f"run {command} again to continue (finished stages are reused)"


def stop_in_one_line():
    """Ctrl-C between a wrapper's stages prints how to continue, not a traceback."""
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(f"\nstopped (Ctrl-C): {continue_command()}"))


def run_stage(cmd, stage_dir, out_dir, threads):
    """Run cmd (a repo script's path and its --key=value flags) as a stage of a wrapper, in stage_dir under the
    wrapper's out_dir. A stage whose done-marker records the same command is reused, one with another command refused.
    A train.py stage is done when its run reached its end (run_finished), not when it exits 0 as a stopped one does
    after saving: a stopped stage ends the wrapper, saying how to continue."""
    done = os.path.join(stage_dir, "done.json")
    stage, script = os.path.basename(stage_dir), os.path.basename(cmd[0])
    if os.path.isfile(done):
        with open(done) as f:
            earlier = json.load(f)["command"]
        if earlier != cmd:  # the flags that differ, not the whole command (hundreds of characters)
            there, here = ({"script": c[0]} | dict(a[2:].split("=", 1) for a in c[1:]) for c in (earlier, cmd))
            diff = ", ".join(f"{k}={there.get(k)} there, {here.get(k)} here" for k in here | there
                             if there.get(k) != here.get(k))
            sys.exit(f"error: {out_dir} holds a {os.path.basename(sys.argv[0])} run with other settings (its {stage} "
                     f"stage ran {script} with {diff}): pass another --out_dir, or remove {out_dir} to start over")
        print(f"== {stage}: done earlier, reusing {stage_dir}")
        return
    print(f"== {stage}: {' '.join(cmd)}", flush=True)
    stage_process = subprocess.Popen([sys.executable] + cmd, cwd=os.path.dirname(cmd[0]),
                                     env=os.environ | {"OMP_NUM_THREADS": threads})
    between_stages = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the stage: train.py saves
    ended = stage_process.wait() == 0
    if ended and script == "train.py":
        ended = run_finished(next(a.split("=", 1)[1] for a in cmd if a.startswith("--out_dir=")))
    signal.signal(signal.SIGINT, between_stages)
    if not ended:
        sys.exit(f"error: the {stage} stage stopped before its end (see its output above); {continue_command()}")
    os.makedirs(stage_dir, exist_ok=True)
    with open(done, "w") as f:
        json.dump({"command": cmd}, f)


def exit_if_complete(ckpt, cfg):
    """A requeued job of a finished run succeeds without work; a max_iters below the checkpoint's is refused."""
    done_iters = ckpt.get("iter_num", 0)
    if cfg["max_iters"] < done_iters:
        fail(f"max_iters={cfg['max_iters']} is below the iteration of the checkpoint in {cfg['out_dir']} "
             f"({done_iters}): pass --max_iters above {done_iters} to train on")
    why = completion(ckpt, cfg)
    if why:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"nothing to do: the run in {cfg['out_dir']} is complete at iter {done_iters} ({why})")
        sys.exit(0)


def check_model_flags(given, model_config, what, recorded=None, inherited=False):
    """Refuse a model flag that disagrees with a model that brings its shape (or the run's recorded setting: a grown
    run's n_layer). dropout always applies, a shorter block_size crops; inherited: n_layer / n_embd / n_head select."""
    exempt = ("dropout", "block_size") + (("n_layer", "n_embd", "n_head") if inherited else ())
    for f in dataclasses.fields(model_config):
        ours = getattr(model_config, f.name)
        if f.name in given and f.name not in exempt and given[f.name] not in (ours, (recorded or {}).get(f.name, ours)):
            fail(f"{f.name}={given[f.name]!r} disagrees with {what}, whose {f.name} is {ours!r}: drop the flag (the "
                 f"model keeps its shape) or train a model from scratch")


def check_settings(cfg, new_model, grow_inits):
    """Refuse settings that cannot work (ConfigError); return warnings about likely mistakes. grow_inits: inherit's."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg["fsdp"] and cfg["fsdp_shard_size"] and world_size % cfg["fsdp_shard_size"]:
        raise ConfigError(f"fsdp_shard_size={cfg['fsdp_shard_size']} does not divide the {world_size} processes: "
                          f"shard groups of that size cannot tile them (e.g. the GPUs per node, with a multiple of it "
                          f"in processes)")
    for key, allowed in (("dtype", ("auto", "float32", "bfloat16", "float16")), ("backend", ("auto", "nccl", "gloo")),
                         ("grow_mode", ("restart", "continue")), ("grow_init", tuple(grow_inits)),
                         ("sampling", ("random", "epochs"))):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    if cfg["collapse_every"] and cfg["collapse_seq_len"] > cfg["block_size"]:
        raise ConfigError(f"collapse_seq_len={cfg['collapse_seq_len']} is longer than block_size={cfg['block_size']}")
    if cfg["fsdp"] and cfg["dtype"] == "float16":
        raise ConfigError("dtype='float16' cannot train under fsdp=True (its loss scaling would have to span the "
                          "shards): use bfloat16 (or float32)")
    init = grow_inits[cfg["grow_init"]]
    if cfg["grow_every"] and cfg["grow_mode"] not in init.modes:
        raise ConfigError(f"grow_init={cfg['grow_init']!r} ({init.what}) works in grow_mode "
                          f"{' or '.join(map(repr, init.modes))}, not {cfg['grow_mode']!r}")
    if new_model and not cfg["head_dim"] and cfg["n_embd"] % cfg["n_head"]:
        raise ConfigError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}: each head gets "
                          f"n_embd / n_head dimensions")
    if cfg["decay_lr"] and cfg["min_lr"] > cfg["learning_rate"]:
        raise ConfigError(f"min_lr={cfg['min_lr']} is above learning_rate={cfg['learning_rate']}: the cosine would "
                          f"rise; lower min_lr (e.g. to learning_rate / 10)")
    if cfg["decay_lr"] and cfg["warmup_iters"] >= cfg["lr_decay_iters"]:
        raise ConfigError(f"warmup_iters={cfg['warmup_iters']} is not below lr_decay_iters={cfg['lr_decay_iters']}: "
                          f"the learning rate would drop from its peak straight to min_lr; raise lr_decay_iters or "
                          f"lower warmup_iters")
    warnings, round_iters = [], cfg["grow_every"]
    if round_iters and cfg["decay_lr"]:
        # restart mode: each round its own warmup and cosine (pure warm-up refused); continue mode: one schedule
        if cfg["warmup_iters"] >= round_iters and cfg["grow_mode"] == "restart":
            raise ConfigError(f"warmup_iters={cfg['warmup_iters']} is not below grow_every={round_iters}: in restart "
                              f"mode every round would be pure warm-up; lower warmup_iters (the paper: 2K of a 100K "
                              f"round)")
        if cfg["warmup_iters"] >= round_iters:
            warnings.append(f"warmup_iters={cfg['warmup_iters']} >= grow_every={round_iters}: the first round ends "
                            f"while the learning rate is still warming up")
        if cfg["lr_decay_iters"] > round_iters and cfg["grow_mode"] == "restart":
            warnings.append(f"lr_decay_iters={cfg['lr_decay_iters']} > grow_every={round_iters}: each round ends "
                            f"before its cosine reaches min_lr (the paper's configs set lr_decay_iters = grow_every)")
    if round_iters and cfg["max_iters"] < round_iters:
        warnings.append(f"max_iters={cfg['max_iters']} < grow_every={round_iters}: no round ends in this run")
    return warnings


class RunDir:
    """out_dir as a run writes it: log.jsonl (also printed, and sent to wandb: (project, run name) or None) and the
    checkpoint (rank 0 writes both; under FSDP every rank writes its own shards). eval_only: print only."""

    def __init__(self, out_dir, procs, eval_only=False, wandb=None, checkpoint_iter=None):
        self.out_dir, self.procs, self.eval_only, self.wandb = out_dir, procs, eval_only, wandb
        self.log_path, self.ckpt_path = os.path.join(out_dir, "log.jsonl"), checkpoint_path(out_dir)
        self.log_size = 0  # log.jsonl's length, recorded in each checkpoint (a resume truncates to it)
        self.checkpoint_iter = checkpoint_iter  # the iteration of the checkpoint on disk (for messages)

    def start_log(self, config, resuming, checkpoint_log_size=None):
        """A resume drops the records after its checkpoint; a new run starts with a run_start record (its config)."""
        if self.wandb and self.procs.master:
            import wandb

            self.wandb = wandb.init(project=self.wandb[0], name=self.wandb[1], config=config)  # the run, from now on
        if not self.procs.master or self.eval_only:
            return
        if resuming and os.path.isfile(self.log_path):
            if checkpoint_log_size is not None and os.path.getsize(self.log_path) > checkpoint_log_size:
                os.truncate(self.log_path, checkpoint_log_size)
            self.log_size = os.path.getsize(self.log_path)
        elif not resuming:
            if os.path.isfile(self.log_path):  # --overwrite=True, or an earlier attempt of this run that saved nothing
                os.remove(self.log_path)
            self.append({"iter": 0, "event": "run_start", "config": config})

    def log(self, record):
        """Print a record and append it as one JSON line to log.jsonl (and wandb)."""
        if not self.procs.master:
            return
        print(" | ".join(f"{k} {v:.4f}" if k.endswith("loss") and isinstance(v, float) else f"{k} {v:.4g}"
                         if isinstance(v, float) else f"{k}: {len(v)} in log.jsonl" if isinstance(v, (list, dict))
                         else f"{k} {v}" for k, v in record.items() if v is not None))
        if self.eval_only:
            return
        self.append(record)
        if self.wandb:
            self.wandb.log({k: v for k, v in flat(record).items() if v is not None}, step=record["iter"])

    def finish(self):
        if self.wandb and self.procs.master:
            self.wandb.finish()

    def append(self, record):
        os.makedirs(self.out_dir, exist_ok=True)  # out_dir appears with the first thing written into it
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            self.log_size = f.tell()

    def save(self, state, raw_model, optimizer):
        """state, the model and the optimizer, written atomically (every rank calls this): by rank 0 as ckpt.pt, or
        under FSDP by every rank as ckpt.dcp/. A failed write leaves the previous checkpoint and stops every rank."""
        procs, error = self.procs, None
        ckpt = dict(state, log_size=self.log_size)
        where = os.path.join(self.out_dir, SHARDED_NAME) if procs.fsdp else self.ckpt_path
        try:
            if procs.fsdp:
                save_sharded_checkpoint(ckpt, self.out_dir, raw_model, optimizer)
            elif procs.master:
                save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict()} | ckpt,
                                self.ckpt_path)
            if procs.master:
                print(f"saved checkpoint at iter {state['iter_num']} to {where}")
        except OSError as e:
            kept = (f"the previous checkpoint (iter {self.checkpoint_iter}) is intact"
                    if find_checkpoint(self.out_dir) else "no checkpoint was written")
            error = (f"could not save the checkpoint of iter {state['iter_num']} to {where} ({e.strerror or e}); "
                     f"{kept}. Free space and run the same command again: it continues from the checkpoint")
        if procs.ddp:  # no rank goes on (or exits on preemption) before rank 0's save has succeeded or failed
            error = share_from_rank0(error)
        if error:
            fail(error)
        self.checkpoint_iter = state["iter_num"]


def flat(value, key=""):
    """value as {key: value}, its nested dicts' and lists' items spread out as {"key/sub/...": item} (for wandb)."""
    if not isinstance(value, (dict, list)):
        return {key: value}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return {k: v for sub, item in items for k, v in flat(item, f"{key}/{sub}" if key else str(sub)).items()}


def rng_state(device_type):
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


def restore_random_state(ckpt, procs, batches):
    """This process's random state (rng_state's) and batch sampler as a checkpoint of as many processes left them."""
    if "rng" in ckpt and len(ckpt["sampler"]) == procs.world_size:
        state = ckpt["rng"][procs.rank]
        torch.set_rng_state(state["torch"])
        if procs.device_type == "cuda" and state["cuda"] is not None:
            torch.cuda.set_rng_state(state["cuda"])
        n, p = state["numpy"], state["python"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        batches.load_state_dict(ckpt["sampler"][procs.rank])
    elif "rng" in ckpt and procs.master:
        print(f"note: the checkpoint was written by {len(ckpt['sampler'])} process(es), this run has "
              f"{procs.world_size}: batches are drawn afresh, so this run does not replay an uninterrupted one")


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
