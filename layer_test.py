"""
The paper's functional test of lazy layers (arXiv 2404.08634, Sec. 2.1, Table 4) on any model: small students made
of k blocks of it (the first k, the k most collapsed, ... and random init), trained for the same steps on the same
data, compared at equal steps and equal FLOPs beside the full model's val loss.

    python layer_test.py --model=/models/SmolLM2-135M --steps=500          # first 4, 4 most collapsed, random
    python layer_test.py --model=gpt2 --groups=0-3,4-7,8-11,random --device=cuda --steps=2000   # Table 4's groups
    python layer_test.py --model=out-shakespeare-char --k=2                 # one of our checkpoints, its own data

--model: a Hugging Face causal-LM folder or Hub id, a GPT-2 name, or one of our out_dirs / ckpt.pt. Block indices
are 0-based (the paper's layers 1-4 are blocks 0-3). --groups: comma-separated, each `first`, `collapsed` (the k
blocks of lowest MaxRank in analyze_rank.py's analysis, in depth order), `random` (k layers of the model's shape
from scratch), a range `a-b` or a list `a+b+c`; each names exactly k blocks. The data: --dataset / --data_dir, else
our checkpoint's own, else the bundled Shakespeare tokenized with the model's tokenizer (prepare_owt.py).

Every stage is a run of the repo's scripts, in its own folder under --out_dir: data/, analysis/ (analyze_rank.py),
inherit_<group>/ (inherit.py --layers: the student at init, and the full model's val loss on the students' eval
windows), <group>/ (train.py, from that checkpoint; random: from scratch). A finished stage is reused when the test
is run again with the same settings, a stopped one (Ctrl-C, SIGTERM) is continued. CPU stages take a torch thread
per free core (demo.py's choice). Writes out_dir/results.json and prints the table.
"""

import dataclasses
import json
import os
import shutil
import sys

import compare
from inheritune.checkpoint import find_checkpoint, load_checkpoint
from inheritune.configurator import ConfigError, check_device, configure_or_exit
from inheritune.data import load_meta
from inheritune.hf import HUB_GPT2_NAMES
from inheritune.run import run_stage, stage_threads, stop_in_one_line
from inheritune.source import open_source

REPO = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE_TEXTS = os.path.join(REPO, "data", "shakespeare", "texts")

cfg = configure_or_exit(dict(
    model="",  # the model whose blocks are tested: a Hugging Face folder / Hub id, a GPT-2 name, or our checkpoint
    k=4,  # [1, inf): blocks per student
    groups="first,collapsed,random",  # which blocks each student takes (see the docstring), e.g. 0-3,4-7,8-11,random
    steps=300,  # [2, inf): training steps of every student (one of warm-up, then a decay)
    dataset="",  # data/<dataset>; default: our checkpoint's own data, else Shakespeare in the model's tokenizer
    data_dir="",
    out_dir="out-layer-test",  # a folder: every stage's run goes under it
    device="cpu",
    block_size=128,  # [1, inf): the students' context (inherited position embeddings are cropped to it)
    batch_size=8,  # [1, inf)
    gradient_accumulation_steps=1,  # [1, inf)
    learning_rate=6e-4,  # (0, inf)
    eval_iters=20,  # [1, inf): validation batches per eval: the same eval_iters * batch_size windows for every run
    num_samples=100,  # [1, inf): analyze_rank.py's sequences
    seed=1337,  # [0, 4294967295]
))


def parse_groups(spec, k, depth):
    """The groups of --groups: 'first', 'collapsed', 'random' or a list of k block indices each."""
    groups = []
    for item in (g.strip() for g in spec.split(",")):
        if item in ("first", "collapsed", "random"):
            groups.append(item)
            continue
        try:
            if "-" in item:
                a, b = map(int, item.split("-"))
                blocks = list(range(a, b + 1))
            else:
                blocks = [int(i) for i in item.split("+")]
        except ValueError:
            raise ConfigError(f"groups: {item!r} is none of first, collapsed, random, a range a-b or a list a+b+c")
        if len(blocks) != k or not all(0 <= i < depth for i in blocks):
            raise ConfigError(f"groups: {item!r} must name k={k} blocks of the model's 0..{depth - 1}")
        groups.append(blocks)
    if not groups:
        raise ConfigError("groups is empty")
    return groups


