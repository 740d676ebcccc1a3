"""FSDP2 in train.py on CPU (gloo, 2 processes): the same losses as DDP, exact resume of sharded checkpoints, resume
on another process count, growth, activation checkpointing, clipping over shards, conversion between the sharded
and the single-file format, atomic sharded saves, bad input.

Runs are shared between tests (module fixtures): each torchrun start costs seconds on the 2-core machine."""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

from inheritune import checkpoint
from inheritune.checkpoint import find_checkpoint, load_checkpoint, save_sharded_checkpoint, to_sharded, to_single
from inheritune.source import load_model
from conftest import REPO, kill_when_writing, read_log, train, train_cmd

RUN = ["--max_iters=20", "--eval_interval=10", "--gradient_accumulation_steps=4", "--grad_clip=0.5"]
TIMINGS = ("tok_per_s", "ms_per_step", "mfu")


def torchrun(char_data, out_dir, *args, nproc=2, expect_rc=0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *train_cmd(char_data, out_dir, *args)[1:]]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect_rc, result.stderr[-3000:] + result.stdout[-3000:]
    return result


def steps(out_dir):
    return {r["iter"]: r for r in read_log(out_dir) if "loss" in r}


def records(out_dir):
    return [{k: v for k, v in r.items() if k not in TIMINGS}
            for r in read_log(out_dir) if r.get("event") != "run_start"]


