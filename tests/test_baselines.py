"""The paper's baselines (App. D): knowledge distillation in train.py, stacking as growth on a fixed schedule,
half-width inheritance (inherit.shrink_width, inherit.py --n_embd / --n_head, train.py init_from='inherit'), and
their bad inputs."""

import dataclasses
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import compare
from inheritune.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import REPO, read_log, run_in_process, train
from inheritune.data import TrainBatches, eval_offsets, load_meta, open_tokens, windows_to_batch
from inherit import DEFAULTS as INHERIT_DEFAULTS
from inherit import InheritError, grow, parse_layers, shrink_width, width_config
from inherit import main as inherit_main
from model import GPT, GPTConfig

LLAMA_SHAPE = dict(norm="rmsnorm", mlp="swiglu", pos_emb="rope", n_kv_head=2, tie_embeddings=False, bias=False,
                   qkv_bias=True, intermediate_size=48)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=96, n_layer=3, n_head=4, n_embd=32, bias=True) | kw
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # norms and biases at random too: a dropped or swapped one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save(model, path, config=None):
    save_checkpoint({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                     "config": config or {}}, str(path))
    return str(path)


# -- half-width -------------------------------------------------------------------------------------------------

def expected_slice(name, tensor, ref, n_embd, n_head):
    """What the half-width model's tensor `name` must be, written out per tensor from the reference's layout."""
    cfg, hd = ref.config, ref.config.head_size
    kv = cfg.kv_heads * n_head // cfg.n_head
    width = cfg.mlp_width * n_embd // cfg.n_embd
    if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
        q_end, k_start, v_start = n_head * hd, cfg.n_head * hd, (cfg.n_head + cfg.kv_heads) * hd
        rows = torch.cat([tensor[:q_end], tensor[k_start:k_start + kv * hd], tensor[v_start:v_start + kv * hd]])
        return rows[:, :n_embd] if rows.dim() == 2 else rows
    if name.endswith("attn.c_proj.weight"):
        return tensor[:n_embd, :n_head * hd]
    if name.endswith(("mlp.c_fc.weight", "mlp.c_gate.weight")):
        return tensor[:width, :n_embd]
    if name.endswith(("mlp.c_fc.bias", "mlp.c_gate.bias")):
        return tensor[:width]
    if name.endswith("mlp.c_proj.weight"):
        return tensor[:n_embd, :width]
    if name in ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"):
        return tensor[:, :n_embd]
    assert tensor.dim() == 1, name  # norms, output-projection biases: model-width vectors
    return tensor[:n_embd]


@pytest.mark.parametrize("shape", [{}, LLAMA_SHAPE], ids=["gpt2", "llama-gqa"])
def test_half_width_keeps_slices_of_every_tensor(shape):
    ref = tiny(**shape)
    half = shrink_width(ref, n_embd=16, n_head=2)
    cfg = half.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size) == (3, 16, 2, 8)
    assert cfg.kv_heads == (1 if shape else 2) and cfg.mlp_width == (24 if shape else 64)
    ref_sd, half_sd = ref.state_dict(), half.state_dict()
    assert half_sd.keys() == ref_sd.keys()
    for name, tensor in half_sd.items():
        assert torch.equal(tensor, expected_slice(name, ref_sd[name], ref, 16, 2)), name
    assert (half.lm_head.weight is half.transformer.wte.weight) == (not shape)  # tied as the reference
    idx = torch.randint(0, 96, (2, 16))
    logits, _ = half(idx)  # a working model of the narrower shape
    assert logits.shape == (2, 16, 96) and torch.isfinite(logits).all()


def test_half_width_derives_the_other_size_from_the_head_size():
    ref = tiny()
    assert width_config(ref.config, n_embd=16).n_head == 2
    assert width_config(ref.config, n_head=1).n_embd == 8


@pytest.mark.parametrize("shape,kw,message", [
    ({}, dict(n_embd=12), "not a multiple of the head size 8"),
    ({}, dict(n_embd=16, n_head=4), "gives heads of 4 dimensions, not the source's 8"),
    ({}, dict(n_head=8), "at most the source's n_embd=32, n_head=4"),
    (LLAMA_SHAPE, dict(n_head=1), "does not keep whole groups of the 2 key/value heads"),
    (LLAMA_SHAPE | dict(n_kv_head=0, intermediate_size=50), dict(n_head=1),
     "does not keep a whole number of the 50 MLP units"),
])
def test_half_width_sizes_that_do_not_divide(shape, kw, message):
    with pytest.raises(InheritError, match=message):
        shrink_width(tiny(**shape), **kw)


