"""source.open_source: each kind of model name resolves once, to its kind, config, weights (all or chosen blocks) and
tokenizer; a name that is none of them is a one-line error at once, without the network."""

import os
import time

import pytest
import torch

import analyze_rank
from inheritune import hf
from inheritune.checkpoint import CheckpointError, model_fingerprint, save_checkpoint, to_sharded
from inheritune.data import write_meta
from inheritune.hf import ModelLoadError
from inheritune.source import open_source
from model import GPT, GPTConfig

CHARS = "\n abcdefghijklmnopqrstuvwxyz"
TINY = dict(block_size=32, vocab_size=len(CHARS), n_layer=3, n_head=2, n_embd=16, dropout=0.0, bias=False)


@pytest.fixture
def no_hub(monkeypatch):
    """Online as far as the environment says, but any call to the Hub fails the test."""
    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for hub in ("huggingface_hub.snapshot_download", "huggingface_hub.hf_hub_download",
                "transformers.AutoModelForCausalLM.from_pretrained"):
        monkeypatch.setattr(hub, no_network)


@pytest.fixture
def models(tmp_path, monkeypatch, make_hf_family):
    """A working directory with a char dataset, our checkpoint trained 'on' it (ckpt.pt), its sharded copy, and a
    Llama folder with a tokenizer."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "tiny_char").mkdir(parents=True)
    write_meta(str(tmp_path / "data" / "tiny_char"), {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS})
    torch.manual_seed(0)
    save_checkpoint({"model": GPT(GPTConfig(**TINY)).state_dict(), "model_args": TINY,
                     "config": {"dataset": "tiny_char"}}, "out-shakespeare-char/ckpt.pt")
    to_sharded("out-shakespeare-char", "out-sharded")
    llama = make_hf_family("llama", num_hidden_layers=3)
    hf.write_char_tokenizer(llama, CHARS, 64)
    return llama


def same_blocks(part, full, layers):
    """part's block i is full's block layers[i]; everything outside the blocks is full's."""
    full_sd = full.state_dict()
    for name, tensor in part.state_dict().items():
        if name.startswith("transformer.h."):
            i, rest = name.split(".", 3)[2:]
            name = f"transformer.h.{layers[int(i)]}.{rest}"
        assert torch.equal(tensor, full_sd[name]), name


def test_each_kind_resolves_to_its_config_weights_and_tokenizer(models):
    llama = models
    char_meta = {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}
    for name, kind, path in [("out-shakespeare-char", "checkpoint", "out-shakespeare-char/ckpt.pt"),
                             ("out-shakespeare-char/ckpt.pt", "checkpoint", "out-shakespeare-char/ckpt.pt"),
                             ("out-sharded", "sharded", "out-sharded/ckpt.dcp"),
                             ("out-sharded/ckpt.dcp", "sharded", "out-sharded/ckpt.dcp")]:
        source = open_source(name)
        assert (source.kind, source.path, str(source)) == (kind, path, name)
        assert source.config == GPTConfig(**TINY) and source.checkpoint["config"] == {"dataset": "tiny_char"}
        assert ("model" in source.checkpoint) == (kind == "checkpoint")  # a sharded one's shards stay unread
        assert source.known_tokenizer_meta() == source.tokenizer_meta() == char_meta
        assert open_source(source) is source
    source = open_source(llama)
    assert (source.kind, source.path, source.checkpoint) == ("hf_folder", llama, None)
    assert source.config == hf.gpt_config_from_hf(llama, llama) and source.config.n_layer == 3
    meta = source.tokenizer_meta()
    assert meta["tokenizer"] == "hf" and meta["tokenizer_source"] == os.path.abspath(llama)
    assert meta["vocab_size"] == len(CHARS)


def test_chosen_blocks_are_the_full_models_blocks(models):
    llama = models
    for name in ("out-shakespeare-char", "out-sharded", llama):
        source = open_source(name)
        full = source.load()
        assert source.fingerprint() == model_fingerprint(full)  # read block by block, the same numbers
        for layers in ([2, 0], [1, 1, 2]):
            part = source.load(layers)
            assert part.config.n_layer == len(layers)
            same_blocks(part, full, layers)
    same_blocks(open_source("out-sharded").load(), open_source("out-shakespeare-char").load(), [0, 1, 2])


