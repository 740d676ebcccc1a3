"""
The paper's protocol (arXiv 2404.08634, Sec. 4 and App. D) in miniature, on the bundled Shakespeare corpus on a CPU:

    python demo.py                     # writes out-demo/: results.json, losses.png, and each stage's run
    python demo.py --baselines=True    # also stacking, hybrid stacking, half-width and KD
    python demo.py --out_dir=DIR --device=cuda
    python demo.py --quick=True        # the same protocol, smaller: about a minute on 2 CPU cores -> out-demo-quick/

1. prepare data/shakespeare_char (character level)
2. the reference: L layers from scratch for T steps
3. its attention collapse (analyze_rank.py)
4. Inheritune: its first L/2 blocks, trained in rounds of the reference's T steps, +2 blocks per round (restart
   mode: re-inherit, fresh optimizer and schedule) until a round ends at or below the reference's val loss
5. the controls: the final depth l from scratch for T steps and for 2T steps
6. with --baselines=True, at the paper's budgets: stacking (l/2 layers from scratch for T steps, every block
   duplicated, T more), hybrid stacking (the reference's first l/2 blocks twice, T steps), half-width (all L
   blocks at half width, T steps), knowledge distillation (l layers from scratch, the reference as teacher,
   kd_alpha 0.6, T/2 steps)
7. a table in the paper's layout with steps and FLOPs (compare.py's numbers: Inheritune's rounds, and the
   reference's cost apart), out-demo/results.json and compare.py's plot out-demo/losses.png

Every run evaluates on the same validation windows. Each stage is a run of the repo's own scripts; a finished stage
is reused when the demo is run again with the same settings, a stopped one (Ctrl-C, SIGTERM: train.py saves) is
continued, and an out_dir of a demo with other settings is refused. The sizes are flags (a smaller model, not another
protocol, for a quicker run).
"""

import json
import os
import subprocess
import sys

import compare
from inheritune.configurator import ConfigError, check_device, configure_or_exit
from inheritune.run import run_stage, stage_threads, stop_in_one_line

DEFAULTS = dict(
    quick=False,  # the same protocol at the QUICK sizes below (a flag given beside it still wins): about a minute
    out_dir="out-demo",  # a folder, created when the first stage writes to it
    device="cpu",
    baselines=False,  # also run stacking, hybrid stacking, half-width and KD
    reference_layers=8,  # [2, inf): L; Inheritune starts from its first L/2 blocks
    reference_iters=500,  # [8, inf): T: steps of the reference and of each round (8: warm-up, decay, a KD run of T/2)
    max_rounds=3,  # [1, inf): Inheritune rounds at most (4 -> 6 -> 8 layers)
    n_embd=128,  # [1, inf): the width of every model (half-width: n_embd / 2)
    n_head=4,  # [1, inf)
    block_size=128,  # [1, inf)
    batch_size=20,  # [1, inf)
    eval_iters=16,  # [1, inf): validation batches per eval: eval_iters * batch_size fixed windows, the same in all
    onset_iters=0,  # [0, inf): also train a longer reference (e.g. 4 * reference_iters) to look for collapse's onset
)
QUICK = dict(out_dir="out-demo-quick", reference_layers=4, reference_iters=200, n_embd=64, block_size=64,
             batch_size=12, eval_iters=8)
cfg = configure_or_exit(DEFAULTS)
if cfg["quick"]:
    cfg = configure_or_exit(DEFAULTS | QUICK)
try:
    check_device(cfg["device"])
    L, T, C, H = cfg["reference_layers"], cfg["reference_iters"], cfg["n_embd"], cfg["n_head"]
    if C % H or (cfg["baselines"] and (H % 2 or L < 4)):
        raise ConfigError(f"n_embd={C}, n_head={H}, reference_layers={L}: n_embd must divide into n_head heads, and "
                          f"--baselines=True halves the heads (an even n_head) and stacks l/2 >= 1 layers (L >= 4)")
    if 0 < cfg["onset_iters"] <= T:
        raise ConfigError(f"onset_iters={cfg['onset_iters']} is not above reference_iters={T}: the onset run is a "
                          f"longer reference (e.g. {4 * T}); 0 trains none")
except ConfigError as e:
    sys.exit(f"error: {e}")