def flat(obj, prefix=""):
    """{path: leaf} of a nested checkpoint dict (tensors and plain values)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flat(value, f"{prefix}/{i}").items()}
    return {prefix: obj}


def assert_identical(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for key, value in fa.items():
        if torch.is_tensor(value):
            assert value.dtype == fb[key].dtype and torch.equal(value, fb[key]), key
        else:
            assert value == fb[key], key


@pytest.fixture(scope="module")
def runs(char_data, tmp_path_factory):
    """2 processes, the same seed and data: DDP for 20 steps; FSDP for 20 steps; FSDP stopped at 10 (its shards in
    CPU memory), then the same command to 20 with activation checkpointing."""
    root = tmp_path_factory.mktemp("runs")
    torchrun(char_data, root / "ddp", *RUN)
    torchrun(char_data, root / "fsdp", *RUN, "--fsdp=True")
    torchrun(char_data, root / "resumed", *RUN, "--fsdp=True", "--fsdp_cpu_offload=True", "--max_iters=10")
    shutil.copytree(root / "resumed", root / "at10")
    result = torchrun(char_data, root / "resumed", *RUN, "--fsdp=True", "--activation_checkpointing=True")
    assert "continuing the run" in result.stdout and "from its checkpoint at iter 10" in result.stdout
    return root


def test_fsdp_gives_ddps_losses_and_gradient_norms(runs):
    # The same numbers up to float32 rounding: DDP all-reduces each gradient bucket and FSDP reduce-scatters each
    # block's flattened gradients, so the sums over the two ranks are formed in another grouping and order, and a
    # last-bit difference in a gradient (seen: up to 1 ulp of the loss) carries into the next steps.
    ddp, fsdp = steps(runs / "ddp"), steps(runs / "fsdp")
    assert sorted(fsdp) == list(range(20))
    for i in ddp:
        assert fsdp[i]["loss"] == pytest.approx(ddp[i]["loss"], rel=1e-6, abs=0), i
        # the norm clipping uses is of the whole gradient (summed over the shards), as DDP's unsharded one; at
        # grad_clip=0.5 it scales every step's update, so a wrong norm would move the losses as well
        assert fsdp[i]["grad_norm"] == pytest.approx(ddp[i]["grad_norm"], rel=1e-5), i
        assert ddp[i]["grad_norm"] > 0.5
    evals = [[(r["iter"], r["val_loss"]) for r in read_log(runs / run) if "val_loss" in r] for run in ("ddp", "fsdp")]
    assert [i for i, _ in evals[1]] == [0, 10, 20]
    assert [v for _, v in evals[1]] == pytest.approx([v for _, v in evals[0]], rel=1e-6)
    # each process wrote its own shards into the sharded checkpoint; no single file
    assert sorted(os.listdir(runs / "fsdp")) == ["ckpt.dcp", "log.jsonl"]
    assert sorted(os.listdir(runs / "fsdp" / "ckpt.dcp")) == [".metadata", "__0_0.distcp", "__1_0.distcp", "extras.pt"]


def test_fsdp_resume_is_bit_exact(runs):
    # the first half kept its shards in CPU memory, the second recomputed activations: neither changes a number
    assert records(runs / "resumed") == records(runs / "fsdp")
    resumed, straight = load_checkpoint(runs / "resumed"), load_checkpoint(runs / "fsdp")
    assert_identical(*[{k: ckpt[k] for k in ("model", "optimizer", "rng", "sampler", "compute", "iter_num")}
                       for ckpt in (resumed, straight)])


def test_two_process_checkpoint_resumes_on_one_and_on_two(char_data, runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "at10", out)
    at10 = {r["iter"]: r["val_loss"] for r in read_log(out) if "val_loss" in r}[10]
    model, ckpt = load_model(out)  # read by this one process: every shard, consolidated
    from inheritune.data import eval_offsets, evaluate_loss, open_tokens

    val = open_tokens(char_data, "val")
    loss = evaluate_loss(model, val, eval_offsets(val, 32, 4, 8, 1337), 32, 8, "cpu", contextlib.nullcontext())
    assert ckpt["iter_num"] == 10 and loss == pytest.approx(at10, rel=1e-6)
    # on one process (fsdp=True has nothing to shard there: a plain run), which writes ckpt.pt
    r = train(char_data, out, *RUN, "--fsdp=True", "--max_iters=12")
    assert "fsdp=True in a single process (not under torchrun) has nothing to shard" in r.stdout
    assert "written by 2 process(es), this run has 1" in r.stdout and "from its checkpoint at iter 10" in r.stdout
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]
    # and back on two, sharded again
    r = torchrun(char_data, out, *RUN, "--fsdp=True", "--max_iters=14")
    assert "from its checkpoint at iter 12" in r.stdout and sorted(os.listdir(out)) == ["ckpt.dcp", "log.jsonl"]
    assert [r["iter"] for r in read_log(out) if "loss" in r] == list(range(14))
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 14 and len(ckpt["sampler"]) == 2 and ckpt["optimizer"]["state"][0]["step"] == 14


def test_hybrid_sharding_mesh(char_data, runs, tmp_path):
    # fsdp_shard_size=1 of 2 processes: a 2 x 1 (replicate x shard) mesh, gradients all-reduced between replicas
    r = torchrun(char_data, tmp_path / "hsdp", *RUN, "--fsdp=True", "--fsdp_shard_size=1", "--max_iters=10")
    assert "FSDP over a 2 x 1 mesh ('replicate', 'shard')" in r.stdout
    ddp, hsdp = steps(runs / "ddp"), steps(tmp_path / "hsdp")
    assert [hsdp[i]["loss"] for i in range(10)] == pytest.approx([ddp[i]["loss"] for i in range(10)], rel=1e-6)


def test_bf16_compute_keeps_fp32_master_weights(char_data, runs, tmp_path):
    # MixedPrecisionPolicy on CPU (gloo): parameters gathered in bf16 for compute, gradients reduced in fp32, the
    # sharded weights and AdamW state kept in fp32
    torchrun(char_data, tmp_path / "bf16", *RUN, "--fsdp=True", "--dtype=bfloat16", "--max_iters=3",
             "--eval_interval=3")
    fp32, bf16 = steps(runs / "fsdp"), steps(tmp_path / "bf16")
    assert [bf16[i]["loss"] for i in range(3)] == pytest.approx([fp32[i]["loss"] for i in range(3)], abs=5e-3)
    assert [bf16[i]["loss"] for i in range(3)] != [fp32[i]["loss"] for i in range(3)]  # it did compute in bf16
    ckpt = load_checkpoint(tmp_path / "bf16")
    assert {t.dtype for t in ckpt["model"].values()} == {torch.float32}
    assert {t.dtype for s in ckpt["optimizer"]["state"].values() for t in s.values()} == {torch.float32}


def test_sharded_checkpoint_converts_to_single_and_back(runs, tmp_path):
    sharded = load_checkpoint(runs / "fsdp")
    assert {"model", "optimizer", "rng", "sampler", "scaler", "config", "model_args"} <= sharded.keys()
    n_params = len(list(load_model(runs / "fsdp")[0].parameters()))  # the tied embedding / head once
    assert sharded["optimizer"]["state"][0]["step"] == 20 and len(sharded["optimizer"]["state"]) == n_params == 15
    r = subprocess.run([sys.executable, "-m", "inheritune.checkpoint", f"--to_single={runs / 'fsdp'}",
                        f"--out={tmp_path / 'single'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {tmp_path / 'single' / 'ckpt.pt'}", r.stderr
    single = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)
    assert_identical(single, sharded)
    to_sharded(tmp_path / "single", tmp_path / "back")
    assert sorted(os.listdir(tmp_path / "back" / "ckpt.dcp")) == [".metadata", "__0_0.distcp", "extras.pt"]
    assert_identical(load_checkpoint(tmp_path / "back"), single)
    with pytest.raises(checkpoint.CheckpointError, match="holds no sharded checkpoint"):
        to_single(tmp_path / "single", tmp_path / "x")


def test_scripts_read_an_fsdp_run_as_its_single_file(runs, tmp_path):
    # inherit.py (as sample.py, export_hf.py, analyze_rank.py: source.load_model) reads the sharded out_dir
    to_single(runs / "fsdp", tmp_path / "single")
    for src, student in ((runs / "fsdp", "from-sharded"), (tmp_path / "single", "from-single")):
        r = subprocess.run([sys.executable, "inherit.py", f"--init_from={src}", "--layers=1,0",
                            f"--out_dir={tmp_path / student}", "--device=cpu"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    students = [torch.load(tmp_path / s / "ckpt.pt", weights_only=True)["model"]
                for s in ("from-sharded", "from-single")]
    assert_identical(*students)


def test_activation_checkpointing_gives_identical_losses(char_data, tmp_path):
    args = ["--max_iters=4", "--eval_interval=4", "--dropout=0.1"]  # dropout: the recomputation replays its RNG
    train(char_data, tmp_path / "plain", *args)
    train(char_data, tmp_path / "ac", *args, "--activation_checkpointing=True")
    assert records(tmp_path / "ac") == records(tmp_path / "plain")


# -- growth under FSDP ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(char_data, out, "--n_layer=4", "--max_iters=30", "--eval_interval=30", "--learning_rate=3e-3")
    return out


GROW = ["--init_from=inherit", "--n_layer=2", "--grow_every=10", "--eval_interval=10", "--target_val_loss=0.5",
        "--max_iters=20", "--gradient_accumulation_steps=2", "--fsdp=True"]


def test_growth_continue_under_fsdp_matches_ddp(char_data, reference, tmp_path):
    # the grown model is gathered, grown on rank 0, sharded again; its kept parameters keep their AdamW state
    args = [*GROW, f"--reference={reference}", "--grow_mode=continue", "--grow_init=copy"]
    torchrun(char_data, tmp_path / "fsdp", *args)
    torchrun(char_data, tmp_path / "ddp", *args, "--fsdp=False")
    assert [e["n_layer"] for e in read_log(tmp_path / "fsdp") if e.get("event") == "grow"] == [4]
    fsdp, ddp = steps(tmp_path / "fsdp"), steps(tmp_path / "ddp")
    assert sorted(fsdp) == list(range(20))
    assert [fsdp[i]["loss"] for i in fsdp] == pytest.approx([ddp[i]["loss"] for i in ddp], rel=1e-6)
    state = load_checkpoint(tmp_path / "fsdp")["optimizer"]["state"]
    model = load_model(tmp_path / "fsdp")[0]
    name_of = {p: name for name, p in model.named_parameters()}
    groups = model.configure_optimizers(0.0, 1e-3, (0.9, 0.95), "cpu").param_groups  # ckpt.pt numbers them so
    steps_of = {name_of[p]: int(state[i]["step"]) for i, p in enumerate(p for g in groups for p in g["params"])}
    assert steps_of["transformer.h.1.attn.c_attn.weight"] == 20 and steps_of["transformer.h.3.attn.c_attn.weight"] == 10


def test_growth_restart_under_fsdp(char_data, reference, tmp_path):
    # Algorithm 1: the deeper model is inherited again from the reference (read by rank 0 only) and sharded
    torchrun(char_data, tmp_path / "fsdp", *GROW, f"--reference={reference}", "--grow_mode=restart")
    (grow,) = [e for e in read_log(tmp_path / "fsdp") if e.get("event") == "grow"]
    from inherit import inherit
    from test_grow import val_loss_of

    assert grow["n_layer"] == 4
    assert grow["start_val_loss"] == pytest.approx(val_loss_of(inherit(load_model(reference)[0], [0, 1, 2, 3]),
                                                               char_data), rel=1e-6)
    ckpt = load_checkpoint(tmp_path / "fsdp")
    assert ckpt["model_args"]["n_layer"] == 4 and ckpt["growth"]["layers"] == [0, 1, 2, 3]
    assert all(int(s["step"]) == 10 for s in ckpt["optimizer"]["state"].values())  # a fresh optimizer at 10


def test_llama_inherited_under_fsdp_matches_ddp(char_data, make_hf_family, tmp_path):
    # a Llama reference (rotary positions, grouped-query attention, SwiGLU, an untied head) in sharded safetensors:
    # rank 0 reads the chosen blocks; the growth target is measured with the whole reference, sharded
    folder = make_hf_family("llama", shard="40KB", num_hidden_layers=4)
    args = ["--init_from=inherit", f"--reference={folder}", "--n_layer=2", "--grow_every=10", "--max_iters=10",
            "--eval_interval=10", "--gradient_accumulation_steps=2",
            "--n_embd=32", "--n_head=4"]  # the reference's width (conftest's TINY asks for another: half-width)
    runs = {mode: tmp_path / mode for mode in ("ddp", "fsdp")}
    for mode, out in runs.items():
        torchrun(char_data, out, *args, f"--fsdp={mode == 'fsdp'}")
    ddp, fsdp = (steps(out) for out in runs.values())
    assert [fsdp[i]["loss"] for i in range(10)] == pytest.approx([ddp[i]["loss"] for i in range(10)], rel=1e-6)
    (ddp_end,), (fsdp_end,) = ([r for r in read_log(out) if r.get("event") == "round_end"] for out in runs.values())
    assert fsdp_end["target_val_loss"] == pytest.approx(ddp_end["target_val_loss"], rel=1e-6)
    ckpt = load_checkpoint(runs["fsdp"])
    assert ckpt["model_args"]["pos_emb"] == "rope" and not ckpt["model_args"]["tie_embeddings"]
    assert ckpt["inherit"]["layers"] == [0, 1] and "lm_head.weight" in ckpt["model"]


# -- atomic sharded saves ---------------------------------------------------------------------------------------

KILLED_SHARDED_SAVE = """
import sys, time, torch
sys.path.insert(0, ".")
from inheritune import checkpoint
from inheritune.source import load_model
from torch.distributed.checkpoint import FileSystemWriter
real_write = FileSystemWriter.write_data
def write_then_hang(self, plan, planner):  # write the shards, then hang before the folder is complete
    real_write(self, plan, planner).wait()
    print("writing", flush=True)
    time.sleep(600)
