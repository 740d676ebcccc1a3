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
from model import GPT, GPTConfig

BOUND_PER_EPS_RTOL = 0.01  # how far bound_q / eps may move while eps moves ~1000x (measured: 0.14%)
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
        assert {k: logged[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)} == {
            k: analyzed[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)}
        assert 1 <= logged["max_rank"] <= 16 and 0 <= logged["eps"] <= 1 and logged["entropy"] > 0
        assert 0 < logged["grad_q"] <= logged["bound_q"] and 0 < logged["grad_k"] <= logged["bound_k"]  # Thm H.1


def analyzed_layers(char_data, out, tmp_path):
    """analyze_rank.py's per-layer records of out's checkpoint, on the windows COLLAPSE's records use."""
    r = run_in_process("analyze_rank.py", [f"--model={out}", f"--data={char_data}/val.bin", "--num_samples=4",
                                           "--seq_len=16", "--seed=1337", f"--out_dir={tmp_path / 'analysis'}",
                                           "--device=cpu"])
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "analysis" / "analysis.json").read_text())["layers"]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_records_under_ddp_and_fsdp_equal_analyze_rank_on_the_checkpoint(char_data, tmp_path, sharding):
    # DDP: rank 0 analyzes its copy; FSDP: every rank takes part in gathering the model on rank 0, which analyzes it
    out = tmp_path / sharding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(char_data, out, *COLLAPSE, "--max_iters=5", "--eval_interval=5",
                      "--gradient_accumulation_steps=2", f"--fsdp={sharding == 'fsdp'}")[1:]]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    records = collapse_records(out)
    assert [(rec["iter"], rec["n_layer"]) for rec in records] == [(0, 2), (5, 2)]  # rank 0 wrote each once
    for logged, analyzed in zip(records[-1]["layers"], analyzed_layers(char_data, out, tmp_path)):
        assert {k: logged[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)} == pytest.approx(
            {k: analyzed[k] for k in ("layer", *analyze_rank.COLLAPSE_KEYS)}, rel=1e-6)
        assert 0 < logged["grad_q"] <= logged["bound_q"] and 0 < logged["grad_k"] <= logged["bound_k"]


def test_resume_writes_each_record_once_and_growth_changes_the_depth(char_data, tmp_path):
    args = [*COLLAPSE, "--n_layer=1", "--grow_every=5", "--grow_init=stack", "--max_layers=4", "--warmup_iters=1",
            "--lr_decay_iters=5", "--eval_interval=5"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=15")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=10")
    train(char_data, tmp_path / "stopped", *args, "--max_iters=15")  # the same command, longer: continues
    straight, resumed = collapse_records(tmp_path / "straight"), collapse_records(tmp_path / "stopped")
    assert [(r["iter"], r["round"], r["n_layer"]) for r in straight] == [(0, 0, 1), (5, 0, 1), (10, 1, 2), (15, 2, 4)]
    assert all(r.pop("seconds") > 0 for r in straight + resumed)  # the analysis' own wall time, which differs
    assert resumed == straight  # none twice, none missing, the same numbers


def test_bad_collapse_settings(char_data, tmp_path):
    r = train(char_data, tmp_path / "never", *COLLAPSE, "--collapse_seq_len=64", "--max_iters=1", expect_rc=1)
    assert "collapse_seq_len=64 is longer than block_size=32" in r.stderr and len(r.stderr.splitlines()) == 1
    r = train(char_data, tmp_path / "never", *COLLAPSE, "--collapse_windows=100000", "--max_iters=1", expect_rc=1)
    assert "fewer than --num_samples=100000" in r.stderr and not (tmp_path / "never").exists()


