"""train.py end to end on tiny models: learning, DDP, exact resume, atomic saves, preemption, config errors."""

import glob
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from inheritune import run
from conftest import REPO, kill_when_writing, read_log, run_in_process, train, train_cmd


def train_losses(out_dir):
    return {r["iter"]: r["loss"] for r in read_log(out_dir) if "loss" in r}


def val_losses(out_dir):
    return [(r["iter"], r["val_loss"]) for r in read_log(out_dir) if "val_loss" in r]


def test_val_loss_drops_and_checkpoint_loads_weights_only(char_data, tmp_path):
    out = tmp_path / "out"
    result = train(char_data, out, "--max_iters=60", "--eval_interval=30", "--learning_rate=3e-3")
    assert '"learning_rate": 0.003' in result.stdout  # the resolved config is printed
    (_, first), *_, (last_iter, last) = val_losses(out)
    assert last_iter == 60 and last < first - 0.5, val_losses(out)
    record = next(r for r in read_log(out) if "loss" in r)
    assert {"iter", "loss", "lr", "tok_per_s", "ms_per_step", "mfu"} <= record.keys() and record["mfu"] is None
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 60 and ckpt["config"]["learning_rate"] == 3e-3
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert {"optimizer", "scaler", "rng", "sampler", "model_args", "best_val_loss"} <= ckpt.keys()


def test_ddp_two_processes_gloo(char_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(char_data, out, "--max_iters=6", "--eval_interval=6", "--gradient_accumulation_steps=2")[1:]]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "2 process(es), 1 micro-steps each" in result.stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 6 and len(ckpt["rng"]) == len(ckpt["sampler"]) == 2
    # the two ranks draw different batches
    assert not torch.equal(ckpt["sampler"][0]["generator"], ckpt["sampler"][1]["generator"])
    # the val loss is over the same fixed windows as a single process's: split across ranks, all-reduced
    single = tmp_path / "single"
    train(char_data, single, "--max_iters=0")
    assert val_losses(out)[0][1] == pytest.approx(val_losses(single)[0][1], abs=1e-5)


def test_gradient_accumulation_must_divide_world_size(char_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(char_data, tmp_path, "--max_iters=1", "--gradient_accumulation_steps=3")[1:]]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "gradient_accumulation_steps=3" in result.stderr


@pytest.mark.parametrize("sampling", ["random", "epochs"])
def test_resume_is_bit_exact(char_data, tmp_path, sampling):
    # dropout on: the resumed run must also restore the RNG states, not only the weights and batches
    args = ["--dropout=0.1", "--eval_interval=5", "--gradient_accumulation_steps=2", f"--sampling={sampling}"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=12")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=7")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=12", "--init_from=resume")
    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "stopped")
    assert sorted(resumed) == list(range(12))
    assert resumed == straight


def test_decay_embeddings_reaches_the_optimizer(char_data, tmp_path):
    for decay_embeddings, decayed in (("True", 10), ("False", 8)):  # TINY: 8 Linear weights, wte, wpe, 5 norms
        train(char_data, tmp_path / decay_embeddings, "--max_iters=1", f"--decay_embeddings={decay_embeddings}")
        groups = torch.load(tmp_path / decay_embeddings / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"]
        assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(decayed, 0.1), (15 - decayed, 0.0)]


