"""inherit.py: exact inheritance (our checkpoints and Hugging Face folders), growth inits, the CLI and its errors."""

import dataclasses
import os
import re

import numpy as np
import pytest
import torch

from inheritune.checkpoint import (CheckpointError, load_checkpoint, model_fingerprint, model_from_checkpoint,
                                   save_checkpoint)
from conftest import run_in_process
from inheritune.data import write_meta, write_tokens
from inheritune.source import load_model, load_pretrained
from inherit import InheritError, grow, growth_step, inherit, parse_layers
from model import GPT, GPTConfig


def reference_through(ref, layers, idx):
    """The reference's own forward pass through only blocks[layers], then its final LayerNorm and head."""
    pos = torch.arange(idx.size(1))
    x = ref.transformer.wte(idx) + ref.transformer.wpe(pos)
    for i in layers:
        x, _ = ref.transformer.h[i](x)
    return ref.lm_head(ref.transformer.ln_f(x))


def tiny_reference(n_layer=6, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=64, n_layer=n_layer, n_head=2, n_embd=32, bias=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("layers", [[0, 1, 2], [2, 4], [0, 1, 2, 0, 1, 2], [5, 5, 0]])
def test_student_equals_reference_through_chosen_blocks(layers):
    ref = tiny_reference(bias=False)
    student = inherit(ref, layers).eval()
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(student(idx)[0], reference_through(ref, layers, idx))
    assert student.config.n_layer == len(layers)


def test_prefix_inheritance_equals_truncated_hf_model(make_hf_gpt2):
    from transformers import GPT2LMHeadModel

    folder = make_hf_gpt2(n_layer=5, n_head=3, n_embd=48)
    student = inherit(load_pretrained(folder).eval(), parse_layers("", 3, 5)).eval()
    truncated = GPT2LMHeadModel.from_pretrained(folder).eval()
    truncated.transformer.h = truncated.transformer.h[:3]
    truncated.config.n_layer = 3
    idx = torch.randint(0, 96, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = truncated(idx).logits
        ours = student(idx)[0]
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_fresh_parts_are_not_copied():
    ref = tiny_reference()
    student = inherit(ref, [0, 1], fresh=["wpe", "ln_f"])
    assert not torch.equal(student.transformer.wpe.weight, ref.transformer.wpe.weight)
    assert torch.equal(student.transformer.ln_f.weight, torch.ones(32))  # LayerNorm's fresh init
    assert torch.equal(student.transformer.wte.weight, ref.transformer.wte.weight)
    assert student.lm_head.weight is student.transformer.wte.weight  # still tied


def test_block_size_crop():
    student = inherit(tiny_reference(), [0], block_size=16)
    assert student.config.block_size == 16 and student.transformer.wpe.weight.shape == (16, 32)
    with pytest.raises(InheritError, match="longer than the reference's context"):
        inherit(tiny_reference(), [0], block_size=64)


def test_grow_identity_keeps_the_function():
    model = inherit(tiny_reference(), [0, 1, 2]).eval()
    grown = grow(model, 2, "identity").eval()
    idx = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        assert torch.allclose(grown(idx)[0], model(idx)[0], atol=1e-6)
    assert grown.config.n_layer == 5


def test_grow_reference_equals_inheriting_deeper():
    ref = tiny_reference()
    grown = grow(inherit(ref, [0, 1, 2]), 2, "reference", reference=ref, next_reference_layer=3).eval()
    direct = inherit(ref, [0, 1, 2, 3, 4]).eval()
    for (k, a), (_, b) in zip(grown.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), k


def test_grow_copy_duplicates_top_blocks_and_random_is_fresh():
    ref = tiny_reference()
    model = inherit(ref, [0, 1, 2])
    copied = grow(model, 2, "copy")
    for new, old in ((3, 1), (4, 2)):
        for a, b in zip(copied.transformer.h[new].parameters(), model.transformer.h[old].parameters()):
            assert torch.equal(a, b)
    random = grow(model, 2, "random")
    assert not torch.equal(random.transformer.h[3].attn.c_attn.weight, ref.transformer.h[3].attn.c_attn.weight)
    assert torch.equal(random.transformer.h[2].attn.c_attn.weight, model.transformer.h[2].attn.c_attn.weight)


def test_grow_past_reference_depth_and_bad_init():
    ref = tiny_reference(n_layer=4)
    with pytest.raises(InheritError, match="the reference has 4 blocks"):
        grow(inherit(ref, [0, 1, 2]), 2, "reference", reference=ref, next_reference_layer=3)
    with pytest.raises(InheritError, match="choose from"):
        grow(inherit(ref, [0, 1]), 2, "zeros")


@pytest.mark.parametrize("other,theirs,ours", [(dict(mlp="swiglu"), "mlp.c_gate.weight [128, 32]", "has none"),
                                              (dict(intermediate_size=96), "mlp.c_fc.weight [96, 32]",
                                               "expects [128, 32]")])
def test_a_reference_built_otherwise_is_refused_in_one_line_naming_both_sides(tmp_path, other, theirs, ours):
    # the same (n_layer, n_embd, n_head) as the GPT-2 student's reference, other blocks: growth and checkpoint
    # loading refuse by name and shape (a copy by position would have put a LayerNorm's weight into an MLP matrix)
    student, reference = inherit(tiny_reference(n_layer=4), [0, 1]), tiny_reference(n_layer=4, **other)
    with pytest.raises(InheritError, match=re.escape(f"block 2 of the reference has {theirs}, new block 0 {ours}")):
        grow(student, 2, "reference", reference=reference, next_reference_layer=2)
    with pytest.raises(InheritError, match=re.escape(f"the student of reference blocks [0, 1, 2, 3] has "
                                                     f"transformer.h.0.{theirs}, the growing model {ours}")):
        growth_step(student.config, lambda: student, "reference", "restart", 2, reference, [0, 1])
    save_checkpoint({"model": reference.state_dict(), "model_args": dataclasses.asdict(tiny_reference(4).config)},
                    tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'ckpt.pt'} has transformer.h.0.{theirs}, a "
                                                        f"model of its model_args {ours}")):
        load_model(str(tmp_path))


