"""
Export a checkpoint as a Hugging Face GPT-2 folder, for transformers, lm-evaluation-harness and the Hub.

    python export_hf.py --ckpt=out-inherit --out=hf-inherit
    lm_eval --model hf --model_args pretrained=hf-inherit --tasks lambada_openai,hellaswag
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf-inherit')('Hello'))"

The folder gets config.json + model.safetensors (hf.export_hf; transformers' GPT2LMHeadModel gives the
same logits) and, for models on GPT-2 BPE, the tokenizer files (vocab.json, merges.txt from
data/gpt2_bpe/, tokenizer_config.json), so AutoTokenizer and lm_eval load it with no network.
Character-level models get no Hugging Face tokenizer. An existing --out folder is replaced.
"""

import json
import os
import shutil
import sys
import tempfile

from checkpoint import CheckpointError, load_model
from configurator import configure_or_exit
from data import DataError, run_tokenizer_meta
from hf import ModelLoadError, export_hf
from tokenizer import GPT2_BPE_DIR

DEFAULTS = dict(
    ckpt="out",  # out_dir or .pt file (a GPT-2 name or Hugging Face folder also works)
    out="",  # the folder to write
)
EOT = "<|endoftext|>"


def write_gpt2_tokenizer(folder, model_max_length):
    """GPT-2's tokenizer files in Hugging Face's names, from the copies bundled in data/gpt2_bpe/."""
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "encoder.json"), os.path.join(folder, "vocab.json"))
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "vocab.bpe"), os.path.join(folder, "merges.txt"))
    config = dict(tokenizer_class="GPT2Tokenizer", model_max_length=model_max_length, bos_token=EOT,
                  eos_token=EOT, unk_token=EOT, add_prefix_space=False, errors="replace")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def export(ckpt, out):
    """Write the model at ckpt (and its tokenizer when it is GPT-2 BPE) as the Hugging Face folder out."""
    if not out:
        raise CheckpointError("pass the folder to write with --out=FOLDER")
    model, checkpoint = load_model(ckpt)
    meta = run_tokenizer_meta(checkpoint and checkpoint.get("config"), model.config.vocab_size)
    # build the whole folder under a temporary name, then swap it in: never a folder without its tokenizer
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        folder = os.path.join(staging, "model")
        export_hf(model, folder)
        if meta["tokenizer"] == "gpt2":
            write_gpt2_tokenizer(folder, model.config.block_size)
        else:
            print(f"note: the model uses the '{meta['tokenizer']}' tokenizer, which has no Hugging Face "
                  f"equivalent; the folder has no tokenizer files", file=sys.stderr)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta["tokenizer"]


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        tokenizer = export(**config)
    except (CheckpointError, ModelLoadError, DataError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {config['out']} (config.json, model.safetensors"
          + (", GPT-2 tokenizer files)" if tokenizer == "gpt2" else ")"))


if __name__ == "__main__":
    main()
