"""model.py against Hugging Face transformers' GPT-2: logits, attention paths, export, loading errors; the
config options of the Llama family (their parity with transformers is in test_families.py)."""

import json
import re

import pytest
import torch

from inheritune.hf import ModelLoadError, export_hf
from inheritune.source import load_pretrained
from model import GPT, GPTConfig, gelu_tanh

PARITY_SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32, vocab_size=96, n_positions=64),
    dict(n_layer=3, n_head=3, n_embd=48, vocab_size=101, n_positions=40),  # n_head not a power of two
    dict(n_layer=2, n_head=5, n_embd=40, vocab_size=77, n_positions=33, scale_attn_by_inverse_layer_idx=True),
    dict(n_layer=1, n_head=7, n_embd=56, vocab_size=50257, n_positions=17),  # GPT-2's real vocab size
]


LLAMA_SHAPE = dict(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False,
                   norm="rmsnorm", mlp="swiglu", intermediate_size=48, pos_emb="rope", tie_embeddings=False)
GPT2_SHAPE = dict(block_size=32, vocab_size=50, n_layer=3, n_head=3, n_embd=24)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_logits_match_transformers(make_hf_gpt2, shape):
    from transformers import GPT2LMHeadModel

    folder = make_hf_gpt2(**shape)
    ref = GPT2LMHeadModel.from_pretrained(folder).eval()
    ours = load_pretrained(folder).eval()
    idx = torch.randint(0, shape["vocab_size"], (2, shape["n_positions"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(idx).logits
        logits, loss = ours(idx)
    assert loss is None and logits.shape == expected.shape
    assert rel_err(logits, expected) < 1e-5


def test_pytorch_model_bin_and_prefixless_keys(make_hf_gpt2, tmp_path):
    from safetensors.torch import load_file

    folder = make_hf_gpt2(safetensors=False)
    sd = load_pretrained(folder).state_dict()
    # The same weights saved without the "transformer." prefix (as GPT2Model does) load identically.
    bare = make_hf_gpt2(name="bare")
    hf_sd = load_file(f"{bare}/model.safetensors")
    torch.save({k.removeprefix("transformer."): v for k, v in hf_sd.items()}, f"{bare}/pytorch_model.bin")
    (tmp_path / "bare" / "model.safetensors").unlink()
    sd_bare = load_pretrained(bare).state_dict()
    for k in sd:
        assert torch.equal(sd[k], sd_bare[k]), k


@pytest.mark.parametrize("shape", [GPT2_SHAPE, dict(GPT2_SHAPE, scale_attn_by_inverse_layer_idx=True), LLAMA_SHAPE])
def test_explicit_attention_path_matches_sdpa(shape):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval()
    idx = torch.randint(0, 50, (2, 32))
    with torch.no_grad():
        fast, _ = model(idx)
        explicit, _, atts = model(idx, return_attn=True)
    assert torch.allclose(fast, explicit, atol=1e-5, rtol=1e-5)
    n_head = shape["n_head"]
    assert len(atts) == shape["n_layer"] and atts[0].shape == (2, n_head, 32, 32)
    assert torch.allclose(atts[1].sum(-1), torch.ones(2, n_head, 32))
    assert atts[-1].triu(1).abs().max() == 0  # causal


def test_attention_probabilities_match_transformers_eager(make_hf_gpt2):
    from transformers import GPT2LMHeadModel

    folder = make_hf_gpt2(n_layer=3, n_head=3, n_embd=48, scale_attn_by_inverse_layer_idx=True)
    ref = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = load_pretrained(folder).eval()
    idx = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = ref(idx, output_attentions=True).attentions
        _, _, mine = ours(idx, return_attn=True)
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_export_roundtrip_through_transformers(tmp_path, bias):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=70, n_layer=2, n_head=2, n_embd=16, bias=bias,
                          scale_attn_by_inverse_layer_idx=True)).eval()
    export_hf(model, str(tmp_path / "exported"))
    assert json.load(open(tmp_path / "exported" / "config.json"))["model_type"] == "gpt2"
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
    idx = torch.randint(0, 70, (3, 24))
    with torch.no_grad():
        assert rel_err(hf(idx).logits, model(idx)[0]) < 1e-6
        reloaded = load_pretrained(str(tmp_path / "exported")).eval()
        assert rel_err(reloaded(idx)[0], model(idx)[0]) < 1e-6


def test_sequence_longer_than_block_size_is_refused():
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="longer than block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'gpt3-huge'"):
        load_pretrained("gpt3-huge")


def test_hub_name_offline_fails_fast_with_advice():
    with pytest.raises(ModelLoadError, match="openai-community/gpt2-medium.*pass its path"):
        load_pretrained("gpt2-medium")