try:
    check_device(cfg["device"])
    if not cfg["model"]:
        raise ConfigError("--model=... is needed: a Hugging Face folder or Hub id, a GPT-2 name or our checkpoint")
    # a local model is passed on as an absolute path: the stages run in the repo's folder, not the caller's
    MODEL = os.path.abspath(cfg["model"]) if os.path.exists(cfg["model"]) else cfg["model"]
    source = open_source(MODEL)  # its config (and our checkpoint's metadata); the weights stay on disk
    depth = source.config.n_layer
    if cfg["k"] > depth:
        raise ConfigError(f"k={cfg['k']} is more blocks than the model's {depth}")
    groups = parse_groups(cfg["groups"], cfg["k"], depth)
    own_run = (source.checkpoint or {}).get("config") or {}
    if cfg["data_dir"] or cfg["dataset"]:
        data_dir = os.path.abspath(cfg["data_dir"]) if cfg["data_dir"] else os.path.join(REPO, "data", cfg["dataset"])
    elif own_run:  # our checkpoint: the data it was trained on (a relative data_dir was the repo's)
        data_dir = os.path.join(REPO, own_run.get("data_dir") or os.path.join("data", own_run["dataset"]))
    else:
        data_dir = ""
    if data_dir:
        load_meta(data_dir)  # refuse missing data before any work
except ValueError as e:  # ConfigError, DataError, CheckpointError, ModelLoadError
    sys.exit(f"error: {e}")
OUT = os.path.abspath(cfg["out_dir"])
K = cfg["k"]
THREADS = stage_threads()


def run(script, args, stage):
    """Run one of the repo's scripts as a stage (run_stage: reused when done, continued when stopped)."""
    run_stage([os.path.join(REPO, script)] + [f"--{k}={v}" for k, v in args.items()], os.path.join(OUT, stage),
              cfg["out_dir"], THREADS)


stop_in_one_line()
# 1. data: the bundled Shakespeare in the model's tokenizer (GPT-2 names: tiktoken's GPT-2 BPE, as they were trained)
if not data_dir:
    data_dir = os.path.join(OUT, "data")
    run("prepare_owt.py", dict(input=SHAKESPEARE_TEXTS, val_fraction=0.1, out_dir=data_dir,
                               tokenizer="gpt2" if MODEL in HUB_GPT2_NAMES else MODEL), "data")

# 2. the analysis: each block's MaxRank on the same data
analysis_dir = os.path.join(OUT, "analysis")
run("analyze_rank.py", dict(model=MODEL, data=os.path.join(data_dir, "val.bin"), num_samples=cfg["num_samples"],
                            seq_len=min(100, cfg["block_size"]), device=cfg["device"], out_dir=analysis_dir),
    "analysis")
with open(os.path.join(analysis_dir, "analysis.json")) as f:
    max_rank = [rec["max_rank"] for rec in json.load(f)["layers"]]

# the groups as block lists (None: random init), each once
students = {}
for group in groups:
    if group == "first":
        group = list(range(K))
    elif group == "collapsed":
        group = sorted(sorted(range(depth), key=lambda i: max_rank[i])[:K])
    name = "random" if group == "random" else "blocks_" + "_".join(map(str, group))
    if name in students:
        print(f"note: {name} is named twice in --groups (first / collapsed may coincide): trained once")
    students[name] = None if group == "random" else group

