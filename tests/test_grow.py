"""Inheritune in train.py: init_from='inherit', growth in each mode and init (one process and 2-process DDP),
identity growth keeps the loss, restart equals inheriting deeper directly, resume after a growth, bad input."""

import contextlib
import shutil
import subprocess
import sys

import pytest
import torch

from checkpoint import load_model
from conftest import REPO, read_log, train, train_cmd
from data import eval_offsets, evaluate_loss, open_tokens
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


def test_target_defaults_to_reference_val_loss(char_data, reference, tmp_path):
    out = tmp_path / "grow"
    train(char_data, out, *GROW[:-1], f"--reference={reference}", "--max_iters=10")
    ref_model, _ = load_model(reference)
    expected = val_loss_of(ref_model, char_data)
    assert events(out, "round_end")[0]["target_val_loss"] == pytest.approx(expected, rel=1e-6)


def test_growth_stops_at_reference_depth(char_data, reference, tmp_path):
    out = tmp_path / "grow"
    train(char_data, out, *GROW, f"--reference={reference}", "--n_layer=3", "--max_iters=20")
    (end,) = events(out, "round_end")  # no rounds after growth has stopped
    assert end["decision"] == "growth stops: 3 + 2 layers exceed max depth 4"
    assert not events(out, "grow")


def test_resume_after_growth_is_exact(char_data, reference, tmp_path):
    args = [*GROW, f"--reference={reference}", "--grow_mode=continue", "--grow_init=copy"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=16")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=13")
    train(char_data, tmp_path / "stopped", *args[1:], "--max_iters=16", "--init_from=resume")
    losses = [{r["iter"]: r["loss"] for r in read_log(tmp_path / run) if "loss" in r} for run in ("straight", "stopped")]
    assert losses[0] == losses[1] and len(losses[0]) == 16
    assert torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)["model_args"]["n_layer"] == 4


@pytest.mark.parametrize("args,message", [
    (["--n_layer=5"], "between 1 and the source's depth 4"),
    (["--inherit_layers=0,4"], "out of range"),
    (["--grow_mode=sideways"], "grow_mode='sideways'"),
    (["--grow_init=zeros", "--grow_mode=continue"], "grow_init='zeros'"),
    (["--block_size=64"], "block_size=64 is longer than the model's context of 32"),
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
    # the grown model is recompiled: training goes on at the new depth
    out = tmp_path / "grow"
    train(char_data, out, *GROW, f"--reference={reference}", "--compile=True", "--max_iters=12")
    (grow,) = events(out, "grow")
    assert grow["n_layer"] == 4
    assert [r["iter"] for r in read_log(out) if "loss" in r][-1] == 11
    assert torch.load(out / "ckpt.pt", weights_only=True)["model_args"]["n_layer"] == 4