def run_inherit(*args):
    return run_in_process("inherit.py", [*args, "--device=cpu"])


def test_half_width_refuses_a_model_field_it_does_not_know():
    # a fork's new GPTConfig field (here a QK-norm flag and its weights): refused when set, never narrowed wrongly
    @dataclasses.dataclass
    class ForkConfig(GPTConfig):
        qk_norm: bool = False

    model = GPT(ForkConfig(n_layer=1, n_head=4, n_embd=32, block_size=8, vocab_size=16, qk_norm=True))
    with pytest.raises(InheritError, match="cannot narrow a model with qk_norm=True: .*inherit.WIDTH_FIELDS"):
        shrink_width(model, n_embd=16)
    model = GPT(ForkConfig(n_layer=1, n_head=4, n_embd=32, block_size=8, vocab_size=16))
    model.transformer.h[0].attn.register_parameter("q_norm", torch.nn.Parameter(torch.ones(8)))
    with pytest.raises(InheritError, match="cannot narrow transformer.h.0.attn.q_norm: inherit.WIDTH_AXES"):
        shrink_width(model, n_embd=16)


def test_inherit_py_half_width(tmp_path):
    ref = tiny()
    source = save(ref, tmp_path / "ref.pt")
    r = run_inherit(f"--init_from={source}", "--n_embd=16", "--n_head=2", f"--out_dir={tmp_path / 'half'}")
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(str(tmp_path / "half"))
    half = model_from_checkpoint(ckpt)
    assert (half.config.n_layer, half.config.n_embd, half.config.n_head) == (3, 16, 2)  # full depth, half width
    assert ckpt["inherit"]["layers"] == [0, 1, 2] and ckpt["inherit"]["source_width"] == [32, 4]
    assert ckpt["config"]["n_embd"] == 16 and ckpt["config"]["n_head"] == 2
    for name, tensor in half.state_dict().items():
        assert torch.equal(tensor, expected_slice(name, ref.state_dict()[name], ref, 16, 2)), name
    r = run_inherit(f"--init_from={source}", "--n_embd=12", f"--out_dir={tmp_path / 'never'}")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "n_embd=12 is not a multiple of the head size 8" in r.stderr
    for bad, message in ((dict(n_head=8), "at most the source's"), (dict(n_embd=0), "n_embd=0, n_head=0 must be")):
        with pytest.raises(InheritError, match=message):
            inherit_main(INHERIT_DEFAULTS | dict(init_from=source, out_dir=str(tmp_path / "never"), device="cpu") | bad)
    assert not (tmp_path / "never").exists()


def test_train_py_inherits_half_width_and_refuses_another_vocabulary(char_data, tmp_path):
    ref = tiny(vocab_size=96, n_layer=2)
    source = save(ref, tmp_path / "ref.pt")
    out = tmp_path / "half"
    train(char_data, out, "--init_from=inherit", f"--reference={source}", "--n_layer=2", "--n_embd=16", "--n_head=2",
          "--max_iters=1", "--eval_interval=1")
    ckpt = load_checkpoint(str(out))
    assert (ckpt["model_args"]["n_embd"], ckpt["model_args"]["n_head"], ckpt["model_args"]["n_layer"]) == (16, 2, 2)
    small_vocab = save(tiny(vocab_size=64), tmp_path / "small.pt")  # the data has 84 token ids
    r = train(char_data, tmp_path / "never", "--init_from=inherit", f"--reference={small_vocab}", "--n_layer=2",
              "--n_embd=16", "--max_iters=1", expect_rc=1)
    assert "has a vocabulary of 84 ids but the model only 64" in r.stderr
    assert not (tmp_path / "never").exists()


# -- stacking: growth on a fixed schedule ------------------------------------------------------------------------