def sink_collapsed_gpt(boost, C=16, hs=8):
    """A tiny GPT whose layer 0 puts logit `boost` on column 0 and 0 on every other column, in both heads.
    The queries are a constant bias along the head's first axis; the keys are that axis times ln_1(x)[0], which is 0
    for every token but id 0: their embeddings are 0 on dimension 0 and zero-mean, so LayerNorm leaves it 0. With
    token 0 only at position 0 (and no position embedding), row i has A[i, 0] = e^boost / (e^boost + i)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=C, block_size=16, vocab_size=32))
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        wte = model.transformer.wte.weight
        wte[:, 0] = 0
        wte[1:, 1:] -= wte[1:, 1:].mean(1, keepdim=True)
        wte[0] = -1.0 / (C - 1)
        wte[0, 0] = 1.0
        z = model.transformer.h[0].ln_1(wte[0])[0]
        W, b = attn.c_attn.weight, attn.c_attn.bias
        W[:2 * C], b[:2 * C] = 0, 0  # q = b_q, k = W_K x
        for h in range(2):
            W[C + h * hs, 0] = 1.0
            b[h * hs] = boost / (attn.scale * z)
    return model


def thm_h1_bounds(model, windows):
    """[(bound_q, bound_k)] per layer, Thm H.1's bounds as collapse_gradients documents them, computed here in float64
    one window and head at a time: 2 eps scale ||X||_2 ||K||_F ||dL/dA||_F (||Q||_F for W_K), summed; eps the most
    mass a row puts off the first column, X ln_1's output, Q and K X's projections through the head's c_attn rows."""
    w = torch.as_tensor(windows)
    blocks, inputs = model.transformer.h, {}
    hooks = [b.ln_1.register_forward_hook(lambda m, i, out, layer=layer: inputs.update({layer: out.double()}))
             for layer, b in enumerate(blocks)]
    _, loss, atts = model.eval()(w, torch.cat([w[:, 1:], torch.full_like(w[:, :1], -1)], 1), return_attn=True)
    dAs = torch.autograd.grad(loss, atts)
    for hook in hooks:
        hook.remove()
    bounds = []
    for layer, block in enumerate(blocks):
        attn, bound_q, bound_k = block.attn, 0.0, 0.0
        W, b, hs = attn.c_attn.weight.double(), attn.c_attn.bias.double(), attn.head_size
        group = attn.n_head // attn.n_kv_head  # query heads per key head
        for n, X in enumerate(inputs[layer]):
            for h in range(attn.n_head):
                q_rows = slice(h * hs, (h + 1) * hs)
                k_rows = slice((attn.n_head + h // group) * hs, (attn.n_head + h // group + 1) * hs)
                Q, K = X @ W[q_rows].T + b[q_rows], X @ W[k_rows].T + b[k_rows]
                A, dA = atts[layer][n, h].double(), dAs[layer][n, h].double()
                eps = max(A[i, 1:].sum().item() for i in range(len(A)))
                common = 2 * eps * attn.scale * torch.linalg.svdvals(X)[0] * dA.square().sum().sqrt()
                bound_q += (common * K.square().sum().sqrt()).item()
                bound_k += (common * Q.square().sum().sqrt()).item()
        bounds.append((bound_q, bound_k))
    return bounds


def test_thm_h1_bounds_equal_a_float64_computation_head_by_head():
    # rotary (the keys' Frobenius norm is rotation-invariant), grouped-query heads, logits scaled by the layer, biases;
    # in float64, so the two computations agree to float64 rounding
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=16, block_size=16, vocab_size=32, bias=True,
                          pos_emb="rope", scale_attn_by_inverse_layer_idx=True)).double()
    windows = torch.randint(0, 32, (3, 12), generator=torch.Generator().manual_seed(2))
    records = analyze_rank.collapse_gradients(model, windows.numpy())
    for rec, (bound_q, bound_k) in zip(records, thm_h1_bounds(model, windows)):
        assert (rec["bound_q"], rec["bound_k"]) == pytest.approx((bound_q, bound_k), rel=1e-12, abs=0)


def test_collapse_gradients_obey_thm_h1_and_vanish_with_eps():
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(1, 32, (4, 16), generator=g)
    windows[:, 0] = 0  # attention over 16 positions: eps = 15 / (e^boost + 15), from row 15
    layer0 = []
    for boost in (2.0, 5.0, 10.0):
        model = sink_collapsed_gpt(boost)
        records = analyze_rank.collapse_gradients(model, windows.numpy())
        rec = records[0]
        assert rec["eps"] == pytest.approx(15 / (math.exp(boost) + 15), rel=1e-5)
        atts = list(model.iter_attentions(windows))  # the windows' attentions, as analyze_rank measures them
        assert [r["eps"] for r in records] == [analyze_rank.entropy_and_eps(a)[1].max().item() for a in atts]
        assert (analyze_rank.layer_metrics(atts[0])[0] == 1).all()  # k* = 1: collapsed
        for r, (bound_q, bound_k) in zip(records, thm_h1_bounds(model, windows)):
            assert (r["bound_q"], r["bound_k"]) == pytest.approx((bound_q, bound_k), rel=1e-6)  # float32 model
            assert 0 < r["grad_q"] <= r["bound_q"] and 0 < r["grad_k"] <= r["bound_k"]  # in every layer
        layer0.append(rec)
    # the bound is proportional to eps: eps falls ~1000x from boost 2 to 10, bound_q / eps stays within the tolerance
    per_eps = [r["bound_q"] / r["eps"] for r in layer0]
    assert max(per_eps) / min(per_eps) < 1 + BOUND_PER_EPS_RTOL, per_eps
    grads_q = [r["grad_q"] for r in layer0]
    assert grads_q[0] > grads_q[1] > grads_q[2] and grads_q[2] < 1e-2 * grads_q[0]
    assert layer0[2]["grad_k"] < 1e-2 * layer0[0]["grad_k"]


def test_collapse_gradients_equal_autograd_and_leave_the_model_alone():
    # rotary, grouped-query attention, scaled logits and dropout: measured in eval mode, the mode given back
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=16, block_size=16, vocab_size=32, dropout=0.5,
                          pos_emb="rope", scale_attn_by_inverse_layer_idx=True))
    windows = torch.randint(0, 32, (3, 12), generator=torch.Generator().manual_seed(2))
    records = analyze_rank.collapse_gradients(model, windows.numpy())
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    _, loss = model(windows[:, :-1], windows[:, 1:].contiguous())
    grads = torch.autograd.grad(loss, [b.attn.c_attn.weight for b in model.transformer.h])
    for rec, grad in zip(records, grads):
        assert set(rec) == {"layer", "grad_q", "grad_k", "bound_q", "bound_k", "eps"}
        assert rec["grad_q"] == pytest.approx(grad[:16].norm().item(), rel=1e-4)
        assert rec["grad_k"] == pytest.approx(grad[16:24].norm().item(), rel=1e-4)
        assert rec["grad_q"] <= rec["bound_q"] and rec["grad_k"] <= rec["bound_k"] and 0 < rec["eps"] <= 1
