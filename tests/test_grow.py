"""Inheritune in train.py: init_from='inherit', growth in each mode and init (one process and 2-process DDP),
identity growth keeps the loss, restart equals inheriting deeper directly, resume after a growth, bad input."""

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from inheritune.source import load_model
from conftest import REPO, read_log, train, train_cmd
from inheritune.data import eval_offsets, evaluate_loss, open_tokens
from inherit import inherit

GROW = ["--init_from=inherit", "--n_layer=2", "--grow_every=10", "--eval_interval=10", "--target_val_loss=0.5"]
MODES = [("restart", "reference"), ("continue", "reference"), ("continue", "copy"), ("continue", "identity"),
         ("continue", "random")]


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    """A 4-layer reference trained briefly on the character-level corpus."""
    out = tmp_path_factory.mktemp("reference")
    train(char_data, out, "--n_layer=4", "--max_iters=30", "--eval_interval=30", "--learning_rate=3e-3")
    return str(out)


def events(out_dir, kind):
    return [r for r in read_log(out_dir) if r.get("event") == kind]


def val_loss_of(model, char_data):
    val = open_tokens(char_data, "val")  # TINY's eval settings: block 32, 4 batches of 8, seed 1337
    return evaluate_loss(model.eval(), val, eval_offsets(val, 32, 4, 8, 1337), 32, 8, "cpu", contextlib.nullcontext())


@pytest.mark.parametrize("mode,init", MODES)
def test_growth_one_process(char_data, reference, tmp_path, mode, init):
    out = tmp_path / "grow"
    train(char_data, out, *GROW, f"--reference={reference}", f"--grow_mode={mode}", f"--grow_init={init}",
          "--max_iters=20")
    (grow,), ends = events(out, "grow"), events(out, "round_end")
    assert [e["decision"] for e in ends] == ["grow", "max_iters reached"]
    assert [e["n_layer"] for e in ends] == [2, 4] and grow["n_layer"] == 4 and grow["iter"] == 10
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["n_layer"] == 4 and ckpt["growth"]["round"] == 1
    assert ckpt["growth"]["layers"] == ([0, 1, 2, 3] if init == "reference" else [0, 1, None, None])
    lr_after = next(r["lr"] for r in read_log(out) if r["iter"] == 10 and "loss" in r)
    if mode == "restart":  # a fresh warmup: step 0 of the new schedule
        assert lr_after == pytest.approx(6e-4 * 1 / 6)
        # the round starts from exactly the model that inheriting 4 blocks directly gives
        ref_model, _ = load_model(reference)
        assert grow["start_val_loss"] == pytest.approx(val_loss_of(inherit(ref_model, [0, 1, 2, 3]), char_data),
                                                       rel=1e-6)
    else:  # the schedule goes on
        assert lr_after < 6e-4 * 6 / 6 and lr_after != pytest.approx(6e-4 / 6)
    if init == "identity":  # zero output projections: the function is unchanged at the moment of growth
        assert grow["start_val_loss"] == pytest.approx(ends[0]["round_val_loss"], abs=1e-5)


@pytest.mark.parametrize("mode,init", MODES)
def test_growth_two_process_ddp(char_data, reference, tmp_path, mode, init):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(char_data, out, *GROW, f"--reference={reference}", f"--grow_mode={mode}",
                      f"--grow_init={init}", "--max_iters=20", "--gradient_accumulation_steps=2")[1:]]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert [e["decision"] for e in events(out, "round_end")] == ["grow", "max_iters reached"]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["n_layer"] == 4 and len(ckpt["sampler"]) == 2


def test_stops_at_target(char_data, reference, tmp_path):
    out = tmp_path / "grow"
    train(char_data, out, *GROW[:-1], f"--reference={reference}", "--target_val_loss=9.0", "--max_iters=40")
    (end,) = events(out, "round_end")
    assert end["decision"] == "target reached" and end["iter"] == 10
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 10
    log = (out / "log.jsonl").read_bytes()
    r = train(char_data, out, *GROW[:-1], f"--reference={reference}", "--target_val_loss=9.0", "--max_iters=40")
    assert "nothing to do" in r.stdout and "reached its target" in r.stdout  # a requeue of the finished run
    assert (out / "log.jsonl").read_bytes() == log


def without_timings(out_dir):
    return [{k: v for k, v in r.items() if k not in ("tok_per_s", "ms_per_step", "mfu")}
            for r in read_log(out_dir) if r.get("event") != "run_start"]


