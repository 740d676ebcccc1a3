"""
The whole Inheritune recipe on the bundled Shakespeare corpus, on a CPU, in about 10 minutes:

    python demo.py                 # writes out-demo/: results.json, losses.png, and each stage's run
    python demo.py --out_dir=DIR --device=cuda

1. prepare data/shakespeare_char (character level)
2. train a reference model (8 layers)
3. measure its attention collapse (analyze_rank.py)
4. inherit its first half (4 layers) and train with growth (+2 layers per round, the paper's restart
   mode) until the val loss reaches the reference's
5. train a model of the inherited model's final depth from scratch for the same number of steps
6. print a table, save out-demo/results.json and a loss-curve PNG

Each stage is a run of the repo's own scripts; a finished stage is reused when the demo is run again.
"""

import json
import os
import subprocess
import sys

from configurator import ConfigError, check_device, configure_or_exit

cfg = configure_or_exit(dict(
    out_dir="out-demo",  # a folder, created when the first stage writes to it
    device="cpu",
    reference_layers=8,
    reference_iters=600,
    round_iters=100,  # grow_every: training steps per Inheritune round
    max_rounds=3,  # 4 -> 6 -> 8 layers at most
))
try:
    check_device(cfg["device"])
except ConfigError as e:
    sys.exit(f"error: {e}")
OUT = os.path.abspath(cfg["out_dir"])  # the stages run in the repo's folder, not the caller's
REPO = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(REPO, "data", "shakespeare_char")
# one small GPT shape for all runs: only the depth differs
COMMON = dict(dataset="shakespeare_char", data_dir=DATA_DIR, device=cfg["device"], compile=False, dtype="float32",
              n_head=4, n_embd=128, block_size=128, batch_size=32, gradient_accumulation_steps=1, bias=False,
              dropout=0.0, learning_rate=2e-3, min_lr=1e-4, beta2=0.99, weight_decay=0.1,
              warmup_iters=min(50, cfg["round_iters"] // 2),  # below a round's length (train.py refuses more)
              eval_interval=100, eval_iters=20, log_interval=50, always_save_checkpoint=False, seed=1337)


def run(script, args, stage):
    """Run one of the repo's scripts; a stage whose done-marker exists is skipped."""
    done = os.path.join(OUT, stage, "done.json")
    if os.path.isfile(done):
        print(f"== {stage}: done earlier, reusing {os.path.dirname(done)}")
        return
    cmd = [sys.executable, os.path.join(REPO, script)] + [f"--{k}={v}" for k, v in args.items()]
    print(f"== {stage}: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit(f"error: the {stage} stage failed (see its output above); running the demo again continues it")
    os.makedirs(os.path.dirname(done), exist_ok=True)
    with open(done, "w") as f:
        json.dump({"command": cmd[1:]}, f)


def read_log(stage):
    with open(os.path.join(OUT, stage, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def evals(stage):
    return [r for r in read_log(stage) if "val_loss" in r]


# 1. data
if not os.path.isfile(os.path.join(DATA_DIR, "meta.json")):
    if subprocess.run([sys.executable, os.path.join(REPO, "data", "shakespeare", "prepare.py")], cwd=REPO).returncode:
        sys.exit("error: preparing data/shakespeare_char failed")
# 2. the reference
ref_dir = os.path.join(OUT, "reference")
run("train.py", COMMON | dict(out_dir=ref_dir, n_layer=cfg["reference_layers"], max_iters=cfg["reference_iters"],
                              lr_decay_iters=cfg["reference_iters"]), "reference")
reference_val_loss = evals("reference")[-1]["val_loss"]

# 3. attention collapse of the reference
run("analyze_rank.py", dict(model=ref_dir, data=os.path.join(DATA_DIR, "val.bin"), num_samples=100, seq_len=100,
                            device=cfg["device"], out_dir=os.path.join(OUT, "analysis")), "analysis")
with open(os.path.join(OUT, "analysis", "analysis.json")) as f:
    analysis = json.load(f)

# 4. Inheritune: first half of the reference, +2 layers per round until the reference's val loss
start_layers = cfg["reference_layers"] // 2
run("train.py", COMMON | dict(out_dir=os.path.join(OUT, "inheritune"), init_from="inherit", reference=ref_dir,
                              n_layer=start_layers, grow_every=cfg["round_iters"], grow_by=2, grow_mode="restart",
                              max_iters=cfg["round_iters"] * cfg["max_rounds"], lr_decay_iters=cfg["round_iters"],
                              target_val_loss=reference_val_loss), "inheritune")
inherit_evals = evals("inheritune")
inherited_layers = inherit_evals[-1]["n_layer"]
inherited_steps = inherit_evals[-1]["iter"]

# 5. the same depth from scratch, for the same number of steps
run("train.py", COMMON | dict(out_dir=os.path.join(OUT, "scratch"), n_layer=inherited_layers,
                              max_iters=inherited_steps, lr_decay_iters=inherited_steps), "scratch")

# 6. results
results = {
    "reference_layers": cfg["reference_layers"],
    "reference_steps": cfg["reference_iters"],
    "reference_val_loss": reference_val_loss,
    "inherited_layers": inherited_layers,
    "inherited_steps": inherited_steps,
    "inherited_val_loss": inherit_evals[-1]["val_loss"],
    "inherited_rounds": [r for r in read_log("inheritune") if r.get("event") == "round_end"],
    "scratch_layers": inherited_layers,
    "scratch_steps": evals("scratch")[-1]["iter"],
    "scratch_val_loss": evals("scratch")[-1]["val_loss"],
    "lazy_layers": [layer["layer"] for layer in analysis["layers"] if layer["lazy"]],
    "suggested_n_layer": analysis["suggested_n_layer"],
}
with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=1)

print(f"\n{'model':<28}{'layers':>7}{'steps':>7}{'val loss':>10}")
for name, key in (("reference", "reference"), ("Inheritune (inherit + grow)", "inherited"),
                  ("same depth from scratch", "scratch")):
    print(f"{name:<28}{results[key + '_layers']:>7}{results[key + '_steps']:>7}{results[key + '_val_loss']:>10.4f}")
print(f"lazy layers of the reference (MaxRank = 1): {results['lazy_layers'] or 'none'}; "
      f"analyze_rank.py suggests inheriting {results['suggested_n_layer']} layers")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(7, 4.5))
for stage, label in (("reference", f"reference ({cfg['reference_layers']} layers)"),
                     ("inheritune", f"Inheritune ({start_layers} -> {inherited_layers} layers)"),
                     ("scratch", f"scratch ({inherited_layers} layers)")):
    points = evals(stage)
    ax.plot([p["iter"] for p in points], [p["val_loss"] for p in points], marker=".", label=label)
for r in results["inherited_rounds"]:
    ax.axvline(r["iter"], color="gray", lw=0.5, ls=":")
ax.axhline(reference_val_loss, color="black", lw=0.8, ls="--", label="reference's final val loss")
ax.set_xlabel("iteration")
ax.set_ylabel("validation loss (char-level Shakespeare)")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "losses.png"), dpi=120)
print(f"wrote {os.path.join(cfg['out_dir'], 'results.json')} and {os.path.join(cfg['out_dir'], 'losses.png')}")