def test_grow_stack_duplicates_every_block_in_order():
    model = tiny()
    stacked = grow(model, 0, "stack")  # grow_by is the depth whatever is passed
    assert stacked.config.n_layer == 6
    for new, old in enumerate([0, 1, 2, 0, 1, 2]):
        for (name, a), b in zip(stacked.transformer.h[new].named_parameters(), model.transformer.h[old].parameters()):
            assert torch.equal(a, b), (new, name)


def test_stacking_in_train_py_duplicates_the_trained_blocks(char_data, tmp_path):
    # Continue mode with the schedule at min_lr=0 once the first round is over: the grown model is not changed by
    # the steps after the growth, so the final checkpoint is the model train.py grew, exactly.
    out = tmp_path / "stack"
    args = ["--n_layer=2", "--grow_every=5", "--grow_mode=continue", "--grow_init=stack", "--max_layers=4",
            "--eval_interval=5", "--warmup_iters=1", "--lr_decay_iters=4", "--min_lr=0.0",
            "--gradient_accumulation_steps=1"]
    train(char_data, out, *args, "--max_iters=5")  # one round: 2 trained layers at iter 5
    trained = model_from_checkpoint(load_checkpoint(str(out)))
    assert trained.config.n_layer == 2
    train(char_data, out, *args, "--max_iters=8")  # the same command, longer: the round end grows
    (grow_event,) = [r for r in read_log(out) if r.get("event") == "grow"]
    assert grow_event["n_layer"] == 4 and grow_event["layers"] == [None] * 4 and grow_event["grow_init"] == "stack"
    grown = model_from_checkpoint(load_checkpoint(str(out)))
    expected = grow(trained, 2, "stack")
    for name, tensor in grown.state_dict().items():
        assert torch.equal(tensor, expected.state_dict()[name]), name
    assert sorted(r["iter"] for r in read_log(out) if "loss" in r) == list(range(8))  # training went on


def test_stacking_needs_no_reference_and_no_target(char_data, tmp_path):
    out = tmp_path / "stack"
    train(char_data, out, "--n_layer=1", "--grow_every=4", "--grow_init=stack", "--max_layers=4", "--max_iters=12",
          "--eval_interval=4", "--warmup_iters=1", "--lr_decay_iters=4", "--gradient_accumulation_steps=1")
    log = read_log(out)
    ends = [r for r in log if r.get("event") == "round_end"]
    assert [(e["iter"], e["n_layer"], e["decision"], e["target_val_loss"]) for e in ends] == [
        (4, 1, "grow", None), (8, 2, "grow", None), (12, 4, "max_iters reached", None)]
    lrs = {r["iter"]: r["lr"] for r in log if "loss" in r}
    assert lrs[4] == lrs[8] == lrs[0]  # restart mode: each round starts its own warmup
    assert load_checkpoint(str(out))["model_args"]["n_layer"] == 4


@pytest.mark.parametrize("args,message", [
    (["--grow_init=reference"], "grow_init='reference' needs a model inherited from a reference"),
    (["--grow_init=copy"], "grow_init='copy' (the top grow_by trained blocks again) works in grow_mode 'continue', "
                           "not 'restart'"),
    (["--grow_init=stack", "--max_layers=0"], "growing without a reference needs max_layers"),
])
def test_bad_fixed_schedules(char_data, tmp_path, args, message):
    r = train(char_data, tmp_path / "never", "--grow_every=4", "--warmup_iters=1", "--max_iters=8", "--max_layers=4",
              *args,
              expect_rc=1)
    assert message in r.stderr and not (tmp_path / "never").exists()


# -- knowledge distillation --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kd_models(tmp_path_factory):
    """A teacher (3 layers, vocabulary 96) and a student (2 layers, vocabulary 90) for the 84-id character data."""
    folder = tmp_path_factory.mktemp("kd")
    teacher = save(tiny(seed=1, vocab_size=96, n_layer=3, n_head=2, bias=False), folder / "teacher.pt")
    student = save(tiny(seed=2, vocab_size=90, n_layer=2, n_head=2, bias=False), folder / "student.pt")
    return teacher, student


def kd_train(char_data, out, *args, expect_rc=0):
    return train(char_data, out, "--gradient_accumulation_steps=1", *args, expect_rc=expect_rc)


