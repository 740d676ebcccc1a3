"""analyze_rank.py: the paper's metrics on hand-checked and random matrices, our attention vs transformers',
end-to-end runs (a tiny Llama, a GPT built with lazy top layers), the JSON schema and the bad-input errors."""

import json
import os
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import run_in_process

import analyze_rank
from analyze_rank import (AnalysisError, GPTAttentions, HFAttentions, analyze, attention_metrics, draw_windows,
                          layer_metrics, load_attention_model, main, recommend_depth, suggested_depth)
from inheritune.checkpoint import save_checkpoint
from inheritune.data import write_tokens
from inheritune.source import open_source
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 100


def sink_matrix(T):
    A = torch.zeros(T, T)
    A[:, 0] = 1
    return A


def uniform_causal(T):
    A = torch.ones(T, T).tril()
    return A / A.sum(-1, keepdim=True)


def random_attention(shape, T, seed, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*shape, T, T, generator=g) * temperature
    return torch.softmax(scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")), -1)


def numpy_reference(A, tau, eta):
    """k*, m* of one matrix the plain way: float64 SVD and sorted column masses, first k reaching the level."""
    A = np.asarray(A, dtype=np.float64)
    s2 = np.linalg.svd(A, compute_uv=False) ** 2
    k = int(np.argmax(np.cumsum(s2) / s2.sum() >= tau)) + 1
    p = np.sort((A ** 2).sum(0))[::-1] / (A ** 2).sum()
    m = int(np.argmax(np.cumsum(p) >= eta)) + 1
    return k, m


# ---------------------------------------------------------------- the metrics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_checked_matrices(dtype):
    att = torch.stack([sink_matrix(T), uniform_causal(T), torch.eye(T)]).to(dtype)
    k, m, sink = layer_metrics(att)
    assert k.tolist() == [1, 5, 90]  # the identity sits exactly on tau = 0.9: k/T = 0.9 at k = 90
    assert m.tolist() == [1, 30, 90]
    assert sink[0].item() == pytest.approx(1.0) and sink[2].item() == pytest.approx(1 / T)


def test_leading_shape_is_kept():
    att = torch.stack([sink_matrix(T), uniform_causal(T), torch.eye(T)]).expand(2, 3, T, T)
    k, m = attention_metrics(att)
    assert k.shape == m.shape == (2, 3) and k.dtype == torch.int64
    assert k[1].tolist() == [1, 5, 90]


@pytest.mark.parametrize("tau,eta", [(0.9, 0.9), (0.5, 0.75), (0.99, 0.3), (1.0, 1.0)])
def test_random_matrices_match_numpy_reference(tau, eta):
    att = torch.cat([random_attention((8,), 40, seed=1, temperature=t) for t in (0.3, 1.0, 3.0, 10.0)])
    k, m = attention_metrics(att, tau, eta)
    ref = [numpy_reference(a, tau, eta) for a in att.numpy()]
    if tau == 1.0:  # full energy: rounding decides between rank and T, so compare with the tolerance
        assert all(abs(kk - rk) <= 40 for kk, (rk, _) in zip(k.tolist(), ref))
    else:
        assert k.tolist() == [r[0] for r in ref]
    if eta < 1.0:
        assert m.tolist() == [r[1] for r in ref]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_thresholds_outside_unit_interval(bad):
    with pytest.raises(AnalysisError, match="outside"):
        attention_metrics(torch.eye(4), tau=bad)
    with pytest.raises(AnalysisError, match="eta"):
        attention_metrics(torch.eye(4), eta=bad)


def test_recommend_depth_rules():
    def recs(lazy_flags):
        return [dict(layer=i, lazy=f) for i, f in enumerate(lazy_flags)]

    assert recommend_depth(recs([False] * 3 + [True] * 3))[:2] == (3, 3)
    assert recommend_depth(recs([False, True, False, True]))[:2] == (1, 2)  # the first lazy layer decides
    assert recommend_depth(recs([False] * 6))[:2] == (3, 3)  # none lazy: the paper's L/2
    assert recommend_depth(recs([True, True, False]))[:2] == (1, 1)  # never below one layer


def test_suggested_depth_reads_and_rejects(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"suggested_n_layer": 7}))
    assert suggested_depth(str(good)) == 7
    for name, text in [("bad.json", "{not json"), ("nokey.json", "{}"), ("str.json", '{"suggested_n_layer": "7"}'),
                       ("zero.json", '{"suggested_n_layer": 0}'), ("list.json", "[1]")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(AnalysisError, match="rerun"):
            suggested_depth(str(tmp_path / name))
    with pytest.raises(AnalysisError, match="not found"):
        suggested_depth(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------- models


def test_our_attention_matches_transformers_eager(make_hf_gpt2):
    from transformers import AutoModelForCausalLM

    folder = make_hf_gpt2(n_layer=3, n_head=4, n_embd=32, vocab_size=96, n_positions=64)
    ours = load_attention_model(folder, "cpu")
    eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    theirs = HFAttentions(eager, open_source(folder))
    assert isinstance(ours, GPTAttentions) and ours.context == theirs.context == 64
    windows = torch.randint(0, 96, (5, 48), generator=torch.Generator().manual_seed(0)).numpy()
    idx = torch.from_numpy(windows)
    for a, b in zip(ours.layers(idx), theirs.layers(idx), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert torch.equal(attention_metrics(a)[0], attention_metrics(b)[0])
    r1 = analyze(ours, windows, batch_size=2, progress=False)
    r2 = analyze(theirs, windows, batch_size=5, progress=False)
    for l1, l2 in zip(r1, r2, strict=True):
        assert [h["rank"] for h in l1["heads"]] == [h["rank"] for h in l2["heads"]]
        assert [h["mass"] for h in l1["heads"]] == [h["mass"] for h in l2["heads"]]
        assert l1["sink_share"] == pytest.approx(l2["sink_share"], rel=1e-5)


def test_iter_attentions_matches_forward():
    model = lazy_top_gpt()
    idx = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, expected = model(idx, return_attn=True)
        streamed = list(model.iter_attentions(idx))
    assert len(streamed) == len(expected) == 4
    for a, b in zip(streamed, expected):
        assert torch.equal(a, b)


def test_model_without_attention_probabilities_is_refused(make_hf_gpt2):
    from transformers import AutoModelForCausalLM

    folder = make_hf_gpt2()
    sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    sdpa = HFAttentions(sdpa, open_source(folder))
    with pytest.raises(AnalysisError, match="attn_implementation='eager'"):
        analyze(sdpa, np.zeros((2, 8), dtype=np.int64), progress=False)


def lazy_top_gpt(n_layer=4, n_lazy=2, n_head=2, n_embd=32, vocab_size=64, block_size=64):
    """A GPT whose top n_lazy blocks attend only to token 0 (an exact sink), lower blocks near-uniformly.

    Every block's output projections are zero, so each block sees the embeddings. Feature 0 is 10 at position
    0 and 0 elsewhere; the lazy blocks' query is a constant along head dim 0 and their key reads feature 0, so
    the logit of column 0 is ~140 and of any other column ~0.
    """
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd)).eval()
    hs = n_embd // n_head
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wte.weight[:, 0] = 0
        model.transformer.wpe.weight[:, 0] = 0
        model.transformer.wpe.weight[0, 0] = 10
        for block in model.transformer.h[n_layer - n_lazy:]:
            block.attn.c_attn.weight.zero_()
            block.attn.c_attn.bias.zero_()
            for h in range(n_head):
                block.attn.c_attn.bias[h * hs] = 100.0  # query
                block.attn.c_attn.weight[n_embd + h * hs, 0] = 1.0  # key reads feature 0
    return model


def save_as_checkpoint(model, out_dir, config=None):
    os.makedirs(out_dir)
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "config": config or {}},
                    str(out_dir))


