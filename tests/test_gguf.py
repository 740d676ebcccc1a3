"""GGUF files as model sources: de-quantized through transformers' own GGUF loader, then read as a Hugging Face
folder (hf.gguf_folder); the tiny files here are written with the `gguf` package's writer."""

import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from conftest import REPO
from inheritune.hf import ModelLoadError
from inheritune.source import open_source


def write_tiny_gguf(path, tied=True, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn=64, context=128, seed=0):
    """A tiny Llama as llama.cpp writes one: the block matrices Q8_0-quantized, norms and embeddings float32, a
    byte-level BPE tokenizer (GPT-2's byte alphabet, three merges, <|endoftext|>) in its metadata; tied=False adds
    an LM head (output.weight). Returns path."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_context_length(context)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)

    def add(name, *shape, quantized=False):
        weight = rng.standard_normal(shape, dtype=np.float32) * 0.3
        if quantized:
            blocks = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, weight)

    kv_width = n_embd // n_head * n_kv_head
    add("token_embd.weight", len(tokens), n_embd)
    add("output_norm.weight", n_embd)
    if not tied:
        add("output.weight", len(tokens), n_embd)
    for i in range(n_layer):
        for name, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (kv_width, n_embd)),
                            ("attn_v", (kv_width, n_embd)), ("attn_output", (n_embd, n_embd)),
                            ("ffn_gate", (ffn, n_embd)), ("ffn_up", (ffn, n_embd)), ("ffn_down", (n_embd, ffn))):
            add(f"blk.{i}.{name}.weight", *shape, quantized=True)
        add(f"blk.{i}.attn_norm.weight", n_embd)
        add(f"blk.{i}.ffn_norm.weight", n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_logits_and_tokenizer_equal_transformers(tmp_path, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inheritune.tokenizer import tokenizer_from_meta

    path = write_tiny_gguf(str(tmp_path / "tiny.gguf"), tied=tied)
    source = open_source(path)
    config = source.config
    assert (source.kind, config.n_layer, config.n_kv_head, config.tie_embeddings) == ("hf_folder", 2, 2, tied)
    ours = source.load().eval()
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        our_logits, _ = ours(tokens)
        their_logits = theirs(tokens).logits
    assert our_logits.shape == their_logits.shape == (2, 24, 260)
    torch.testing.assert_close(our_logits, their_logits, atol=1e-5, rtol=1e-5)
    assert their_logits.std() > 0.1  # random weights, not an all-zero model that would match anything

    text = "the theater of the world"
    expected = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")(text)["input_ids"]
    assert tokenizer_from_meta(source.tokenizer_meta()).encode(text) == expected
    assert expected[:3] == [83, 257, 258]  # t, he, Ġthe: the file's merges are used

    stamp = source.files_stamp()
    assert open_source(path).path == source.path and open_source(path).files_stamp() == stamp  # converted once


def test_damaged_or_missing_gguf_is_one_line(tmp_path):
    path = write_tiny_gguf(str(tmp_path / "tiny.gguf"))
    with open(path, "rb") as f:
        head = f.read(os.path.getsize(path) // 2)
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(head)
    with pytest.raises(ModelLoadError, match=rf"^{damaged} is damaged .*: download it again$"):
        open_source(str(damaged))
    with pytest.raises(ModelLoadError, match=r"^no such GGUF file: nowhere/x\.gguf$"):
        open_source("nowhere/x.gguf")

    text = tmp_path / "some.txt"
    text.write_text("the theater " * 200)
    result = subprocess.run([sys.executable, "analyze_rank.py", f"--model={damaged}", f"--data={text}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {damaged} is damaged or not a model transformers can read (") and \
        line.endswith("): download it again")


def test_prepare_owt_inherit_and_train_reference_take_a_gguf_file(tmp_path):
    """prepare_owt.py --tokenizer=x.gguf encodes with the file's tokenizer; inherit.py --init_from=x.gguf and
    train.py --reference=x.gguf inherit its blocks."""
    from inheritune.checkpoint import load_checkpoint
    from inheritune.source import load_model

    path = write_tiny_gguf(str(tmp_path / "tiny.gguf"))
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in ("a", "b"):
        (texts / f"{name}.txt").write_text(f"the theater of {name} " * 500)
    data, out, inherited = str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "inherited")
    for argv in (["prepare_owt.py", f"--input={texts}", f"--tokenizer={path}", "--val_fraction=0.5",
                  f"--out_dir={data}"],
                 ["train.py", "--init_from=inherit", f"--reference={path}", "--n_layer=1", f"--data_dir={data}",
                  f"--out_dir={out}", "--max_iters=2", "--lr_decay_iters=2", "--warmup_iters=1", "--eval_interval=2",
                  "--eval_iters=1", "--batch_size=2", "--gradient_accumulation_steps=1", "--block_size=32",
                  "--device=cpu", "--compile=False"],
                 ["inherit.py", f"--init_from={path}", "--layers=1,0", f"--out_dir={inherited}"]):
        result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    assert (meta["tokenizer_source"], meta["vocab_size"]) == (open_source(path).path, 260)
    checkpoint = load_checkpoint(os.path.join(out, "ckpt.pt"), weights=False)
    assert (checkpoint["inherit"]["source"], checkpoint["inherit"]["layers"]) == (path, [0])
    model, checkpoint = load_model(inherited)
    assert checkpoint["inherit"]["layers"] == [1, 0]
    reference = open_source(path).load()
    assert torch.equal(model.transformer.h[0].mlp.c_proj.weight, reference.transformer.h[1].mlp.c_proj.weight)