def test_kd_loss_equals_a_hand_computed_one(char_data, kd_models, tmp_path):
    teacher_path, student_path = kd_models
    out = tmp_path / "kd"
    kd_train(char_data, out, f"--init_from={student_path}", f"--teacher={teacher_path}", "--kd_alpha=0.3",
             "--kd_temperature=2.0", "--max_iters=1", "--eval_interval=1")
    first = next(r for r in read_log(out) if "loss" in r)
    evals = [r for r in read_log(out) if "val_loss" in r]
    teacher = model_from_checkpoint(load_checkpoint(teacher_path)).eval()
    student = model_from_checkpoint(load_checkpoint(student_path)).eval()
    x, y = TrainBatches(open_tokens(char_data, "train"), 32, 8, 1337).next()  # train.py's first batch
    v = load_meta(char_data)["vocab_size"]
    with torch.no_grad():
        s_logits, t_logits = student(x)[0].double(), teacher(x)[0].double()
    ce = F.cross_entropy(s_logits.reshape(-1, 90), y.reshape(-1))  # over the student's whole vocabulary
    p = torch.softmax(t_logits[..., :v] / 2, -1)  # the KL: over the data's 84 ids, at temperature 2
    q = torch.softmax(s_logits[..., :v] / 2, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    assert first["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert first["kd"] == pytest.approx(kl.item(), rel=1e-4)
    assert first["loss"] == pytest.approx(0.3 * ce.item() + 0.7 * 4 * kl.item(), rel=1e-5)
    # the first eval: val_loss the plain cross-entropy, val_kd the KL, on train.py's 4 x 8 validation windows
    val = open_tokens(char_data, "val")
    xv, yv = windows_to_batch(val, eval_offsets(val, 32, 4, 8, 1337), 32)
    with torch.no_grad():
        s_val, t_val = student(xv)[0].double(), teacher(xv)[0].double()
    pv, qv = torch.softmax(t_val[..., :v] / 2, -1), torch.softmax(s_val[..., :v] / 2, -1)
    assert evals[0]["iter"] == 0
    expected = F.cross_entropy(s_val.reshape(-1, 90), yv.reshape(-1)).item()
    assert evals[0]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert evals[0]["val_kd"] == pytest.approx((pv * (pv.log() - qv.log())).sum(-1).mean().item(), rel=1e-4)
    # a KD step's FLOPs count the teacher's forward pass (a third of its training FLOPs), and compare.py shows the
    # teacher's own training cost apart, as a reference's
    tokens = 8 * 32
    assert evals[1]["flops"] == tokens * (student.flops_per_token(32) + teacher.flops_per_token(32) / 3)
    summary = compare.summarize(str(out))
    assert summary["reference_kind"] == "teacher" and summary["reference"]["note"].startswith("not known: no log.jsonl")


def test_student_equal_to_teacher_has_zero_kd(char_data, kd_models, tmp_path):
    teacher_path, _ = kd_models
    kd_train(char_data, tmp_path / "kd", f"--init_from={teacher_path}", f"--teacher={teacher_path}", "--max_iters=1",
             "--eval_interval=1", "--n_layer=3")  # the teacher's depth: the TINY flags' n_layer=2 would be refused
    first = next(r for r in read_log(tmp_path / "kd") if "loss" in r)
    first_eval = next(r for r in read_log(tmp_path / "kd") if "val_kd" in r)
    assert abs(first["kd"]) <= 1e-7 and abs(first_eval["val_kd"]) <= 1e-7
    assert first["loss"] == pytest.approx(0.6 * first["ce"], abs=1e-6)


def test_kd_alpha_one_trains_bit_identically_to_no_teacher(char_data, kd_models, tmp_path):
    teacher_path, student_path = kd_models
    args = [f"--init_from={student_path}", "--max_iters=6", "--eval_interval=3", "--dropout=0.1"]
    kd_train(char_data, tmp_path / "plain", *args)
    kd_train(char_data, tmp_path / "kd", *args, f"--teacher={teacher_path}", "--kd_alpha=1.0")
    plain, kd = (read_log(tmp_path / run) for run in ("plain", "kd"))
    assert [(r["iter"], r["loss"]) for r in plain if "loss" in r] == [(r["iter"], r["loss"]) for r in kd if "loss" in r]
    assert [r["val_loss"] for r in plain if "val_loss" in r] == [r["val_loss"] for r in kd if "val_loss" in r]
    final = [load_checkpoint(str(tmp_path / run))["model"] for run in ("plain", "kd")]
    for name, tensor in final[0].items():
        assert torch.equal(tensor, final[1][name]), name


def test_kd_resume_is_bit_exact_and_keeps_its_teacher(char_data, kd_models, tmp_path):
    teacher_path, student_path = kd_models
    args = [f"--teacher={teacher_path}", "--eval_interval=4", "--dropout=0.1"]
    kd_train(char_data, tmp_path / "straight", *args, "--max_iters=8")
    kd_train(char_data, tmp_path / "stopped", *args, "--max_iters=5")
    kd_train(char_data, tmp_path / "stopped", "--init_from=resume", "--max_iters=8")  # the teacher from the checkpoint
    straight, resumed = ({r["iter"]: (r["loss"], r["ce"], r["kd"]) for r in read_log(tmp_path / run) if "loss" in r}
                         for run in ("straight", "stopped"))
    assert resumed == straight and sorted(resumed) == list(range(8))
    # the teacher moved: found again by --teacher=; another model in its place: refused
    moved = shutil.copy(teacher_path, tmp_path / "moved.pt")
    kd_train(char_data, tmp_path / "stopped", "--init_from=resume", "--max_iters=9", f"--teacher={moved}")
    other = save(tiny(seed=5, vocab_size=96, n_layer=3, n_head=2, bias=False), tmp_path / "other.pt")
    r = kd_train(char_data, tmp_path / "stopped", "--init_from=resume", "--max_iters=10", f"--teacher={other}",
                 expect_rc=1)
    assert "is not the teacher this run was distilled from" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--kd_alpha=1.5"], "--kd_alpha=1.5 is outside [0, 1]"),
    (["--kd_temperature=0"], "--kd_temperature=0 is outside (0, inf)"),
    (["--teacher={small_vocab}"], "has a vocabulary of 64 ids, fewer than the 84"),
    (["--teacher={short_context}"], "has a context of 16 tokens, shorter than block_size=32"),
    (["--teacher={missing}"], "teacher='"),
])
def test_kd_bad_input(char_data, kd_models, tmp_path, args, message):
    paths = dict(small_vocab=save(tiny(vocab_size=64), tmp_path / "small.pt"),
                 short_context=save(tiny(block_size=16), tmp_path / "short.pt"), missing=tmp_path / "none.pt")
    teacher_path, _ = kd_models
    r = kd_train(char_data, tmp_path / "never", f"--teacher={teacher_path}", "--max_iters=2",
                 *[a.format(**paths) for a in args], expect_rc=1)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "never").exists()