def check_schema(report, n_layer, n_head):
    assert isinstance(report["suggested_n_layer"], int) and report["paper_default_n_layer"] == max(1, n_layer // 2)
    assert len(report["layers"]) == n_layer and report["n_layer"] == n_layer
    for i, rec in enumerate(report["layers"]):
        assert rec["layer"] == i and isinstance(rec["lazy"], bool)
        for key in ("max_rank", "mean_rank", "avg_mass", "sink_share"):
            assert isinstance(rec[key], float)
        assert len(rec["heads"]) == n_head
        assert all(set(h) >= {"rank", "mass", "sink_share"} for h in rec["heads"])
        assert rec["max_rank"] == max(h["rank"] for h in rec["heads"])
        assert rec["distance_from_lazy"] == rec["max_rank"] - 1
    keys = {"tau", "eta", "num_samples", "seq_len", "seed", "near_rank_one", "lazy_tolerance"}
    assert keys <= set(report["settings"])
    chosen = [row for row in report["depth_by_tolerance"] if row["chosen"]]
    assert [row["suggested_n_layer"] for row in chosen] == [report["suggested_n_layer"]]


def run_cli(*args):
    return run_in_process("analyze_rank.py", args)


def test_lazy_top_layers_end_to_end(tmp_path):
    save_as_checkpoint(lazy_top_gpt(), tmp_path / "ckpt")
    tokens = np.random.default_rng(0).integers(0, 64, 2000)
    write_tokens(str(tmp_path / "val.bin"), tokens)
    out = tmp_path / "out"
    proc = run_cli(f"--model={tmp_path / 'ckpt'}", f"--data={tmp_path / 'val.bin'}", "--num_samples=8",
                   "--seq_len=32", "--batch_size=3", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "suggested depth for inherit.py: n_layer=2" in proc.stdout
    report = json.loads((out / "analysis.json").read_text())
    check_schema(report, n_layer=4, n_head=2)
    assert report["lazy_layers"] == [2, 3] and report["suggested_n_layer"] == 2
    assert [rec["distance_from_lazy"] for rec in report["layers"][2:]] == [0.0, 0.0]
    assert suggested_depth(str(out / "analysis.json")) == 2
    for rec in report["layers"][2:]:
        assert rec["max_rank"] == 1.0 and rec["avg_mass"] == 1.0 and rec["sink_share"] == pytest.approx(1.0)
    assert all(rec["max_rank"] > 1.5 for rec in report["layers"][:2])
    assert {(h["layer"], h["head"]) for h in report["near_rank_one_heads"]} == {(2, 0), (2, 1), (3, 0), (3, 1)}
    for name in ("heads.csv", "layers.csv", "settings.csv", "max_rank.png", "rank_heatmap.png", "mass_sink.png"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "heads.csv").read_text().splitlines()) == 1 + 4 * 2


def test_tiny_neox_end_to_end(tmp_path):
    # an architecture model.py does not implement goes through transformers (Llama-family folders go through
    # model.py: tests/test_open_models.py)
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, max_position_embeddings=64)
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    write_tokens(str(tmp_path / "val.bin"), np.random.default_rng(1).integers(0, 128, 1000))
    out = tmp_path / "out"
    proc = run_cli(f"--model={tmp_path / 'neox'}", f"--data={tmp_path / 'val.bin'}", "--num_samples=6",
                   "--seq_len=24", "--batch_size=4", "--seed=3", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "analysis.json").read_text())
    check_schema(report, n_layer=3, n_head=4)
    assert report["model_kind"] == "hf"
    # the same windows through transformers directly give the same per-head ranks
    from inheritune.data import open_tokens

    windows = draw_windows(open_tokens(str(tmp_path), "val"), 6, 24, 3)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "neox", attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(torch.from_numpy(windows), output_attentions=True).attentions
    for rec, att in zip(report["layers"], attentions, strict=True):
        k_star, m_star = attention_metrics(att)
        assert [h["rank"] for h in rec["heads"]] == pytest.approx(k_star.double().mean(0).tolist())
        assert [h["mass"] for h in rec["heads"]] == pytest.approx(m_star.double().mean(0).tolist())