@pytest.mark.parametrize("layers,n_layer,message", [
    ("", 7, "between 1 and the source's depth 6"),
    ("", 0, "between 1 and the source's depth 6"),
    ("0,1,6", None, r"out of range.*indices 0..5"),
    ("0,a", None, "not a comma-separated list"),
])
def test_bad_layer_choices(layers, n_layer, message):
    with pytest.raises(InheritError, match=message):
        parse_layers(layers, n_layer, 6)


def test_default_is_half_depth():
    assert parse_layers("", None, 24) == list(range(12))


# -- the command line ----------------------------------------------------------------------------

def run_inherit(*args):
    return run_in_process("inherit.py", args)


@pytest.fixture
def ref_and_data(tmp_path):
    ref = tiny_reference()
    save_checkpoint({"model": ref.state_dict(), "model_args": dataclasses.asdict(ref.config), "config": {}},
                    str(tmp_path / "ref.pt"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        write_tokens(str(data_dir / f"{split}.bin"), rng.integers(0, 60, n))
    write_meta(str(data_dir), {"tokenizer": "char", "vocab_size": 60, "chars": "x" * 60})
    return ref, tmp_path


def test_cli_writes_trainable_checkpoint_with_reference_loss(ref_and_data):
    ref, tmp = ref_and_data
    out = tmp / "runs" / "student"  # neither folder exists yet: out_dir is always a folder, created as needed
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=2", f"--data_dir={tmp / 'data'}",
                    "--eval_iters=3", "--batch_size=4", f"--out_dir={out}", "--device=cpu")
    assert r.returncode == 0, r.stderr
    assert os.listdir(out) == ["ckpt.pt"] and f"wrote {out / 'ckpt.pt'}" in r.stdout
    ckpt = load_checkpoint(str(out))
    # the run config train.py resumes with: how the student was made, and the data and eval of the target
    assert {k: ckpt["config"][k] for k in ("init_from", "n_layer", "inherit_layers", "block_size", "data_dir",
                                           "eval_iters", "batch_size", "seed")} == dict(
        init_from="inherit", n_layer=2, inherit_layers="0,1", block_size=32, data_dir=str(tmp / "data"), eval_iters=3,
        batch_size=4, seed=1337)
    assert ckpt["inherit"]["layers"] == [0, 1] and ckpt["inherit"]["source_n_layer"] == 6
    student = model_from_checkpoint(ckpt).eval()
    idx = torch.randint(0, 64, (1, 32))
    with torch.no_grad():
        assert torch.equal(student(idx)[0], reference_through(ref, [0, 1], idx))
    # the stored target is the reference's loss on train.py's validation windows
    from inheritune.data import eval_offsets, evaluate_loss, open_tokens
    import contextlib

    val = open_tokens(str(tmp / "data"), "val")
    expected = evaluate_loss(ref, val, eval_offsets(val, 32, 3, 4, 1337), 32, 4, "cpu", contextlib.nullcontext())
    assert ckpt["inherit"]["reference_val_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--n_layer=9"], "between 1 and the source's depth 6"),
    (["--layers=0,12"], "out of range"),
    (["--n_layer=auto"], "needs --analysis"),
    (["--nlayer=2"], "unknown config key 'nlayer'.*n_layer"),
    (["--eval_iters=0"], r"--eval_iters=0 is outside \[1, inf\)"),
    (["--device=tpu"], "device='tpu'"),
    (["--out_dir=student.pt"], "ends in .pt, but out_dir is a folder"),
])
def test_cli_bad_input(ref_and_data, args, message):
    _, tmp = ref_and_data
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", f"--out_dir={tmp / 'never'}", *args)
    assert r.returncode != 0
    assert __import__("re").search(message, r.stderr), r.stderr
    assert not (tmp / "never").exists()