def test_resume_keeps_extra_checkpoint_keys(char_data, tmp_path):
    train(char_data, tmp_path, "--max_iters=2", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    # what inherit.py writes: weights plus metadata, no training state
    inherited = {"model": ckpt["model"], "model_args": ckpt["model_args"], "inherit": {"layers": [0, 1]}}
    torch.save(inherited, tmp_path / "ckpt.pt")
    train(char_data, tmp_path, "--max_iters=2", "--eval_interval=2", "--init_from=resume")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["inherit"] == {"layers": [0, 1]} and ckpt["iter_num"] == 2 and "optimizer" in ckpt


def test_init_from_hugging_face_folder(char_data, tmp_path, make_hf_gpt2):
    folder = make_hf_gpt2(n_positions=64)  # vocab 96 covers the char vocabulary
    train(char_data, tmp_path / "out", f"--init_from={folder}", "--max_iters=2", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["vocab_size"] == 96 and ckpt["model_args"]["block_size"] == 32
    assert ckpt["model_args"]["bias"] is True


def test_vocab_size_padding_and_too_small_vocab(char_data, tmp_path):
    train(char_data, tmp_path / "padded", "--vocab_size=128", "--max_iters=1", "--eval_interval=1")
    assert torch.load(tmp_path / "padded" / "ckpt.pt", weights_only=True)["model_args"]["vocab_size"] == 128
    result = train(char_data, tmp_path / "small", "--vocab_size=10", "--max_iters=1", expect_rc=1)
    assert "vocabulary of" in result.stderr


SLOW_SAVE = """
import io, sys, time, torch
sys.path.insert(0, ".")
from inheritune.checkpoint import save_checkpoint
real_save = torch.save
def half_then_hang(obj, f):  # write half the bytes, then hang: the parent kills us mid-write
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[:buf.tell() // 2])
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = half_then_hang
save_checkpoint({"model": {"w": torch.ones(1_000_000)}, "model_args": {}, "iter_num": 2}, sys.argv[1])
"""


def test_kill_during_save_keeps_old_checkpoint(tmp_path):
    from inheritune.checkpoint import load_checkpoint, save_checkpoint

    path = str(tmp_path / "ckpt.pt")
    save_checkpoint({"model": {"w": torch.zeros(3)}, "model_args": {}, "iter_num": 1}, path)
    kill_when_writing(SLOW_SAVE, path)
    assert glob.glob(path + ".tmp.*")  # the half-written file is there, under its temporary name
    ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 1 and torch.equal(ckpt["model"]["w"], torch.zeros(3))
    save_checkpoint({"model": {"w": torch.ones(3)}, "model_args": {}, "iter_num": 3}, path)
    assert not glob.glob(path + ".tmp.*")  # the next save into the folder removes what the killed one left
    assert load_checkpoint(path)["iter_num"] == 3


def test_sigterm_saves_and_exits_zero(char_data, tmp_path):
    output = open(tmp_path / "output.txt", "w+")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(train_cmd(char_data, tmp_path, "--max_iters=100000", "--eval_interval=100000"),
                            cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True)
    log_path = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log_path.exists() and len(train_losses(tmp_path)) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output.seek(0)
    text = output.read()
    assert proc.returncode == 0, text[-3000:]
    assert "received SIGTERM" in text
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == max(train_losses(tmp_path)) + 1  # saved at the step boundary after the last step


def test_non_finite_loss_stops_and_keeps_last_checkpoint(char_data, tmp_path):
    train(char_data, tmp_path, "--max_iters=3", "--eval_interval=3")
    result = train(char_data, tmp_path, "--max_iters=20", "--init_from=resume", "--learning_rate=1e9",
                   "--warmup_iters=0", "--eval_interval=1000", expect_rc=1)
    assert "loss is nan" in result.stderr and "the last good checkpoint" in result.stderr
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("arg, expected", [
    ("--lerning_rate=1e-3", ["unknown config key 'lerning_rate'", "learning_rate"]),
    ("--max_iters=many", ["max_iters", "expects int"]),
    ("--dtype=fp8", ["dtype='fp8'", "bfloat16"]),
    ("--learning_rate=0", ["--learning_rate=0 is outside (0, inf): peak learning rate"]),
    ("--learning_rate=-1e-3", ["--learning_rate=-0.001 is outside (0, inf)"]),
    ("--batch_size=0", ["--batch_size=0 is outside [1, inf)"]),
    ("--block_size=-8", ["--block_size=-8 is outside [1, inf)"]),
    ("--max_iters=-1", ["--max_iters=-1 is outside [0, inf)", "0 evaluates"]),
    ("--gradient_accumulation_steps=0", ["--gradient_accumulation_steps=0 is outside [1, inf)"]),
    ("--n_embd=33", ["n_embd=33 is not divisible by n_head=2"]),
    ("--min_lr=0.01", ["min_lr=0.01 is above learning_rate=0.0006"]),
    ("--warmup_iters=200", ["warmup_iters=200 is not below lr_decay_iters=100"]),
    ("--eval_iters=0", ["--eval_iters=0 is outside [1, inf)"]),
    ("--eval_interval=0", ["--eval_interval=0 is outside [1, inf)"]),
    ("--dropout=1.0", ["--dropout=1.0 is outside [0, 1)"]),
    ("--device=tpu", ["device='tpu'"]),
    ("--grow_every=5", ["warmup_iters=5 is not below grow_every=5", "restart mode"]),
    ("--dist_timeout_s=0", ["--dist_timeout_s=0 is outside (0, inf)"]),
    ("--seed=-1", ["--seed=-1 is outside [0, 4294967295]"]),
    ("--kd_alpha=1.5", ["--kd_alpha=1.5 is outside [0, 1]: the cross-entropy's weight"]),
])
def test_config_errors_exit_before_work(char_data, tmp_path, arg, expected):
    result = train(char_data, tmp_path / "out", "--max_iters=5", arg, expect_rc=1)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no traceback
    for text in expected:
        assert text in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was done


def test_max_iters_zero_evaluates_once(char_data, tmp_path):
    train(char_data, tmp_path, "--max_iters=0")
    assert [r["iter"] for r in read_log(tmp_path) if "val_loss" in r] == [0] and not (tmp_path / "ckpt.pt").exists()


def test_eval_only_prints_and_writes_nothing(char_data, tmp_path):
    train(char_data, tmp_path, "--max_iters=3", "--eval_interval=3")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = train(char_data, tmp_path, "--max_iters=3", "--eval_interval=3", "--eval_only=True")
    assert "continuing the run" in r.stdout and "iter 3 | train_loss" in r.stdout  # the checkpoint, evaluated
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# -- host syncs: the training step reads nothing back from the device except at log steps ---------------------
COUNT_READS = """
import json, os, runpy, sys
import torch, torch.distributed as dist
counts = {}
def counted(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        caller = sys._getframe(1).f_code  # not the batch sampler's reads of its own CPU generator (host-side)
        if not (caller.co_name == "next" and caller.co_filename.endswith("data.py")):
            counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)
for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
    counted(torch.Tensor, name)
for name in ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier"):
    counted(dist, name)
real_exit = os._exit
def report(code=0):
    if int(os.environ.get("RANK", "0")) == 0:
        print("READS " + json.dumps(counts), flush=True)
def exit_after_report(code):
    report()
    real_exit(code)
os._exit = exit_after_report  # a gloo run leaves through os._exit, past atexit
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, os.getcwd())
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit:
    report()
    raise
"""


def count_reads(char_data, out_dir, max_iters, processes=1):
    script = out_dir.parent / "count_reads.py"
    script.write_text(COUNT_READS)
    args = train_cmd(char_data, out_dir, f"--max_iters={max_iters}", "--log_interval=10", "--eval_interval=1000",
                     "--gradient_accumulation_steps=2", "--always_save_checkpoint=False")[2:]
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={processes}"]
    r = subprocess.run([*launch, str(script), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    return json.loads(next(line for line in r.stdout.splitlines() if line.startswith("READS "))[6:])


@pytest.mark.parametrize("processes", [1, 2])
def test_training_steps_read_the_device_only_at_log_steps(char_data, tmp_path, processes):
    # 20 more steps with log_interval=10 cost exactly 2 more reads (and, under DDP, 2 more all-reduces): the
    # loss, the non-finite count and the stop flag travel together, once per log step; other steps never wait
    short = count_reads(char_data, tmp_path / "short", 20, processes)
    long = count_reads(char_data, tmp_path / "long", 40, processes)
    if processes == 1:  # the 20-step run: one eval offset list per split drawn on the host at set-up, one read per
        # log step and one per number an eval logs (each loss of each split); nothing per step
        log = read_log(tmp_path / "short")
        evals, log_steps = [r for r in log if "val_loss" in r], [r for r in log if "loss" in r]
        splits = [k for k in evals[0] if k.endswith("_loss")]
        assert short == {"tolist": len(splits) + len(log_steps), "item": len(splits) * len(evals)}, short
    extra = {k: long.get(k, 0) - short.get(k, 0) for k in long.keys() | short.keys()}
    assert {k: v for k, v in extra.items() if v} == ({"tolist": 2} if processes == 1 else
                                                    {"tolist": 2, "all_reduce": 2}), (short, long)


# -- model options: every GPTConfig field is a flag; a model that brings its shape refuses one that disagrees ----
def test_llama_shaped_model_from_scratch(char_data, tmp_path):
    options = ["--norm=rmsnorm", "--mlp=swiglu", "--pos_emb=rope", "--n_kv_head=1", "--tie_embeddings=False",
               "--intermediate_size=48", "--rope_theta=500000.0"]
    train(char_data, tmp_path, "--max_iters=2", "--eval_interval=2", *options)
    args = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model_args"]
    assert (args["norm"], args["mlp"], args["pos_emb"], args["n_kv_head"], args["tie_embeddings"],
            args["intermediate_size"], args["rope_theta"]) == ("rmsnorm", "swiglu", "rope", 1, False, 48, 500000.0)
    r = train(char_data, tmp_path, "--max_iters=2", "--eval_interval=2", "--norm=bogus", "--overwrite=True",
              expect_rc=1)
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "norm='bogus'" in r.stderr
    r = train(char_data, tmp_path, "--max_iters=4", "--init_from=resume", "--n_kv_head=2", expect_rc=1)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "n_kv_head=2 disagrees with the checkpoint" in r.stderr and "whose n_kv_head is 1" in r.stderr
    r = train(char_data, tmp_path / "pretrained", f"--init_from={tmp_path}", "--max_iters=1", "--pos_emb=learned",
              expect_rc=1)
    assert "pos_emb='learned' disagrees with init_from=" in r.stderr and "whose pos_emb is 'rope'" in r.stderr
    r = train(char_data, tmp_path / "inherited", "--init_from=inherit", f"--reference={tmp_path}", "--n_layer=1",
              "--max_iters=1", "--mlp=gelu", expect_rc=1)
    assert "mlp='gelu' disagrees with reference" in r.stderr and not (tmp_path / "inherited").exists()


def test_flags_outside_the_run_identity_may_change_between_attempts(char_data, tmp_path):
    # a flag that does not define the run (logging, evaluation cadence, stopping) changes between attempts
    train(char_data, tmp_path, "--max_iters=4", "--eval_interval=2", "--gradient_accumulation_steps=1")
    r = train(char_data, tmp_path, "--max_iters=6", "--eval_interval=3", "--gradient_accumulation_steps=1",
              "--log_interval=2", "--wandb_project=other", "--stop_at_target=False", "--always_save_checkpoint=False")
    assert "continuing the run" in r.stdout and "from its checkpoint at iter 4" in r.stdout
    r = train(char_data, tmp_path, "--max_iters=8", "--gradient_accumulation_steps=1", "--weight_decay=0.0",
              expect_rc=1)
    assert "holds another run" in r.stderr and "weight_decay=0.1 there, 0.0 here" in r.stderr


def test_missing_data_fails_before_the_config_is_printed(tmp_path):
    r = train(tmp_path / "no_data", tmp_path / "out", "--max_iters=1", expect_rc=1)
    assert r.stdout == "" and r.stderr.strip() == f"error: {tmp_path / 'no_data'} has no meta.json: prepare the data " \
        "first (python prepare_owt.py ..., or python data/shakespeare/prepare.py)"


# -- a fork: a copy of train.py with one line added, run with the repo's modules ------------------------------
def fork_of_train_py(tmp_path, after, line):
    """tmp_path/fork/train.py: train.py with line added after the line `after`, nothing else edited."""
    source = open(os.path.join(REPO, "train.py")).read()
    assert f"\n{after}\n" in source
    fork = tmp_path / "fork" / "train.py"
    fork.parent.mkdir()
    fork.write_text(source.replace(f"\n{after}\n", f"\n{after}\n{line}\n"))
    return fork


def run_fork(fork, char_data, out_dir, *args, expect_rc=0):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(fork), *train_cmd(char_data, out_dir, *args)[2:]], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == expect_rc, r.stderr[-3000:]
    return r


def test_a_key_a_fork_adds_defines_the_run_and_a_student_inherits_it(char_data, tmp_path):
    fork = fork_of_train_py(tmp_path, "beta2 = 0.95  # [0, 1)", "adam_eps = 1e-8  # a fork's new optimizer setting")
    run_fork(fork, char_data, tmp_path / "ref", "--max_iters=2", "--eval_interval=2", "--adam_eps=1e-6")
    assert torch.load(tmp_path / "ref" / "ckpt.pt", weights_only=True)["config"]["adam_eps"] == 1e-6
    r = run_fork(fork, char_data, tmp_path / "ref", "--max_iters=4", "--eval_interval=2", "--adam_eps=1e-7",
                 expect_rc=1)
    assert r.stderr.count("\n") == 1 and "holds another run" in r.stderr and "adam_eps=1e-06 there, 1e-07 here" \
        in r.stderr
    r = run_in_process("inherit.py", [f"--init_from={tmp_path / 'ref'}", "--n_layer=1", "--device=cpu",
                                      f"--out_dir={tmp_path / 'student'}"])
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "student" / "ckpt.pt", weights_only=True)["config"]["adam_eps"] == 1e-6
    r = run_fork(fork, char_data, tmp_path / "student", "--init_from=resume", "--n_layer=1", "--max_iters=1",
                 "--eval_interval=1")
    assert '"adam_eps": 1e-06' in r.stdout  # the student trains with it


def test_a_key_the_script_assigns_is_refused_before_any_work(char_data, tmp_path):
    fork = fork_of_train_py(tmp_path, "beta2 = 0.95  # [0, 1)",
                            'optimizer = "adamw"  # a fork\'s new flag, named as a variable')
    lines = fork.read_text().splitlines()
    default, again = (next(i for i, text in enumerate(lines, 1) if text.startswith(start))
                      for start in ('optimizer = "adamw"', "optimizer = make_optimizer("))
    r = run_fork(fork, char_data, tmp_path / "out", "--max_iters=1", expect_rc=1)
    assert r.stderr.strip() == f"error: {fork}:{again} assigns optimizer, a config key (its default at line " \
        f"{default}): the script would overwrite --optimizer; rename the script's variable or the key"
    assert r.stdout == "" and not (tmp_path / "out").exists()


def test_an_eval_metric_of_any_json_shape_is_logged_whole(char_data, tmp_path):
    fork = fork_of_train_py(tmp_path, "EVAL_METRICS = [split_losses, val_distillation]",
                            'EVAL_METRICS.append(lambda: {"per_layer": [0.5, 1.5], "probe": {"depth": {"last": 2}}})')
    r = run_fork(fork, char_data, tmp_path / "out", "--max_iters=2", "--eval_interval=2")
    evals = [rec for rec in read_log(tmp_path / "out") if "val_loss" in rec]
    assert [(rec["per_layer"], rec["probe"]) for rec in evals] == [([0.5, 1.5], {"depth": {"last": 2}})] * 2
    assert "per_layer: 2 in log.jsonl | probe: 1 in log.jsonl" in r.stdout


def test_wandb_gets_every_metric_flattened(tmp_path, monkeypatch):
    logged = []
    run_of = types.SimpleNamespace(log=lambda numbers, step: logged.append((step, numbers)), finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **settings: run_of))
    rundir = run.RunDir(str(tmp_path), types.SimpleNamespace(master=True), wandb=("project", "name"))
    rundir.start_log({}, resuming=False)
    rundir.log({"iter": 5, "val_loss": 1.5, "per_layer": [0.5, 1.5], "probe": {"depth": {"last": 2}}, "lr": None})
    assert logged == [(5, {"iter": 5, "val_loss": 1.5, "per_layer/0": 0.5, "per_layer/1": 1.5, "probe/depth/last": 2})]


def test_training_state_keys_are_what_a_checkpoint_holds(char_data, tmp_path):
    # train.py carries every checkpoint key outside TRAINING_STATE_KEYS into the next save: a field a fork adds to
    # save_checkpoint without adding it there would be carried as a stale copy of itself
    import ast

    tree = ast.parse(open(os.path.join(REPO, "train.py")).read())
    keys = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "TRAINING_STATE_KEYS")
    train(char_data, tmp_path, "--max_iters=2", "--eval_interval=2")
    assert sorted(torch.load(tmp_path / "ckpt.pt", weights_only=True)) == sorted(keys)