def test_text_file_with_char_checkpoint(tmp_path):
    chars = "".join(chr(c) for c in range(32, 96))  # 64 characters
    data_dir = tmp_path / "chardata"
    data_dir.mkdir()
    (data_dir / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": 64, "chars": chars}))
    save_as_checkpoint(lazy_top_gpt(), tmp_path / "ckpt", config={"data_dir": str(data_dir)})
    text = "".join(np.random.default_rng(0).choice(list(chars), 400))
    (tmp_path / "val.txt").write_text(text)
    report = main([f"--model={tmp_path / 'ckpt'}", f"--data={tmp_path / 'val.txt'}", "--num_samples=4",
                   "--seq_len=32", f"--out_dir={tmp_path / 'out'}"])
    assert report["suggested_n_layer"] == 2
    (tmp_path / "bad.txt").write_text("lowercase is not in this vocabulary " * 20)
    with pytest.raises(SystemExit, match="cannot tokenize"):
        main([f"--model={tmp_path / 'ckpt'}", f"--data={tmp_path / 'bad.txt'}", "--num_samples=2", "--seq_len=8"])


def test_text_file_with_gpt2_folder(make_hf_gpt2, tmp_path):
    folder = make_hf_gpt2(vocab_size=50257, n_embd=16)
    (tmp_path / "val.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    report = main([f"--model={folder}", f"--data={tmp_path / 'val.txt'}", "--num_samples=5", "--seq_len=20",
                   f"--out_dir={tmp_path / 'out'}"])
    assert report["model_kind"] == "gpt" and report["n_layer"] == 2