def test_cli_vocab_that_does_not_fit(ref_and_data):
    _, tmp = ref_and_data
    write_meta(str(tmp / "data"), {"tokenizer": "gpt2", "vocab_size": 50257})
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", f"--data_dir={tmp / 'data'}", f"--out_dir={tmp / 'never'}")
    assert r.returncode != 0 and "does not fit the reference's (64)" in r.stderr


def test_cli_refuses_to_replace_a_checkpoint(ref_and_data):
    _, tmp = ref_and_data
    out = tmp / "student"
    assert run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=2", f"--out_dir={out}").returncode == 0
    trained = (out / "ckpt.pt").read_bytes()
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=3", f"--out_dir={out}")
    assert r.returncode != 0 and "exists" in r.stderr and "--overwrite=True" in r.stderr
    assert (out / "ckpt.pt").read_bytes() == trained and os.listdir(out) == ["ckpt.pt"]
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=3", f"--out_dir={out}", "--overwrite=True")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(str(out))["inherit"]["layers"] == [0, 1, 2]


def test_model_fingerprint_tells_weights_apart():
    ref = tiny_reference()
    same = model_from_checkpoint({"model": ref.state_dict(), "model_args": dataclasses.asdict(ref.config)})
    assert model_fingerprint(same) == model_fingerprint(ref)
    with torch.no_grad():
        same.transformer.h[3].mlp.c_fc.weight[0, 0] += 1e-3  # one weight of one block
    assert model_fingerprint(same) != model_fingerprint(ref)
    assert model_fingerprint(tiny_reference(seed=1)) != model_fingerprint(ref)


def test_cli_depth_from_an_analysis_of_this_reference_only(ref_and_data):
    from analyze_rank import main as analyze_rank

    ref, tmp = ref_and_data
    report = analyze_rank([f"--model={tmp / 'ref.pt'}", f"--data={tmp / 'data' / 'val.bin'}", "--num_samples=4",
                           "--seq_len=16", "--device=cpu", f"--out_dir={tmp / 'analysis'}"])
    assert report["model_fingerprint"] == model_fingerprint(ref)
    analysis = tmp / "analysis" / "analysis.json"
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=auto", f"--analysis={analysis}",
                    f"--out_dir={tmp / 'auto'}")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(str(tmp / "auto"))["inherit"]["layers"] == list(range(report["suggested_n_layer"]))
    # the same analysis given for another model of the same shape: refused, naming both
    other = tiny_reference(seed=1)
    save_checkpoint({"model": other.state_dict(), "model_args": dataclasses.asdict(other.config)},
                    str(tmp / "other.pt"))
    r = run_inherit(f"--init_from={tmp / 'other.pt'}", "--n_layer=auto", f"--analysis={analysis}",
                    f"--out_dir={tmp / 'never'}")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is an analysis of" in r.stderr and "ref.pt" in r.stderr and "other.pt" in r.stderr
    assert model_fingerprint(other) in r.stderr and report["model_fingerprint"] in r.stderr
    # an analysis without a fingerprint (an older analyze_rank.py, or hand-written) says so
    (tmp / "old.json").write_text('{"model": "out-ref", "suggested_n_layer": 3, "layers": []}')
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=auto", f"--analysis={tmp / 'old.json'}",
                    f"--out_dir={tmp / 'never'}")
    assert r.returncode == 1 and "no model fingerprint" in r.stderr and "'out-ref'" in r.stderr
    (tmp / "bad.json").write_text('{"layers": []}')
    r = run_inherit(f"--init_from={tmp / 'ref.pt'}", "--n_layer=auto", f"--analysis={tmp / 'bad.json'}",
                    f"--out_dir={tmp / 'never'}")
    assert r.returncode != 0 and "suggested_n_layer" in r.stderr
    assert not (tmp / "never").exists()