# -- the paper's baseline configs ----------------------------------------------------------------------------------

GPT2_SHAPES = {"gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25)}


@pytest.mark.parametrize("name", ["half_width", "hybrid_stack", "stack"])
@pytest.mark.parametrize("size", ["medium", "large", "xl"])
def test_baseline_configs_fit_the_paper_shapes(name, size):
    cfg = {}
    with open(os.path.join(REPO, "config", f"{name}_gpt2_{size}.py")) as f:
        exec(f.read(), cfg)
    depth, width, heads = GPT2_SHAPES[f"gpt2-{size}"]
    inheritune_depth = {"medium": 16, "large": 18, "xl": 24}[size]  # the final depths of config/inherit_gpt2_*.py
    if name == "stack":
        assert cfg["n_layer"] * 2 == cfg["max_layers"] == inheritune_depth and cfg["max_iters"] == 2 * cfg["grow_every"]
        return
    reference = GPTConfig(n_layer=depth, n_embd=width, n_head=heads, vocab_size=50257)
    layers = parse_layers(cfg.get("inherit_layers", ""), cfg["n_layer"] if name == "half_width" else None, depth)
    if name == "hybrid_stack":
        half = inheritune_depth // 2
        assert layers == list(range(half)) * 2
    else:
        assert layers == list(range(depth)) and width_config(reference, cfg["n_embd"], cfg["n_head"]).head_size == 64