class HandSetAttentions:
    """A 4-layer, 2-head stand-in for a model whose attentions are set by hand from each window's first token b:

    layer 0: the identity (k* = 18 of T = 20 at tau = 0.9); layers 1 and 2: head 0 an exact sink, head 1 rank two
    (half the rows on column 0, half on column 1: k* = 2) when b is odd (layer 1) or b == 1 (layer 2), else a sink;
    layer 3: sinks. On the four windows starting with 0, 1, 2, 3: MaxRank 18, 1.5, 1.25, 1.
    """

    kind, name, context, vocab_size, n_layer, model = "hf", "hand-set", 64, 8, 4, None

    def layers(self, idx):
        T = idx.size(1)
        sink, two = sink_matrix(T), torch.zeros(T, T)
        two[:T // 2, 0] = two[T // 2:, 1] = 1
        first = idx[:, 0].tolist()
        yield torch.eye(T).expand(len(first), 2, T, T)
        for rank_two in ([b % 2 == 1 for b in first], [b == 1 for b in first]):
            yield torch.stack([torch.stack([sink, two if r else sink]) for r in rank_two])
        yield sink.expand(len(first), 2, T, T)

    def tokenizer_meta(self):
        return None


@pytest.fixture
def hand_set_run(tmp_path, monkeypatch):
    """main(args) on HandSetAttentions and four windows of 20 tokens, window i all token i."""
    monkeypatch.setattr(analyze_rank, "load_attention_model", lambda name, device: HandSetAttentions())
    write_tokens(str(tmp_path / "val.bin"), np.repeat(np.arange(4), 20))

    def run(*args):
        return main(["--model=hand-set", f"--data={tmp_path / 'val.bin'}", "--num_samples=4", "--seq_len=20",
                     f"--out_dir={tmp_path / 'out'}", *args])
    return run


def test_lazy_tolerance_relaxes_the_paper_rule(hand_set_run, capsys):
    paper = hand_set_run()
    check_schema(paper, n_layer=4, n_head=2)
    assert [rec["max_rank"] for rec in paper["layers"]] == [18.0, 1.5, 1.25, 1.0]
    assert [rec["distance_from_lazy"] for rec in paper["layers"]] == [17.0, 0.5, 0.25, 0.0]
    assert paper["settings"]["lazy_tolerance"] == 0.0
    assert paper["lazy_layers"] == [3] and paper["suggested_n_layer"] == 3
    assert "lazy layers (MaxRank == 1): [3]" in capsys.readouterr().out
    relaxed = hand_set_run("--lazy_tolerance=0.25")
    assert [rec["lazy"] for rec in relaxed["layers"]] == [False, False, True, True]
    assert relaxed["lazy_layers"] == [2, 3] and relaxed["suggested_n_layer"] == 2
    assert relaxed["layers"][2]["distance_from_lazy"] == 0.25  # distances do not depend on the tolerance
    out = capsys.readouterr().out
    assert "lazy layers (MaxRank <= 1 + 0.25): [2, 3]" in out
    assert "suggested depth for inherit.py: n_layer=2" in out
    assert "   0.25  n_layer=2   (the 2 layers before the first lazy layer (2))  <- this run" in out


def test_depth_by_tolerance_lists_each_setting(hand_set_run, capsys):
    report = hand_set_run("--lazy_tolerance=20")
    rows = [(r["lazy_tolerance"], r["lazy_layers"], r["suggested_n_layer"], r["chosen"])
            for r in report["depth_by_tolerance"]]
    assert rows == [(0.0, [3], 3, False), (0.1, [3], 3, False), (0.25, [2, 3], 2, False),
                    (0.5, [1, 2, 3], 1, False), (20.0, [0, 1, 2, 3], 1, True)]
    assert report["depth_by_tolerance"][-1]["reason"] == "layer 0 is already lazy: the smallest depth, 1"
    assert report["suggested_n_layer"] == 1
    table = capsys.readouterr().out.split("depth by --lazy_tolerance (0: the paper's rule):\n")[1]
    assert len(table.splitlines()) == 5 + 1  # one line per setting, then the paths written
    assert [r["chosen"] for r in hand_set_run("--lazy_tolerance=0.5")["depth_by_tolerance"]] == [0, 0, 0, 1]


def test_no_lazy_layer_falls_back_at_every_tolerance():
    layers = [dict(layer=i, max_rank=r) for i, r in enumerate([3.0, 2.0, 1.75, 1.6])]
    rows = analyze_rank.depth_by_tolerance(layers, 0.0)
    assert [r["suggested_n_layer"] for r in rows] == [2] * 4 and not any(r["lazy_layers"] for r in rows)
    assert rows[0]["reason"] == "no lazy layer: the paper's default L/2" and rows[0]["chosen"]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def small_run(tmp_path):
    """(ckpt dir, .bin path) of a 4-layer GPT with a 64-token context and vocabulary, 640 tokens of data."""
    save_as_checkpoint(lazy_top_gpt(), tmp_path / "ckpt")
    write_tokens(str(tmp_path / "val.bin"), np.arange(640) % 64)
    return str(tmp_path / "ckpt"), str(tmp_path / "val.bin")


@pytest.mark.parametrize("args,message", [
    (["--seq_len=65", "--num_samples=2"], "longer than the model's context of 64"),
    (["--seq_len=32", "--num_samples=21"], "20 non-overlapping windows of 32, fewer than --num_samples=21"),
    (["--tau=0.0"], r"tau=0.0 is outside \(0, 1\]"),
    (["--eta=1.5"], r"eta=1.5 is outside \(0, 1\]"),
    (["--num_samples=0"], r"--num_samples=0 is outside \[1, inf\)"),
    (["--lazy_tolerance=-0.1"], r"--lazy_tolerance=-0.1 is outside \[0, inf\): a layer is lazy when"),
    (["--lazy_tolerance=1e999"], r"--lazy_tolerance=inf is outside \[0, inf\)"),
    (["--lazy_tolerance=lots"], "lazy_tolerance' .* expects float like 0.0, got str 'lots'"),
    (["--data=missing.bin"], "no such file"),
    (["--model=nowhere/really-not-a-model-dir"],  # an org/name Hub id, offline
     "could not get 'nowhere/really-not-a-model-dir' from the Hugging Face Hub"),
    (["--model=/models/Qwen2.5-0.5B"], "no such folder: /models/Qwen2.5-0.5B"),
    (["--model=./qwen-folder"], "no such folder: ./qwen-folder"),
    (["--model=path/to/Qwen2.5-0.5B"], "no such folder: path/to/Qwen2.5-0.5B"),
    (["--model=../gpt2-medium"], "no such folder: ../gpt2-medium"),
])
def test_bad_input_is_a_clear_error(small_run, args, message):
    model, data = small_run
    with pytest.raises(SystemExit, match=message) as e:
        main([f"--model={model}", f"--data={data}", *args])
    assert e.value.code.startswith("error: ") and "\n" not in e.value.code


def test_default_seq_len_fits_the_model_context(small_run, tmp_path, capsys):
    model, data = small_run
    report = main([f"--model={model}", f"--data={data}", "--num_samples=10", f"--out_dir={tmp_path / 'out'}"])
    assert report["settings"]["seq_len"] == 64  # the model's context, not the paper's 100
    assert "note: seq_len=64, the model's context: the paper's 100 does not fit" in capsys.readouterr().err
    long_model = tmp_path / "long"
    save_as_checkpoint(lazy_top_gpt(block_size=128), long_model)
    report = main([f"--model={long_model}", f"--data={data}", "--num_samples=6", f"--out_dir={tmp_path / 'out2'}"])
    assert report["settings"]["seq_len"] == 100
    assert len(json.loads((tmp_path / "out2" / "analysis.json").read_text())["layers"]) == 4
    assert not [f for f in os.listdir(tmp_path / "out2") if ".tmp" in f]


def test_out_dir_is_a_folder_and_a_failed_run_writes_nothing(small_run, tmp_path):
    model, data = small_run
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match="a-file is a file: out_dir is the folder to write"):
        main([f"--model={model}", f"--data={data}", "--num_samples=2", f"--out_dir={tmp_path / 'a-file'}"])
    with pytest.raises(SystemExit, match="fewer than --num_samples=11"):
        main([f"--model={model}", f"--data={data}", "--num_samples=11", f"--out_dir={tmp_path / 'new'}"])
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(small_run):
    model, data = small_run
    with pytest.raises(SystemExit) as e:
        main([f"--model={model}", f"--data={data}", "--device=cuda"])
    assert e.value.code.startswith("error: device='cuda' but ") and "\n" not in e.value.code
    assert "--device=cpu" in e.value.code


def test_token_ids_beyond_vocabulary(small_run, tmp_path):
    model, _ = small_run
    write_tokens(str(tmp_path / "big.bin"), np.full(1000, 100))
    with pytest.raises(SystemExit, match="token id 100 but the model's vocabulary has 64 ids"):
        main([f"--model={model}", f"--data={tmp_path / 'big.bin'}", "--num_samples=2", "--seq_len=10"])


def test_bad_input_exit_status_from_the_command_line(small_run):
    model, data = small_run
    proc = run_cli(f"--model={model}", f"--data={data}", "--seq_len=200")
    assert proc.returncode == 1 and "error: --seq_len=200 is longer than the model's context" in proc.stderr
    proc = run_cli("--taux=0.5")
    assert proc.returncode != 0 and "did you mean tau" in proc.stderr
