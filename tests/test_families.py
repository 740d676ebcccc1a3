"""The Llama family (Llama, Qwen2, Mistral) in model.py and hf.py against transformers' own classes, in float32:
logits, attention probabilities, export round trip, reading only the inherited blocks, and bad inputs."""

import dataclasses
import json
import os

import pytest
import torch

from inheritune import hf
from inheritune.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from inheritune.hf import ModelLoadError, export_hf, gpt_config_from_hf
from inheritune.source import load_pretrained
from model import GPT, GPTConfig

LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)
CASES = {  # tiny random models with odd sizes: (family, factory arguments)
    # GQA 6 -> 2 heads, untied head, Llama 3's rope scaling, sharded safetensors
    "llama-gqa-untied-llama3-sharded": ("llama", dict(
        hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=100, vocab_size=97,
        num_hidden_layers=3, max_position_embeddings=40, rope_theta=500.0, rope_scaling=LLAMA3_ROPE,
        tie_word_embeddings=False, shard="40KB")),
    # multi-head (5 kv heads of 8), tied embeddings, weights stored in bf16
    "llama-tied-bf16": ("llama", dict(
        hidden_size=40, num_attention_heads=5, num_key_value_heads=5, intermediate_size=72, vocab_size=61,
        max_position_embeddings=33, tie_word_embeddings=True, dtype=torch.bfloat16)),
    # q, k, v biases; sliding window on the top layer caps the context at 20
    "qwen2-bias-window": ("qwen2", dict(
        hidden_size=36, num_attention_heads=6, num_key_value_heads=3, intermediate_size=50, vocab_size=83,
        num_hidden_layers=3, tie_word_embeddings=True, use_sliding_window=True, sliding_window=20,
        max_window_layers=2, rope_theta=1e6)),
    # head_dim 12 apart from hidden_size / heads = 8; sliding window 24 < max_position_embeddings
    "mistral-head_dim-window": ("mistral", dict(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=56,
        vocab_size=71, sliding_window=24, max_position_embeddings=64)),
}


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|: the relative error the parity tests bound."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def tokens(vocab_size, T, seed=0, B=2):
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def reference_through(model, layers, idx):
    """model's own forward pass through only blocks[layers], then its final norm and head."""
    x, rope = model.embed(idx), model.rope(idx.size(1), idx.device)
    for i in layers:
        x, _ = model.transformer.h[i](x, rope)
    return model.lm_head(model.transformer.ln_f(x))


@pytest.fixture(params=list(CASES))
def case(request, make_hf_family):
    family, kwargs = CASES[request.param]
    return family, make_hf_family(family, **kwargs)


def test_logits_and_attentions_match_transformers(case):
    from transformers import AutoModelForCausalLM

    family, folder = case
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ours = load_pretrained(folder).eval()
    assert type(ref).__name__ == hf.read_hf_config(folder)["architectures"][0]
    assert all(p.dtype == torch.float32 and p.requires_grad for p in ours.parameters())
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == ref.config.tie_word_embeddings
    idx = tokens(ours.config.vocab_size, ours.config.block_size)
    with torch.no_grad():
        out = ref(idx, output_attentions=True)
        logits, _ = ours(idx)
        explicit, _, attentions = ours(idx, return_attn=True)
    assert rel_err(logits, out.logits) < 1e-5  # max|diff| / max|ref|
    assert rel_err(explicit, out.logits) < 1e-5
    assert len(attentions) == len(out.attentions)
    for mine, theirs in zip(attentions, out.attentions):
        assert mine.shape == (2, ours.config.n_head, idx.size(1), idx.size(1))
        assert (mine - theirs).abs().max().item() < 1e-6