def test_continuing_at_a_round_boundary_writes_each_record_once(char_data, reference, tmp_path):
    args = [*GROW, f"--reference={reference}", "--log_interval=5", "--stop_at_max_depth=False"]  # train on past it
    train(char_data, tmp_path / "straight", *args, "--max_iters=30")
    train(char_data, tmp_path / "run", *args, "--max_iters=20")  # ends at the second round's end
    assert events(tmp_path / "run", "round_end")[-1]["decision"] == "max_iters reached"
    train(char_data, tmp_path / "run", *args, "--max_iters=30")  # the same command, to 30
    # the round at iter 20 ends once, decided as the uninterrupted run decided it, its eval line written once
    assert without_timings(tmp_path / "run") == without_timings(tmp_path / "straight")
    assert [(e["iter"], e["decision"]) for e in events(tmp_path / "run", "round_end")] == [
        (10, "grow"), (20, "growth stops: 4 + 2 layers exceed max depth 4")]
    assert [r["iter"] for r in read_log(tmp_path / "run") if "val_loss" in r] == [0, 10, 20, 30]


def test_inherit_py_then_its_printed_command_grows(char_data, reference, tmp_path):
    # README's chain: inherit.py into a folder that does not exist, then the train.py command it prints (plus
    # growth), with no data, context or schedule flags: those come from what the checkpoint records
    student = tmp_path / "runs" / "student"
    r = subprocess.run([sys.executable, "inherit.py", f"--init_from={reference}", "--n_layer=2",
                        f"--data_dir={char_data}", f"--out_dir={student}", "--device=cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "training settings of the reference run" in r.stdout
    printed = shlex.split(r.stdout.split("train it with: ")[1].split("  (")[0])
    assert printed[:2] == ["python", "train.py"] and f"--data_dir={char_data}" in printed
    assert printed[4:6] == ["--grow_every=7", "--lr_decay_iters=7"]  # rounds of a quarter of the reference's 30 steps
    del printed[4:6]  # to grow in rounds of 10 below
    r = subprocess.run([sys.executable, *printed[1:], "--grow_every=10", "--max_iters=20", "--eval_interval=10"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "warning: lr_decay_iters=100 > grow_every=10" in r.stdout  # the reference run's schedule, warned about
    end = events(student, "round_end")[0]
    assert end["iter"] == 10 and end["decision"] == ("target reached" if end["round_val_loss"] <= end["target_val_loss"]
                                                     else "grow")
    ckpt = torch.load(student / "ckpt.pt", weights_only=True)
    ref_config = torch.load(os.path.join(reference, "ckpt.pt"), weights_only=True)["config"]
    for key in ("block_size", "batch_size", "gradient_accumulation_steps", "learning_rate", "warmup_iters", "seed"):
        assert ckpt["config"][key] == ref_config[key], key  # the reference run's, not train.py's defaults
    # the target is inherit.py's measurement of the reference, made on train.py's own validation windows
    assert end["target_val_loss"] == ckpt["growth"]["target_val_loss"] == ckpt["inherit"]["reference_val_loss"]


def test_target_defaults_to_reference_val_loss(char_data, reference, tmp_path):
    out = tmp_path / "grow"
    train(char_data, out, *GROW[:-1], f"--reference={reference}", "--max_iters=10")
    ref_model, _ = load_model(reference)
    expected = val_loss_of(ref_model, char_data)
    assert events(out, "round_end")[0]["target_val_loss"] == pytest.approx(expected, rel=1e-6)


def test_no_room_to_grow_below_the_reference_depth_is_one_round(char_data, reference, tmp_path):
    r = train(char_data, tmp_path / "grow", *GROW, f"--reference={reference}", "--n_layer=3", "--max_iters=20")
    assert "warning: grow_by=2 cannot grow the 3-layer model once: 2 more layers exceed max depth 4" in r.stdout
    (end,) = events(tmp_path / "grow", "round_end")
    assert (end["iter"], end["decision"]) == (10, "growth stops: 3 + 2 layers exceed max depth 4")
    assert not events(tmp_path / "grow", "grow") and max(r["iter"] for r in read_log(tmp_path / "grow")) == 10


def test_growth_ends_with_the_round_at_max_depth(char_data, reference, tmp_path):
    out, args = tmp_path / "grow", [*GROW, f"--reference={reference}", "--max_iters=40"]
    r = train(char_data, out, *args)
    assert [(e["iter"], e["decision"]) for e in events(out, "round_end")] == [
        (10, "grow"), (20, "growth stops: 4 + 2 layers exceed max depth 4")]
    assert "the run ends with this round" in r.stdout
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 20
    assert "its growth ended at max depth" in train(char_data, out, *args).stdout  # a requeue: nothing to do
    train(char_data, out, *args, "--stop_at_max_depth=False")  # the old behaviour: on at min_lr to max_iters
    assert max(r["iter"] for r in read_log(out) if "loss" in r) == 39
    assert len(events(out, "round_end")) == 2


def test_resume_after_growth_is_exact(char_data, reference, tmp_path):
    args = [*GROW, f"--reference={reference}", "--grow_mode=continue", "--grow_init=copy"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=16")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=13")
    train(char_data, tmp_path / "stopped", *args[1:], "--max_iters=16", "--init_from=resume")
    losses = [{r["iter"]: r["loss"] for r in read_log(tmp_path / run) if "loss" in r}
              for run in ("straight", "stopped")]
    assert losses[0] == losses[1] and len(losses[0]) == 16
    assert torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)["model_args"]["n_layer"] == 4


@pytest.mark.parametrize("args,message", [
    (["--n_layer=5"], "between 1 and the source's depth 4"),
    (["--inherit_layers=0,4"], "out of range"),
    (["--grow_mode=sideways"], "grow_mode='sideways'"),
    (["--grow_init=zeros", "--grow_mode=continue"], "grow_init='zeros'"),
    (["--block_size=64"], "block_size=64 is longer than the model's context of 32"),
    (["--max_layers=3"], "grow_by=2 cannot grow the 2-layer model once: 2 more layers exceed max depth 3 (max_layers"),
    (["--grow_by=5", "--max_layers=4"], "grow_by=5 cannot grow the 2-layer model once: 5 more layers exceed max dep"),
    (["--max_layers=6"], "max_layers=6 is deeper than the reference's 4 blocks"),
    (["--sampling=shuffled"], "sampling='shuffled' is not one of random, epochs"),
])
def test_bad_growth_settings(char_data, reference, tmp_path, args, message):
    r = train(char_data, tmp_path / "x", *GROW, f"--reference={reference}", "--max_iters=10", *args, expect_rc=1)
    assert message in r.stderr


def test_inherit_needs_a_reference(char_data, tmp_path):
    r = train(char_data, tmp_path / "x", *GROW, "--max_iters=10", expect_rc=1)
    assert "init_from='inherit' needs reference=" in r.stderr


def test_resume_with_missing_or_mismatched_reference(char_data, reference, tmp_path):
    ref_copy = tmp_path / "ref"
    shutil.copytree(reference, ref_copy)
    out = tmp_path / "grow"
    train(char_data, out, *GROW, f"--reference={ref_copy}", "--max_iters=5")
    shutil.rmtree(ref_copy)
    r = train(char_data, out, *GROW[1:], "--init_from=resume", "--max_iters=10", expect_rc=1)
    assert "this growing run's reference" in r.stderr and "--reference=" in r.stderr
    other = tmp_path / "other"  # a 6-layer model is not the 4-layer reference the run came from
    train(char_data, other, "--n_layer=6", "--max_iters=1", "--eval_interval=1")
    r = train(char_data, out, *GROW[1:], "--init_from=resume", f"--reference={other}", "--max_iters=10", expect_rc=1)
    assert "is not the one this run was inherited from" in r.stderr


def test_growth_under_compile(char_data, reference, tmp_path):
    # the suite's one CPU compile (a cold one costs half a minute): compiled training, eval and save, and the grown
    # model recompiled, training on at the new depth
    out = tmp_path / "grow"
    train(char_data, out, *GROW, f"--reference={reference}", "--compile=True", "--max_iters=12")
    (grow,) = events(out, "grow")
    assert grow["n_layer"] == 4 and [r["iter"] for r in read_log(out) if "val_loss" in r] == [0, 10, 12]
    assert [r["iter"] for r in read_log(out) if "loss" in r][-1] == 11
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["n_layer"] == 4 and not any("_orig_mod" in k for k in ckpt["model"])


def test_a_new_growth_init_is_one_table_entry(monkeypatch):
    # a fork's init ("copy the bottom block") is one GROW_INITS entry: the checks, growth_step and --help read it
    import inherit
    from inheritune import run
    from model import GPT, GPTConfig

    def bottom_blocks(new, model, reference, next_layer):
        for block in new:
            inherit.copy_block(block, model.transformer.h[0])

    entry = inherit.GrowInit("copies of the bottom block", bottom_blocks, modes=("continue",))
    monkeypatch.setitem(inherit.GROW_INITS, "bottom", entry)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    grown, layers, moved = inherit.growth_step(model.config, lambda: model, "bottom", "continue", 2, None, [0, 1])
    assert grown.config.n_layer == 4 and layers == [0, 1, None, None] and moved["transformer.h.1.ln_1.weight"] == \
        "transformer.h.1.ln_1.weight"
    for i in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(grown.transformer.h[i].parameters(),
                                                     model.transformer.h[0].parameters()))
    cfg = dict(TRAIN_DEFAULTS, grow_every=10, grow_init="bottom", grow_mode="continue", warmup_iters=2)
    assert run.check_settings(cfg, False, inherit.GROW_INITS) is not None
    with pytest.raises(ValueError, match="grow_init='bottom' \\(copies of the bottom block\\) works in grow_mode "
                                         "'continue', not 'restart'"):
        run.check_settings(dict(cfg, grow_mode="restart"), False, inherit.GROW_INITS)


def test_optimizer_state_follows_each_kept_block_to_its_new_place(char_data, reference, tmp_path, monkeypatch):
    # a fork's init that adds each new block above a trained one (trained blocks 0, 1 go to 0, 2): in continue mode
    # every kept parameter keeps its own AdamW moments, wherever the growth put it
    import inherit
    from inheritune import run

    entry = inherit.GrowInit("a fresh block above each trained one", inherit.identity_blocks,
                             kept_at=lambda old_n, grow_by: range(0, 2 * old_n, 2))
    monkeypatch.setitem(inherit.GROW_INITS, "between", entry)
    saved = []  # (n_layer, the optimizer's state by parameter name) of each checkpoint, as it was saved
    monkeypatch.setattr(run, "save_checkpoint", lambda ckpt, path: saved.append((ckpt["model_args"]["n_layer"], {
        name: {k: v.clone() for k, v in ckpt["optimizer"]["state"][i].items()} for i, name in enumerate(
            name for group in ckpt["optimizer"]["param_groups"] for name in group["param_names"])
        if i in ckpt["optimizer"]["state"]})))
    train(char_data, tmp_path, *GROW, f"--reference={reference}", "--grow_mode=continue", "--grow_init=between",
          "--max_iters=11")
    (grow,) = events(tmp_path, "grow")
    assert grow["n_layer"] == 4 and grow["layers"] == [0, None, 1, None]
    before = [state for n_layer, state in saved if n_layer == 2][-1]
    after = next(state for n_layer, state in saved if n_layer == 4)
    assert len(before) == 15 and len(after) == 15  # the new blocks 1 and 3 have no moments yet
    for name, state in before.items():
        new_name = re.sub(r"^transformer\.h\.(\d+)\.", lambda m: f"transformer.h.{2 * int(m.group(1))}.", name)
        assert state.keys() == after[new_name].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[k], after[new_name][k]) for k in state), name
        assert int(state["step"]) == 10