def test_a_hub_id_is_found_once_in_the_cache_or_downloaded(models, monkeypatch):
    llama, calls = models, []

    def snapshot_download(repo_id, allow_patterns, local_files_only):
        calls.append((repo_id, local_files_only))
        return llama

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    source = open_source("gpt2-medium")
    assert (source.kind, source.path, source.config.n_layer) == ("hub", llama, 3)
    assert open_source("someone/tiny-llama", download=False).kind == "hub"
    assert calls == [("openai-community/gpt2-medium", False), ("someone/tiny-llama", True)]


def test_an_inherited_models_tokenizer_is_its_origins(models, tmp_path):
    llama = models
    student = {"model": GPT(GPTConfig(**TINY)).state_dict(), "model_args": TINY, "inherit": {"source": llama}}
    save_checkpoint(student, "student/ckpt.pt")
    source = open_source("student")
    assert source.origin().path == llama and source.known_tokenizer_meta() == open_source(llama).tokenizer_meta()
    os.rename(llama, tmp_path / "moved")
    with pytest.raises(ModelLoadError, match=f"^{llama}, which the model was inherited from, is not here$"):
        source.origin()
    assert source.known_tokenizer_meta() is None


@pytest.mark.parametrize("name, error, message", [
    ("out-shakespear-char", ModelLoadError, "unknown model 'out-shakespear-char': no such folder here, and not one "
     "of gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (or an 'org/name' Hub id); did you mean "
     "out-shakespeare-char?"),
    ("./out-shakespear-char", ModelLoadError, "no such folder: ./out-shakespear-char (pass an existing folder with "
     "config.json and the weights, an out_dir of ours, or a Hub name); did you mean ./out-shakespeare-char?"),
    ("gpt2-meduim", ModelLoadError, "unknown model 'gpt2-meduim': no such folder here, and not one of gpt2, "
     "gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (or an 'org/name' Hub id); did you mean gpt2-medium?"),
    ("out-shakespeare-char/ckpt-typo.pt", CheckpointError, "no checkpoint at out-shakespeare-char/ckpt-typo.pt: pass "
     "an out_dir that holds ckpt.pt or ckpt.dcp/, or a .pt file; did you mean out-shakespeare-char/ckpt.pt?"),
    ("data", CheckpointError, "data holds neither ckpt.pt nor a Hugging Face config.json"),
    ("data/tiny_char/meta.json", ModelLoadError, "data/tiny_char/meta.json is a file but not a .pt checkpoint: pass "
     "an out_dir or .pt of ours, a .gguf file or a Hugging Face model folder (config.json + weights)"),
])
def test_a_name_that_is_no_model_is_refused_without_the_network(models, no_hub, name, error, message):
    with pytest.raises(error) as e:
        open_source(name)
    assert str(e.value) == message


def test_analyze_rank_refuses_a_typo_of_a_folder_at_once(models, no_hub, tmp_path):
    (tmp_path / "val.txt").write_text("a b c\n" * 100)
    start = time.time()
    with pytest.raises(SystemExit) as e:
        analyze_rank.main(["--model=out-shakespear-char", f"--data={tmp_path / 'val.txt'}", "--device=cpu"])
    assert time.time() - start < 5
    message = str(e.value.code)
    assert message.startswith("error: unknown model 'out-shakespear-char': no such folder here")
    assert message.endswith("did you mean out-shakespeare-char?") and "\n" not in message


def test_analyze_rank_gives_a_hub_model_model_py_lacks_to_transformers(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    neox = str(tmp_path / "neox")
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                     vocab_size=50, max_position_embeddings=32)).save_pretrained(neox)
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **kwargs: neox)  # as if in the cache
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda name, **kwargs: real(neox, **kwargs) if name == "someone/neox" else None)
    attention_model = analyze_rank.load_attention_model("someone/neox", "cpu")
    assert isinstance(attention_model, analyze_rank.HFAttentions) and attention_model.n_layer == 2
    assert attention_model.source.kind == "hub" and attention_model.name == "someone/neox"
