"""Attention collapse watched during training (train.py --collapse_every): analyze_rank.py's own metrics, logged per
layer on fixed val windows, equal to analyze_rank.py on the checkpoint; through growth and resume; bad input."""

import json
import math
import subprocess
import sys

import pytest
import torch

import analyze_rank
from conftest import REPO, read_log, run_in_process, train, train_cmd

COLLAPSE = ["--collapse_every=5", "--collapse_windows=4", "--collapse_seq_len=16", "--gradient_accumulation_steps=1"]


def collapse_records(out_dir):
    return [r for r in read_log(out_dir) if r.get("event") == "collapse"]


def test_entropy_and_eps_on_hand_checked_matrices():
    # row i of a causal matrix: 1 - e on the first column, e spread over the others it sees; the uniform matrix
    T, e = 4, 0.1
    A = torch.zeros(T, T, dtype=torch.float64)
    A[0, 0] = 1.0
    for i in range(1, T):
        A[i, 0], A[i, 1:i + 1] = 1 - e, e / i
    entropy, eps = analyze_rank.entropy_and_eps(A)
    rows = [0.0] + [-(1 - e) * math.log(1 - e) - e * math.log(e / i) for i in range(1, T)]
    assert eps.item() == pytest.approx(e) and entropy.item() == pytest.approx(sum(rows) / T)
    uniform = torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    entropy, eps = analyze_rank.entropy_and_eps(uniform)
    assert eps.item() == pytest.approx(1 - 1 / T) and entropy.item() == pytest.approx(
        sum(math.log(i) for i in range(1, T + 1)) / T)


def test_records_equal_analyze_rank_on_the_checkpoint(char_data, tmp_path):
    out = tmp_path / "run"
    train(char_data, out, *COLLAPSE, "--max_iters=10", "--eval_interval=10")
    records = collapse_records(out)
    assert [(r["iter"], r["n_layer"], r["round"], len(r["layers"])) for r in records] == [(0, 2, 0, 2), (5, 2, 0, 2),
                                                                                           (10, 2, 0, 2)]
    for logged, analyzed in zip(records[-1]["layers"], analyzed_layers(char_data, out, tmp_path)):
        assert logged == {k: analyzed[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)}
        assert 1 <= logged["max_rank"] <= 16 and 0 <= logged["eps"] <= 1 and logged["entropy"] > 0


def analyzed_layers(char_data, out, tmp_path):
    """analyze_rank.py's per-layer records of out's checkpoint, on the windows COLLAPSE's records use."""
    r = run_in_process("analyze_rank.py", [f"--model={out}", f"--data={char_data}/val.bin", "--num_samples=4",
                                           "--seq_len=16", "--seed=1337", f"--out_dir={tmp_path / 'analysis'}",
                                           "--device=cpu"])
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "analysis" / "analysis.json").read_text())["layers"]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_records_under_ddp_and_fsdp_equal_analyze_rank_on_the_checkpoint(char_data, tmp_path, sharding):
    # DDP: rank 0 analyzes its copy; FSDP: every rank takes part (the blocks gather their shards in turn)
    out = tmp_path / sharding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(char_data, out, *COLLAPSE, "--max_iters=5", "--eval_interval=5",
                      "--gradient_accumulation_steps=2", f"--fsdp={sharding == 'fsdp'}")[1:]]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    records = collapse_records(out)
    assert [(rec["iter"], rec["n_layer"]) for rec in records] == [(0, 2), (5, 2)]  # rank 0 wrote each once
    for logged, analyzed in zip(records[-1]["layers"], analyzed_layers(char_data, out, tmp_path)):
        assert logged == pytest.approx({k: analyzed[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)}, rel=1e-6)


def test_resume_writes_each_record_once_and_growth_changes_the_depth(char_data, tmp_path):
    args = [*COLLAPSE, "--n_layer=1", "--grow_every=5", "--grow_init=stack", "--max_layers=4", "--warmup_iters=1",
            "--lr_decay_iters=5", "--eval_interval=5"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=15")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=10")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=15")  # the same command, longer: continues
    straight, resumed = collapse_records(tmp_path / "straight"), collapse_records(tmp_path / "stopped")
    assert [(r["iter"], r["round"], r["n_layer"]) for r in straight] == [(0, 0, 1), (5, 0, 1), (10, 1, 2), (15, 2, 4)]
    assert resumed == straight  # none twice, none missing, the same numbers


def test_bad_collapse_settings(char_data, tmp_path):
    r = train(char_data, tmp_path / "never", *COLLAPSE, "--collapse_seq_len=64", "--max_iters=1", expect_rc=1)
    assert "collapse_seq_len=64 is longer than block_size=32" in r.stderr and len(r.stderr.splitlines()) == 1
    r = train(char_data, tmp_path / "never", *COLLAPSE, "--collapse_windows=100000", "--max_iters=1", expect_rc=1)
    assert "fewer than --num_samples=100000" in r.stderr and not (tmp_path / "never").exists()