def test_help_and_refusals_list_every_growth_init(char_data, tmp_path):
    import inherit

    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    line = next(line for line in r.stdout.splitlines() if line.lstrip().startswith("--grow_init"))
    assert all(f"{name}: {init.what}" in line for name, init in inherit.GROW_INITS.items())
    r = train(char_data, tmp_path, "--grow_every=10", "--grow_init=nope", expect_rc=1)
    assert "grow_init='nope' is not one of " + ", ".join(inherit.GROW_INITS) in r.stderr


TRAIN_DEFAULTS = dict(learning_rate=6e-4, batch_size=12, block_size=64, gradient_accumulation_steps=1, eval_iters=2,
                      eval_interval=10, log_interval=1, dist_timeout_s=600, n_layer=2, n_head=2, n_embd=16,
                      grow_by=2, max_iters=100, warmup_iters=2, lr_decay_iters=100, min_lr=6e-5, weight_decay=0.1,
                      grad_clip=1.0, vocab_size=0, grow_every=0, max_layers=0, target_val_loss=0.0, fsdp_shard_size=0,
                      dropout=0.0, beta1=0.9, beta2=0.95, dtype="auto", backend="auto", grow_mode="restart",
                      grow_init="reference", fsdp=False, kd_alpha=0.6, kd_temperature=1.0, head_dim=0, decay_lr=True,
                      collapse_every=0, collapse_windows=20, collapse_seq_len=128, sampling="random")
