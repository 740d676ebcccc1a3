"""sample.py and export_hf.py on tiny checkpoints: deterministic samples, tokenizers, Hugging Face round trip."""

import os
import subprocess
import sys

import pytest
import torch

import sample
from checkpoint import save_checkpoint
from conftest import REPO
from data import write_meta
from export_hf import export
from model import GPT, GPTConfig

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def run_script(script, *args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def save_tiny_checkpoint(path, vocab_size, dataset=None, seed=0, **config):
    torch.manual_seed(seed)
    model_args = dict(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    model_args.update(config)
    model = GPT(GPTConfig(**model_args))
    save_checkpoint({"model": model.state_dict(), "model_args": model_args,
                     "config": {"dataset": dataset} if dataset else {}}, str(path / "ckpt.pt"))
    return model


@pytest.fixture
def char_run(tmp_path, monkeypatch):
    """A working directory with data/tiny_char/meta.json and a checkpoint trained 'on' it, as train.py leaves them."""
    (tmp_path / "data" / "tiny_char").mkdir(parents=True)
    write_meta(str(tmp_path / "data" / "tiny_char"), {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS})
    save_tiny_checkpoint(tmp_path / "out", len(CHARS), dataset="tiny_char")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sample_is_deterministic_with_a_seed(char_run):
    args = ["--init_from=out", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=30", "--seed=7",
            "--device=cpu", "--dtype=float32"]
    result = run_script("sample.py", *args, cwd=char_run)
    assert result.returncode == 0, result.stderr
    texts = result.stdout.split(sample.SEPARATOR + "\n")[:-1]
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) == len("ROMEO:") + 30 + 1 for t in texts)
    assert set("".join(texts)) <= set(CHARS)  # decoded with the dataset's characters
    config = {**sample.DEFAULTS, "init_from": "out", "start": "ROMEO:", "num_samples": 2, "max_new_tokens": 30,
              "seed": 7, "device": "cpu", "dtype": "float32"}
    in_process = sample.sample(**config)
    assert [t + "\n" for t in in_process] == texts  # the same text in another process
    assert sample.sample(**config) == in_process
    assert sample.sample(**{**config, "seed": 8}) != in_process
    assert texts[0] != texts[1]  # the generator moves on between samples


def test_sample_start_from_file_and_bad_start(char_run):
    (char_run / "prompt.txt").write_text("JULIET:\n")
    config = {**sample.DEFAULTS, "init_from": "out", "num_samples": 1, "max_new_tokens": 5, "device": "cpu",
              "dtype": "float32"}
    [text] = sample.sample(**{**config, "start": "FILE:prompt.txt"})
    assert text.startswith("JULIET:\n") and len(text) == 8 + 5
    result = run_script("sample.py", "--init_from=out", "--start=ROMEO: 1", cwd=char_run)  # '1' not in CHARS
    assert result.returncode == 1 and "error: the start text cannot be encoded" in result.stderr
    result = run_script("sample.py", "--init_from=out", "--start=FILE:missing.txt", cwd=char_run)
    assert result.returncode == 1 and "cannot read the start text from missing.txt" in result.stderr


def test_sample_errors_for_missing_checkpoint_and_unprepared_char_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "out-char", len(CHARS), dataset="not_prepared_char_set")
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from=out-char", "--device=cpu"])
    message = str(e.value.code)
    assert f"{len(CHARS)}-token vocabulary, not GPT-2's" in message and "data/not_prepared_char_set" in message
    result = run_script("sample.py", "--init_from=no-such-out-dir", cwd=tmp_path)
    assert result.returncode == 1 and "error: unknown model 'no-such-out-dir'" in result.stderr


def test_sample_gpt2_vocab_falls_back_to_bpe_and_never_samples_padding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = save_tiny_checkpoint(tmp_path / "out", 50304)  # nanoGPT's padded GPT-2 vocabulary, no dataset
    config = {**sample.DEFAULTS, "init_from": "out", "start": "Hello world", "num_samples": 1,
              "max_new_tokens": 4, "device": "cpu", "dtype": "float32", "top_k": None}
    [text] = sample.sample(**config)
    assert text.startswith("Hello world")
    sample.never_sample_padding(model, 50257)
    logits, _ = model(torch.tensor([[15496, 995]]))
    assert torch.isinf(logits[..., 50257:]).all() and torch.isfinite(logits[..., :50257]).all()


def test_export_hf_round_trip_with_tokenizer(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    ours = save_tiny_checkpoint(tmp_path / "out", 50257, bias=False, scale_attn_by_inverse_layer_idx=True).eval()
    result = run_script("export_hf.py", "--ckpt=out", "--out=hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "merges.txt", "model.safetensors",
                                                   "tokenizer_config.json", "vocab.json"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and tokenizer.model_max_length == 32
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.tensor([tokenizer("Hello world, this is a test of the export")["input_ids"]])
    with torch.no_grad():
        expected, _ = ours(idx)
        got = hf_model(idx).logits
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5

    # exporting again replaces the folder (a stale file does not survive)
    (tmp_path / "hf" / "stale.txt").write_text("old")
    export("out", str(tmp_path / "hf"))
    assert not (tmp_path / "hf" / "stale.txt").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".export-")]


def test_export_hf_char_model_has_no_tokenizer_files(char_run):
    from transformers import AutoModelForCausalLM

    assert export("out", "hf-char") == "char"
    assert sorted(os.listdir(char_run / "hf-char")) == ["config.json", "model.safetensors"]
    assert AutoModelForCausalLM.from_pretrained(str(char_run / "hf-char")).config.vocab_size == len(CHARS)


def test_export_hf_errors(tmp_path):
    result = run_script("export_hf.py", "--ckpt=out", cwd=tmp_path)
    assert result.returncode == 1 and "error: pass the folder to write with --out=FOLDER" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_script("export_hf.py", "--ckpt=empty", "--out=hf", cwd=tmp_path)
    assert result.returncode == 1 and "holds neither ckpt.pt nor a Hugging Face config.json" in result.stderr
    assert not (tmp_path / "hf").exists()