OUT = os.path.abspath(cfg["out_dir"])  # the stages run in the repo's folder, not the caller's
REPO = os.path.dirname(os.path.abspath(__file__))
THREADS = stage_threads()
DATA_DIR = os.path.join(REPO, "data", "shakespeare_char")
# one small GPT shape and one optimizer setting for every run: only the depth, width, init and steps differ
COMMON = dict(dataset="shakespeare_char", data_dir=DATA_DIR, device=cfg["device"], compile=False, dtype="float32",
              n_head=H, n_embd=C, block_size=cfg["block_size"], batch_size=cfg["batch_size"],
              gradient_accumulation_steps=1, bias=False, dropout=0.0, learning_rate=2e-3, min_lr=1e-4, beta2=0.99,
              weight_decay=0.1, warmup_iters=min(50, T // 4), eval_interval=max(1, T // 4),
              eval_iters=cfg["eval_iters"], log_interval=max(1, T // 10), always_save_checkpoint=True, seed=1337,
              # every run's attention collapse at each eval: analyze_rank.py's metrics on 20 fixed val windows
              collapse_every=max(1, T // 4), collapse_windows=20, collapse_seq_len=min(100, cfg["block_size"]))


def run(script, args, stage):
    """Run one of the repo's scripts as a stage (run_stage: reused when done, continued when stopped)."""
    run_stage([os.path.join(REPO, script)] + [f"--{k}={v}" for k, v in args.items()], stage_dir(stage),
              cfg["out_dir"], THREADS)


def stage_dir(stage):
    return os.path.join(OUT, stage)


def train(stage, **args):
    run("train.py", COMMON | dict(out_dir=stage_dir(stage)) | args, stage)


def read_log(stage):
    with open(os.path.join(stage_dir(stage), "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def evals(stage):
    return [r for r in read_log(stage) if "val_loss" in r]


def collapse_over_training(stage):
    """Per collapse record of a stage: its iteration, depth, the lowest MaxRank of any layer and which, and the lazy
    layers (MaxRank = 1, the paper's rule)."""
    records = [r for r in read_log(stage) if r.get("event") == "collapse"]
    return [dict(iter=r["iter"], n_layer=r["n_layer"], min_max_rank=min(x["max_rank"] for x in r["layers"]),
                 at_layer=min(r["layers"], key=lambda x: x["max_rank"])["layer"],
                 lazy_layers=[x["layer"] for x in r["layers"] if x["max_rank"] == 1.0]) for r in records]


def describe_collapse(name, stage):
    points = collapse_over_training(stage)
    steps = ", ".join(f"{p['iter']}: {p['min_max_rank']:.2f} (layer {p['at_layer']})" for p in points)
    lazy = sorted({layer for p in points for layer in p["lazy_layers"]})
    return (f"{name}: the lowest MaxRank of any layer at each collapse record, iter: value (layer): {steps}; "
            + (f"lazy layers (MaxRank = 1) at some point: {lazy}" if lazy else "no layer collapsed to MaxRank 1"))


stop_in_one_line()
print(f"the stages run with OMP_NUM_THREADS={THREADS} (torch threads)")
# 1. data
if not os.path.isfile(os.path.join(DATA_DIR, "meta.json")):
    if subprocess.run([sys.executable, os.path.join(REPO, "data", "shakespeare", "prepare.py")], cwd=REPO).returncode:
        sys.exit("error: preparing data/shakespeare_char failed")
# 2. the reference: L layers, T steps
train("reference", n_layer=L, max_iters=T, lr_decay_iters=T)
reference_val_loss = evals("reference")[-1]["val_loss"]

# 3. attention collapse of the reference
run("analyze_rank.py", dict(model=stage_dir("reference"), data=os.path.join(DATA_DIR, "val.bin"), num_samples=100,
                            seq_len=min(100, cfg["block_size"]), device=cfg["device"],
                            out_dir=stage_dir("analysis")), "analysis")
with open(os.path.join(stage_dir("analysis"), "analysis.json")) as f:
    analysis = json.load(f)

# 4. Inheritune: the first L/2 blocks, rounds of T steps, +2 blocks per round until the reference's val loss
train("inheritune", init_from="inherit", reference=stage_dir("reference"), n_layer=L // 2, grow_every=T, grow_by=2,
      grow_mode="restart", max_layers=L, max_iters=T * cfg["max_rounds"], lr_decay_iters=T,
      target_val_loss=reference_val_loss)
rounds = [r for r in read_log("inheritune") if r.get("event") == "round_end"]
l = evals("inheritune")[-1]["n_layer"]  # the final depth

# 5. the final depth from scratch, for T and for 2T steps
train("scratch", n_layer=l, max_iters=T, lr_decay_iters=T)
train("scratch_2x", n_layer=l, max_iters=2 * T, lr_decay_iters=2 * T)

# 6. the paper's other baselines (App. D)
k = max(1, l // 2)  # stacking's first depth
BASELINES = {  # stage: (the table's name, the initialization column)
    "stacking": ("stacking", "scratch, T steps, every block twice, T more"),
    "hybrid_stacking": ("hybrid stacking", f"reference's blocks 0..{k - 1}, twice"),
    "half_width": ("half-width", f"reference, {C // 2} wide, {H // 2} heads"),
    "kd": ("knowledge distillation", "scratch; teacher: the reference, a=0.6, T/2"),
}
if cfg["baselines"]:
    train("stacking", n_layer=k, grow_every=T, grow_mode="restart", grow_init="stack", max_layers=2 * k,
          max_iters=2 * T, lr_decay_iters=T)
    train("hybrid_stacking", init_from="inherit", reference=stage_dir("reference"),
          inherit_layers=",".join(map(str, list(range(k)) * 2)), max_iters=T, lr_decay_iters=T)
    train("half_width", init_from="inherit", reference=stage_dir("reference"), n_layer=L, n_embd=C // 2,
          n_head=H // 2, max_iters=T, lr_decay_iters=T)
    train("kd", n_layer=l, teacher=stage_dir("reference"), kd_alpha=0.6, kd_temperature=1.0, max_iters=T // 2,
          lr_decay_iters=T // 2)

# 7. the table: compare.py's numbers, matched against Inheritune's FLOPs
rows = [("inheritune", "Inheritune", f"reference's first {L // 2} blocks, rounds of T, +2"),
        ("reference", "reference", "scratch"),
        ("scratch", "scratch, final depth, T", "scratch"),
        ("scratch_2x", "scratch, final depth, 2T", "scratch")]
rows += [(stage, *BASELINES[stage]) for stage in BASELINES if cfg["baselines"]]
result = compare.compare([stage_dir(stage) for stage, _, _ in rows])
by_stage = dict(zip((stage for stage, _, _ in rows), result["runs"]))
for (stage, name, _), run_ in zip(rows, result["runs"]):
    run_["name"] = name  # the plot's labels

inheritune, reference = by_stage["inheritune"], by_stage["reference"]
ref_cost = inheritune["reference"]
lines = [f"{'model':<26}{'layers':>8}  {'initialization':<46}{'steps':>6}{'FLOPs':>10}{'val loss':>10}"
         f"{'val @ Inheritune FLOPs':>24}",
         "-" * 130]
for stage, name, init in rows:
    r = by_stage[stage]
    at = r["val_loss_at_matched_flops"]
    layers = "->".join(map(str, r["layers"]))
    lines.append(f"{name:<26}{layers:>8}  {init:<46}{r['steps']:>6}{r['flops']:>10.3g}{r['final_val_loss']:>10.4f}"
                 f"{'n/a' if at is None else f'{at:.4f}':>24}")
lines += [
    f"Inheritune: {len(rounds)} round(s) of {T} steps, {inheritune['steps']} steps and {inheritune['flops']:.3g} FLOPs "
    f"in all; the reference it inherits from cost {ref_cost['flops']:.3g} FLOPs ({ref_cost['steps']} steps), not "
    f"included above: {inheritune['flops_incl_reference']:.3g} FLOPs in total.",
    "val @ Inheritune FLOPs: each run's val loss at Inheritune's FLOPs, interpolated between its evals (n/a: its "
    "curve does not reach them). Same validation windows for every run."]
if cfg["baselines"]:
    lines.append("hybrid stacking and half-width also start from the reference's weights, and KD runs the reference "
                 "as its teacher: the reference's cost is not included in their FLOPs either; KD's FLOPs include the "
                 "teacher's forward passes.")
table = "\n".join(lines)
print("\n" + table)
collapse_lines = [describe_collapse("reference", "reference"), describe_collapse("Inheritune", "inheritune")]
if cfg["onset_iters"]:  # a longer reference, to look for when (or whether) collapse sets in at this scale
    N = cfg["onset_iters"]
    train("reference_long", n_layer=L, max_iters=N, lr_decay_iters=N, collapse_every=max(1, N // 16))
    collapse_lines.append(describe_collapse(f"reference trained {N} steps", "reference_long"))
print("\n".join(collapse_lines))
print(f"lazy layers of the reference (MaxRank = 1): "
      f"{[x['layer'] for x in analysis['layers'] if x['lazy']] or 'none'}; analyze_rank.py suggests inheriting "
      f"{analysis['suggested_n_layer']} layers")

results = {
    "settings": cfg,
    "reference_layers": L, "reference_steps": reference["steps"], "reference_val_loss": reference_val_loss,
    "reference_flops": reference["flops"],
    "inherited_layers": l, "inherited_steps": inheritune["steps"], "inherited_val_loss": inheritune["final_val_loss"],
    "inherited_flops": inheritune["flops"], "inherited_flops_incl_reference": inheritune["flops_incl_reference"],
    "inherited_rounds": rounds,
    "scratch_layers": l,
    "lazy_layers": [x["layer"] for x in analysis["layers"] if x["lazy"]],
    "suggested_n_layer": analysis["suggested_n_layer"],
    "reference_collapse": collapse_over_training("reference"),
    "inheritune_collapse": collapse_over_training("inheritune"),
    "reference_long_collapse": collapse_over_training("reference_long") if cfg["onset_iters"] else None,
    "table": table,
    "collapse": collapse_lines,
}
for stage in ("scratch", "scratch_2x", *BASELINES):
    if stage in by_stage:
        results |= {f"{stage}_val_loss": by_stage[stage]["final_val_loss"], f"{stage}_steps": by_stage[stage]["steps"],
                    f"{stage}_flops": by_stage[stage]["flops"]}
with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
compare.plot(result, os.path.join(OUT, "losses.png"))
for stage in ("reference", "inheritune") + (("reference_long",) if cfg["onset_iters"] else ()):
    compare.plot_collapse(stage, compare.read_collapse(stage_dir(stage)), os.path.join(OUT, f"collapse-{stage}.png"))
print(f"wrote {os.path.join(cfg['out_dir'], 'results.json')} and {os.path.join(cfg['out_dir'], 'losses.png')}, and "
      f"each run's collapse as {os.path.join(cfg['out_dir'], 'collapse-STAGE.png')}")