FileSystemWriter.write_data = write_then_hang
model, _ = load_model(sys.argv[1])
checkpoint.save_sharded_checkpoint({"model_args": {}, "iter_num": 99}, sys.argv[1], model)
"""


def test_a_kill_mid_save_leaves_the_previous_sharded_checkpoint(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "fsdp", out)
    before = load_checkpoint(out)
    kill_when_writing(KILLED_SHARDED_SAVE, out)
    assert [p for p in os.listdir(out) if p.startswith("ckpt.dcp.tmp.")]  # the unfinished save, under its own name
    assert_identical(load_checkpoint(out), before)
    # a swap killed between its two renames leaves only the aside copy: still found, and put back by the next save
    os.rename(out / "ckpt.dcp", out / "ckpt.dcp.old")
    assert find_checkpoint(out) == ("sharded", str(out / "ckpt.dcp.old"))
    assert_identical(load_checkpoint(out), before)
    model, _ = load_model(out)
    save_sharded_checkpoint({"model_args": before["model_args"], "iter_num": 21}, out, model)
    assert sorted(os.listdir(out)) == ["ckpt.dcp", "log.jsonl"]  # stale temporaries and the aside copy are gone
    assert load_checkpoint(out)["iter_num"] == 21


FULL_DISK_ON_RANK_1 = """
import errno, os, runpy, sys
sys.path.insert(0, os.getcwd())
from torch.distributed.checkpoint import FileSystemWriter
real_write, saves = FileSystemWriter.write_data, []
def full_disk(self, plan, planner):  # the second save finds rank 1's disk full
    saves.append(plan)
    if len(saves) == 2 and os.environ["RANK"] == "1":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, plan, planner)
