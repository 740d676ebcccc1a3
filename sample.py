"""
Sample text from one of our checkpoints or a Hugging Face model.

    python sample.py --init_from=out-shakespeare-char --start="ROMEO:" --num_samples=3
    python sample.py --init_from=gpt2-medium --start=FILE:prompt.txt --max_new_tokens=200 --top_k=50
    python sample.py --init_from=path/to/hf-folder --temperature=0.7 --seed=1

--init_from is an out_dir (or .pt file) written by train.py / inherit.py, a GPT-2 name or a Hugging Face
GPT-2 / Llama / Qwen2 / Mistral folder. Our checkpoints decode with the tokenizer of their dataset
(its meta.json), or of the Hugging Face model they were inherited from; Hugging Face folders with their own
tokenizer; GPT-2 models with GPT-2 BPE. The prompt starts with the model's BOS token when its documents did.
Samples go to stdout, separated by a line of dashes; notes go to stderr.
"""

import sys
from contextlib import nullcontext

import torch

from inheritune.checkpoint import CheckpointError
from inheritune.configurator import ConfigError, check_device, configure_or_exit
from inheritune.data import DataError
from inheritune.hf import ModelLoadError
from inheritune.source import open_source
from inheritune.tokenizer import TokenizerError, tokenizer_from_meta

DEFAULTS = dict(
    init_from="out",  # out_dir / ckpt.pt, GPT-2 name, or Hugging Face folder
    start="\n",  # the prompt, or FILE:path to read it from a file
    num_samples=3,  # [1, inf)
    max_new_tokens=500,  # [1, inf)
    temperature=0.8,  # (0, inf): < 1 sharper, > 1 more random
    top_k=200,  # [1, inf): keep only the top_k most likely tokens; None for all
    seed=1337,  # [0, 4294967295]
    device="cuda" if torch.cuda.is_available() else "cpu",
    dtype="bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32",
)
SEPARATOR = "---------------"


class SampleError(ValueError):
    pass


def encode_start(tokenizer, text):
    try:
        ids = tokenizer.prefix + tokenizer.encode(text)
    except ValueError as e:  # characters outside a character-level vocabulary
        raise SampleError(f"the start text cannot be encoded: {e}") from None
    if not ids:
        if not hasattr(tokenizer, "eot"):
            raise SampleError("the start text is empty: pass --start=TEXT")
        ids = [tokenizer.eot]  # GPT-2 begins documents after <|endoftext|>
    return ids


def never_sample_padding(model, n_vocab):
    """Padded vocabularies (e.g. 50304 for 50257 tokens): give the ids no tokenizer has zero probability."""
    if model.config.vocab_size > n_vocab:
        def mask(module, inputs, logits):
            logits[..., n_vocab:] = float("-inf")
            return logits

        model.lm_head.register_forward_hook(mask)


def sample(init_from, start, num_samples, max_new_tokens, temperature, top_k, seed, device, dtype):
    """A list of num_samples strings (each the start text and its continuation)."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SampleError(f"dtype={dtype} must be float32, bfloat16 or float16")
    check_device(device)
    source = open_source(init_from)
    model = source.load(device=device).eval()
    tokenizer = tokenizer_from_meta(source.tokenizer_meta())
    never_sample_padding(model, tokenizer.n_vocab)
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            raise SampleError(f"cannot read the start text from {start[5:]}: {e.strerror}") from None
    x = torch.tensor([encode_start(tokenizer, start)], dtype=torch.long, device=device)
    device_type = "cuda" if "cuda" in device else "cpu"
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = []
    with autocast:
        for _ in range(num_samples):
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None, generator=generator)
            samples.append(tokenizer.decode(y[0, len(tokenizer.prefix):].tolist()))  # the text, without a BOS
    return samples


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        samples = sample(**config)
    except (SampleError, ConfigError, CheckpointError, ModelLoadError, DataError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    for text in samples:
        print(text)
        print(SEPARATOR)


if __name__ == "__main__":
    main()