def test_folder_without_weights(make_hf_gpt2, tmp_path):
    folder = make_hf_gpt2()
    (tmp_path / "hf-gpt2" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_pretrained(folder)


def test_hf_weights_of_another_shape_are_refused_in_one_line_both_ways(make_hf_gpt2, tmp_path, monkeypatch):
    from inheritune import hf

    folder = make_hf_gpt2()
    model = load_pretrained(folder)
    config = json.loads((tmp_path / "hf-gpt2" / "config.json").read_text())
    (tmp_path / "hf-gpt2" / "config.json").write_text(json.dumps(config | {"n_inner": 64}))  # its weights: 4 * 32
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder}'s weights has transformer.h.0.mlp.c_fc.weight "
                                                       f"[128, 32], a model of its config.json expects [64, 32]")):
        load_pretrained(folder)
    to_hf = hf.state_dict_to_hf  # an export that forgot a tensor is refused before anything is written
    monkeypatch.setattr(hf, "state_dict_to_hf", lambda m: {k: v for k, v in to_hf(m).items() if "ln_f.b" not in k})
    with pytest.raises(ModelLoadError, match=re.escape("our weights in Hugging Face's names has no "
                                                       "transformer.ln_f.bias, transformers' GPT2LMHeadModel "
                                                       "expects [32]")):
        export_hf(model, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", [dict(GPT2_SHAPE, n_layer=2, n_head=2, n_embd=32), LLAMA_SHAPE])
def test_cpu_bf16_autocast_attention_runs_in_fp32(shape):
    # under CPU bf16 autocast, attention is kept in fp32 (faster there): logits stay close to fp32's
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval()
    idx = torch.randint(0, 50, (2, 32))
    with torch.no_grad():
        fp32, _ = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = model(idx)
    assert bf16.dtype == torch.bfloat16
    assert rel_err(bf16.float(), fp32) < 3e-2


def test_compiled_cpu_gelu_form_equals_pytorch_gelu(monkeypatch):
    # under torch.compile on CPU, gelu_tanh is written with a sigmoid: the same function as F.gelu(tanh)
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    expected = torch.nn.functional.gelu(x, approximate="tanh")
    assert torch.equal(gelu_tanh(x), expected)  # eager: PyTorch's kernel itself
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert (gelu_tanh(x) - expected).abs().max().item() < 1e-12
    assert (gelu_tanh(x.float()) - expected).abs().max().item() < 1e-5


def test_model_args_from_before_the_llama_options_build_gpt2():
    # checkpoints store model_args = asdict(GPTConfig); those written before the Llama options load as GPT-2
    old_args = dict(block_size=16, vocab_size=30, n_layer=1, n_head=2, n_embd=8, dropout=0.0, bias=True,
                    scale_attn_by_inverse_layer_idx=False)
    model = GPT(GPTConfig(**old_args))
    assert list(model.state_dict()) == [
        "transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias", "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias", "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight


def test_llama_shape_parameters_and_flops_per_token():
    model = GPT(GPTConfig(**LLAMA_SHAPE))
    assert "wpe" not in model.transformer and model.lm_head.weight is not model.transformer.wte.weight
    C, L, V, I, hd, T = 32, 2, 50, 48, 8, 32
    assert model.transformer.h[0].attn.c_attn.weight.shape == (4 * hd + 2 * 2 * hd, C)  # q, then k and v of 2 heads
    assert model.transformer.h[0].mlp.c_gate.weight.shape == model.transformer.h[0].mlp.c_fc.weight.shape == (I, C)
    per_block = C * (4 * hd + 2 * 2 * hd) + 4 * hd * C + 3 * C * I + 2 * C  # q/k/v, out, gate/up/down, two RMSNorms
    n = L * per_block + C + V * C  # final norm and the untied head; the embedding lookup does no matmul
    assert model.get_num_params() == n
    assert model.flops_per_token(T) == 6 * n + 12 * L * 4 * hd * T


def test_llama_shape_trains_with_dropout():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**LLAMA_SHAPE, dropout=0.1)).train()
    idx = torch.randint(0, 50, (2, 32))
    _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="batchnorm"), "norm='batchnorm': choose from layernorm, rmsnorm"),
    (dict(mlp="relu"), "mlp='relu': choose from gelu, swiglu"),
    (dict(n_head=4, n_kv_head=3, n_embd=32), "n_head=4 is not a multiple of n_kv_head=3"),
    (dict(n_head=3, n_embd=32), "n_embd=32 is not divisible by n_head=3"),
    (dict(pos_emb="rope", rope_scaling={"rope_type": "yarn", "factor": 2.0}), "only Llama 3's is implemented"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_export_refuses_a_model_field_it_does_not_know(tmp_path):
    # a fork's new GPTConfig field, set: the export says it cannot write it instead of dropping it
    import dataclasses

    @dataclasses.dataclass
    class ForkConfig(GPTConfig):
        qk_norm: bool = False

    model = GPT(ForkConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32, qk_norm=True))
    with pytest.raises(ModelLoadError, match="cannot export a model with qk_norm=True: .*hf.EXPORT_FIELDS"):
        export_hf(model, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("decay_embeddings,decayed", [(True, 10), (False, 8)])
def test_weight_decay_on_linear_weights_and_the_embeddings_if_asked(decay_embeddings, decayed):
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", decay_embeddings).param_groups
    name_of = {p: name for name, p in model.named_parameters()}  # wte is also lm_head's weight (tied): one name
    embeddings = {"transformer.wte.weight", "transformer.wpe.weight"}
    linear = {f"{m}.weight" for m, module in model.named_modules() if isinstance(module, torch.nn.Linear)} - {
        "lm_head.weight"}
    assert {name_of[p] for p in decay["params"]} == linear | (embeddings if decay_embeddings else set())
    assert len(decay["params"]) == decayed and (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(name_of)