FileSystemWriter.write_data = full_disk
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_full_disk_on_one_rank_keeps_the_previous_sharded_checkpoint(char_data, tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "wrapper.py", "w") as f:
        f.write(FULL_DISK_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "wrapper.py"), *train_cmd(char_data, out, "--fsdp=True", "--max_iters=6", "--eval_interval=2",
                      "--gradient_accumulation_steps=2")[1:]]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert ("error: could not save the checkpoint of iter 4 to " f"{out / 'ckpt.dcp'} (No space left on device); the "
            "previous checkpoint (iter 2) is intact") in r.stderr, r.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["ckpt.dcp", "log.jsonl"] and load_checkpoint(out)["iter_num"] == 2


# -- bad input ----------------------------------------------------------------------------------------------------

def test_a_world_size_the_shard_groups_do_not_divide(char_data, tmp_path):
    # refused from the environment torchrun sets, before any process group or work
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="1")
    for args, message in ((["--fsdp_shard_size=3"], "fsdp_shard_size=3 does not divide the 2 processes"),
                          (["--dtype=float16"], "dtype='float16' cannot train under fsdp=True")):
        r = subprocess.run(train_cmd(char_data, tmp_path / "out", "--fsdp=True", *args), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith("error: ") and message in r.stderr
    assert not (tmp_path / "out").exists()


def test_shards_of_another_model_shape_are_named_as_damaged(char_data, runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "fsdp", out)
    extras = torch.load(out / "ckpt.dcp" / "extras.pt", weights_only=True)
    extras["model_args"]["n_embd"] = 64  # the shards are of a 32-wide model
    torch.save(extras, out / "ckpt.dcp" / "extras.pt")
    for cmd in (train_cmd(char_data, out, *RUN, "--init_from=resume", "--max_iters=30"),
                [sys.executable, "sample.py", f"--init_from={out}", "--device=cpu"]):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert f"{out / 'ckpt.dcp'} is damaged (its shards do not fit its model_args: Size mismatch" in r.stderr


def test_half_width_stacking_and_distillation_under_fsdp_match_ddp(char_data, reference, tmp_path):
    # the paper's baselines under FSDP, in one run: a half-width student narrowed on rank 0, grown by stacking
    # (gathered, doubled, sharded again) and distilled from a teacher sharded like it; DDP's losses, as above
    args = ["--init_from=inherit", f"--reference={reference}", "--n_layer=2", "--n_embd=16", "--n_head=1",
            "--grow_every=10", "--grow_init=stack", "--target_val_loss=0.5", "--max_iters=20", "--eval_interval=10",
            "--gradient_accumulation_steps=2", f"--teacher={reference}", "--kd_alpha=0.5", "--fsdp=True"]
    torchrun(char_data, tmp_path / "fsdp", *args)
    torchrun(char_data, tmp_path / "ddp", *args, "--fsdp=False")
    fsdp, ddp = steps(tmp_path / "fsdp"), steps(tmp_path / "ddp")
    assert sorted(fsdp) == sorted(ddp) == list(range(20))
    for key in ("loss", "ce", "kd"):
        assert [fsdp[i][key] for i in fsdp] == pytest.approx([ddp[i][key] for i in ddp], rel=1e-6), key
    assert all(fsdp[i]["kd"] > 0 for i in fsdp)
    (grow,) = [e for e in read_log(tmp_path / "fsdp") if e.get("event") == "grow"]
    assert grow["n_layer"] == 4 and grow["layers"] == [0, 1, 0, 1]
    val_kd = [[r["val_kd"] for r in read_log(tmp_path / run) if "val_kd" in r] for run in ("fsdp", "ddp")]
    assert len(val_kd[0]) == 3 and val_kd[0] == pytest.approx(val_kd[1], rel=1e-6)
    model = load_model(tmp_path / "fsdp")[0]
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (4, 16, 1)
    teacher = load_checkpoint(tmp_path / "fsdp")["distill"]
    assert teacher["teacher_fingerprint"] == checkpoint.model_fingerprint(load_model(reference)[0])
