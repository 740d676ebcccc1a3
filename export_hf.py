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

import sys

from checkpoint import CheckpointError, load_model
from configurator import configure_or_exit
from data import DataError, run_tokenizer_meta
from hf import ModelLoadError, export_hf

DEFAULTS = dict(
    ckpt="out",  # out_dir or .pt file (a GPT-2 name or Hugging Face folder also works)
    out="",  # the folder to write
)


def export(ckpt, out):
    """Write the model at ckpt (and its tokenizer when it is GPT-2 BPE) as the Hugging Face folder out."""
    if not out:
        raise CheckpointError("pass the folder to write with --out=FOLDER")
    model, checkpoint = load_model(ckpt)
    meta = run_tokenizer_meta(checkpoint and checkpoint.get("config"), model.config.vocab_size)
    if meta["tokenizer"] != "gpt2":
        print(f"note: the model uses the '{meta['tokenizer']}' tokenizer, which has no Hugging Face "
              f"equivalent; the folder has no tokenizer files", file=sys.stderr)
    export_hf(model, out, gpt2_tokenizer=meta["tokenizer"] == "gpt2")
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