# 3. the students: same data, eval windows, optimizer, schedule and steps; only the initialization differs
S = cfg["steps"]
TRAIN = dict(data_dir=data_dir, device=cfg["device"], compile=False, block_size=cfg["block_size"],
             batch_size=cfg["batch_size"], gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
             learning_rate=cfg["learning_rate"], min_lr=cfg["learning_rate"] / 10, warmup_iters=max(1, S // 10),
             max_iters=S, lr_decay_iters=S, eval_interval=max(1, S // 5), eval_iters=cfg["eval_iters"],
             log_interval=max(1, S // 10), seed=cfg["seed"], always_save_checkpoint=True)
full_val_loss = None
for name, blocks in students.items():
    student_dir = os.path.join(OUT, name)
    if blocks is None:  # from scratch at depth k: the model's plain config fields (block size, dropout: training's)
        shape = {f.name: getattr(source.config, f.name) for f in dataclasses.fields(source.config)
                 if type(f.default) in (int, float, bool, str) and f.name not in ("n_layer", "block_size", "dropout")}
        if getattr(source.config, "rope_scaling", None):
            print("note: the random student has plain rotary embeddings: train.py has no flag for rope_scaling")
        run("train.py", TRAIN | shape | dict(n_layer=K, out_dir=student_dir), name)
        continue
    init_dir = os.path.join(OUT, f"inherit_{name}")
    # inherit.py also measures the full model on the students' eval windows (same data, context, batches, seed)
    run("inherit.py", dict(init_from=MODEL, layers=",".join(map(str, blocks)), out_dir=init_dir, data_dir=data_dir,
                           block_size=cfg["block_size"], eval_iters=cfg["eval_iters"], batch_size=cfg["batch_size"],
                           seed=cfg["seed"], device=cfg["device"]), f"inherit_{name}")
    full_val_loss = load_checkpoint(init_dir, weights=False)["inherit"]["reference_val_loss"]
    if not find_checkpoint(student_dir):  # train a copy: inherit_<group>/ keeps the student at init
        os.makedirs(student_dir, exist_ok=True)
        shutil.copy(os.path.join(init_dir, "ckpt.pt"), os.path.join(student_dir, "ckpt.pt"))
    train_args = {k: v for k, v in TRAIN.items() if k != "block_size"}  # the checkpoint has the cropped context
    run("train.py", train_args | dict(init_from="resume", out_dir=student_dir), name)

# 4. the table: compare.py's numbers, matched at the first student's steps and FLOPs
result = compare.compare([os.path.join(OUT, name) for name in students])
rows = []
for (name, blocks), r in zip(students.items(), result["runs"]):
    ranks = None if blocks is None else [max_rank[i] for i in blocks]
    rows.append(dict(name=name, blocks=blocks, max_rank=ranks,
                     mean_max_rank=None if ranks is None else sum(ranks) / len(ranks),
                     **{k: r[k] for k in ("steps", "flops", "final_val_loss", "val_loss_at_matched_steps",
                                          "val_loss_at_matched_flops")}))


def loss(x):
    return "n/a" if x is None else f"{x:.4f}"


lines = [f"{'student':<22}{'blocks':<22}{'MaxRank (mean)':>16}{'steps':>7}{'FLOPs':>10}{'val loss':>10}"
         f"{' @ ' + str(result['matched_steps']) + ' steps':>14}{' @ equal FLOPs':>15}", "-" * 116]
for r in rows:
    blocks = "random init" if r["blocks"] is None else ",".join(map(str, r["blocks"]))
    rank = "-" if r["max_rank"] is None else f"{r['mean_max_rank']:.2f}"
    lines.append(f"{r['name']:<22}{blocks:<22}{rank:>16}{r['steps']:>7}{r['flops']:>10.3g}"
                 f"{loss(r['final_val_loss']):>10}{loss(r['val_loss_at_matched_steps']):>14}"
                 f"{loss(r['val_loss_at_matched_flops']):>15}")
lines += [f"full model ({depth} blocks): val loss {loss(full_val_loss)} on the same windows"
          + ("" if full_val_loss is not None else " (not measured: no inherited student)"),
          "MaxRank: analyze_rank.py's per-block max over heads of the approximate rank (1: lazy), mean over the "
          "student's blocks;",
          "blocks are 0-based. @: val loss at the first student's steps and FLOPs, interpolated between evals (n/a: "
          "outside the curve)."]
for r in rows:
    if r["max_rank"] is not None:
        lines.append(f"  {r['name']}: MaxRank per block {', '.join(f'{x:.2f}' for x in r['max_rank'])}")
table = "\n".join(lines)
print("\n" + table)
with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(dict(settings=cfg, model=MODEL, depth=depth, full_model_val_loss=full_val_loss, max_rank=max_rank,
                   matched_steps=result["matched_steps"], matched_flops=result["matched_flops"], students=rows,
                   table=table), f, indent=1)
print(f"wrote {os.path.join(cfg['out_dir'], 'results.json')}")