def test_sliding_window_caps_the_context(make_hf_family):
    folder = make_hf_family("mistral", sliding_window=24, max_position_embeddings=64)
    model = load_pretrained(folder)
    assert model.config.block_size == 24
    with pytest.raises(ValueError, match="longer than block_size=24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_export_round_trip(case, tmp_path):
    from transformers import AutoModelForCausalLM

    family, folder = case
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:  # stands for the source's tokenizer files
        f.write('{"stand-in": "tokenizer"}')
    ours = load_pretrained(folder).eval()
    export_hf(ours, str(tmp_path / "exported"), source=folder)
    config = json.load(open(tmp_path / "exported" / "config.json"))
    source_config = hf.read_hf_config(folder)
    for key in ("architectures", "model_type", "bos_token_id", "eos_token_id"):
        assert config[key] == source_config[key], key
    assert open(tmp_path / "exported" / "tokenizer.json").read() == '{"stand-in": "tokenizer"}'
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported"), dtype=torch.float32).eval()
    idx = tokens(ours.config.vocab_size, ours.config.block_size, seed=1)
    with torch.no_grad():
        assert rel_err(theirs(idx).logits, ours(idx)[0]) < 1e-5
    reloaded = load_pretrained(str(tmp_path / "exported"))
    assert reloaded.config == ours.config
    sd, sd_back = ours.state_dict(), reloaded.state_dict()
    assert sd.keys() == sd_back.keys() and all(torch.equal(sd[k], sd_back[k]) for k in sd)


@pytest.mark.parametrize("qkv_bias, arch", [(False, "LlamaForCausalLM"), (True, "Qwen2ForCausalLM")])
def test_export_of_a_model_made_here(tmp_path, qkv_bias, arch):
    # no source folder: the architecture follows the config; config.json also carries transformers 4's rope keys
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False,
                          norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", intermediate_size=40, pos_emb="rope",
                          rope_theta=5e4, rope_scaling=dict(LLAMA3_ROPE), tie_embeddings=False,
                          qkv_bias=qkv_bias)).eval()
    export_hf(model, str(tmp_path / "exported"))
    config = json.load(open(tmp_path / "exported" / "config.json"))
    assert config["architectures"] == [arch] and config["rope_theta"] == 5e4 and config["rope_scaling"] == LLAMA3_ROPE
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
    idx = tokens(50, 24)
    with torch.no_grad():
        assert rel_err(theirs(idx).logits, model(idx)[0]) < 1e-5


@pytest.mark.parametrize("layers", [[2, 0, 2], [1]])
def test_partial_loading_equals_slicing_the_full_model(make_hf_family, layers):
    family, kwargs = CASES["llama-gqa-untied-llama3-sharded"]
    folder = make_hf_family(family, **kwargs)
    full = load_pretrained(folder).eval()
    part = load_pretrained(folder, layers=layers).eval()
    assert part.config == dataclasses.replace(full.config, n_layer=len(layers))
    for j, i in enumerate(layers):
        for (name, p), q in zip(part.transformer.h[j].named_parameters(), full.transformer.h[i].parameters()):
            assert torch.equal(p, q), (j, name)
    for name in ("transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert torch.equal(part.get_parameter(name), full.get_parameter(name))
    pointers = [p.data_ptr() for p in part.parameters()]
    assert len(pointers) == len(set(pointers))  # a repeated block is a copy, not the same storage
    idx = tokens(97, 40)
    with torch.no_grad():
        assert torch.equal(part(idx)[0], reference_through(full, layers, idx))


class RecordingSafeOpen:
    """safetensors.safe_open that records the name of every tensor read."""

    reads = []

    def __init__(self, *args, **kwargs):
        self.file = SAFE_OPEN(*args, **kwargs)

    def __enter__(self):
        self.file.__enter__()
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def keys(self):
        return self.file.keys()

    def get_tensor(self, name):
        RecordingSafeOpen.reads.append(name)
        return self.file.get_tensor(name)


SAFE_OPEN = hf.safe_open


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_partial_loading_reads_only_the_chosen_blocks(make_hf_family, make_hf_gpt2, monkeypatch, family):
    if family == "gpt2":
        folder, block = make_hf_gpt2(n_layer=4), "h.{}."
    else:
        folder, block = make_hf_family("llama", num_hidden_layers=4, shard="20KB"), "layers.{}."
    monkeypatch.setattr(hf, "safe_open", RecordingSafeOpen)
    RecordingSafeOpen.reads = []
    model = load_pretrained(folder, layers=[3, 1, 3])
    reads = RecordingSafeOpen.reads
    assert len(reads) == len(set(reads))  # block 3 is read once and copied
    assert any(block.format(3) in r for r in reads) and any(block.format(1) in r for r in reads)
    assert not any(block.format(i) in r for r in reads for i in (0, 2))
    assert model.config.n_layer == 3


def test_bf16_weights_can_stay_bf16(make_hf_family):
    folder = make_hf_family("llama", dtype=torch.bfloat16)
    model = load_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_transformers4_config_keys_read_alike(make_hf_family):
    # config.json written by transformers 4: rope_theta and rope_scaling ("type") instead of rope_parameters
    folder = make_hf_family("llama", rope_theta=500.0, rope_scaling=LLAMA3_ROPE)
    expected = gpt_config_from_hf(folder, folder)
    keys = json.load(open(os.path.join(folder, "config.json")))
    rope = keys.pop("rope_parameters")
    keys["rope_theta"] = rope.pop("rope_theta")
    keys["rope_scaling"] = dict(rope, type=rope.pop("rope_type"))
    json.dump(keys, open(os.path.join(folder, "config.json"), "w"))
    assert gpt_config_from_hf(folder, folder) == expected
    assert expected.rope_theta == 500.0 and expected.rope_scaling == LLAMA3_ROPE


def test_checkpoint_of_a_llama_model_loads_weights_only(tmp_path):
    # model_args (asdict of GPTConfig, rope_scaling included) are plain types: torch.load(weights_only=True) reads them
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=30, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, bias=False,
                       norm="rmsnorm", mlp="swiglu", intermediate_size=24, pos_emb="rope",
                       rope_scaling=dict(LLAMA3_ROPE), tie_embeddings=False)
    model = GPT(config)
    save_checkpoint({"model": model.state_dict(), "model_args": dataclasses.asdict(config)}, str(tmp_path / "c.pt"))
    loaded = model_from_checkpoint(load_checkpoint(str(tmp_path / "c.pt")))
    assert loaded.config == config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# -- bad inputs: one-line errors ------------------------------------------------------------------------------


def one_line_error(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50,
                  architectures=["GPTNeoXForCausalLM"]).save_pretrained(tmp_path / "neox")
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(str(tmp_path / "neox"))
    assert ("GPTNeoXForCausalLM model: model.py implements GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, "
            "MistralForCausalLM") in one_line_error(e)


def test_missing_shard_is_named(make_hf_family):
    folder = make_hf_family("llama", shard="20KB")
    shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    assert len(shards) > 2
    os.remove(os.path.join(folder, shards[1]))
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(folder)
    assert f"is missing {shards[1]} (listed in model.safetensors.index.json)" in one_line_error(e)


def test_damaged_weights_are_named(make_hf_family):
    folder = make_hf_family("qwen2")
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(folder)
    assert "model.safetensors is damaged" in one_line_error(e)


@pytest.mark.parametrize("family, key, value, message", [
    ("llama", "attention_bias", True, "attention_bias=True is not supported"),
    ("llama", "mlp_bias", True, "mlp_bias=True is not supported"),
    ("llama", "hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("mistral", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
     "rope type 'linear' is not supported"),
])
def test_unsupported_config_fields_are_refused(make_hf_family, family, key, value, message):
    folder = make_hf_family(family)
    keys = json.load(open(os.path.join(folder, "config.json")))
    keys[key] = value
    json.dump(keys, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(folder)
    assert message in one_line_error(e)


def test_layers_out_of_range(make_hf_family):
    with pytest.raises(ModelLoadError) as e:
        load_pretrained(make_hf_family("llama"), layers=[0, 2])
    assert "layers [2] are not block indices" in one_line_error(e)


def test_export_refuses_a_model_no_architecture_computes(tmp_path):
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8, norm="rmsnorm"))
    with pytest.raises(ModelLoadError) as e:
        export_hf(model, str(tmp_path / "out"))
    assert "no Hugging Face architecture has norm='rmsnorm'" in one_line_error(e)
    assert not os.path.exists(tmp_path / "out")
