"""
Export a checkpoint as a Hugging Face GPT-2 folder, for transformers, lm-evaluation-harness and the Hub.

    python export_hf.py --ckpt=out-inherit --out=hf-inherit
    lm_eval --model hf --model_args pretrained=hf-inherit --tasks lambada_openai,hellaswag
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf-inherit')('Hello'))"

--out is always a folder, created if missing: config.json + model.safetensors (hf.export_hf; transformers'
GPT2LMHeadModel gives the same logits) and the model's tokenizer, so AutoTokenizer and lm_eval load it with
no network: for GPT-2 BPE, GPT-2's files (vocab.json, merges.txt from data/gpt2_bpe/, tokenizer_config.json);
for character-level models, a tokenizer.json that maps each character to its id as our CharTokenizer does.
The folder is built under a temporary name and swapped in whole, with the permissions of a plain mkdir
(0755 / 0644 under umask 022). An existing --out is replaced only when it holds an earlier export and nothing
else; any other folder (a checkpoint's out_dir, a downloaded model) is refused.
"""

import os
import sys

from checkpoint import CheckpointError, load_model
from configurator import configure_or_exit
from data import DataError, run_tokenizer_meta
from hf import ModelLoadError, export_hf

DEFAULTS = dict(
    ckpt="out",  # out_dir or .pt file (a GPT-2 name or Hugging Face folder also works)
    out="",  # the folder to write (created; an earlier export there is replaced)
)
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json"}


class ExportError(ValueError):
    pass


def check_out(out):
    """Refuse --out values that are not a new folder, an empty one, or an earlier export."""
    if not out:
        raise ExportError("pass the folder to write with --out=FOLDER")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out={out} is a file: --out is the folder to write")
    others = sorted(set(os.listdir(out)) - EXPORT_FILES) if os.path.isdir(out) else []
    if others:
        raise ExportError(f"--out={out} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, not an "
                          f"earlier export: pass a new folder (it is replaced whole)")


def export(ckpt, out):
    """Write the model at ckpt and its tokenizer as the Hugging Face folder out; returns the dataset meta.json
    that says the tokenizer."""
    check_out(out)
    model, checkpoint = load_model(ckpt)
    meta = run_tokenizer_meta(checkpoint and checkpoint.get("config"), model.config.vocab_size)
    try:
        export_hf(model, out, tokenizer_meta=meta)
    except OSError as e:  # a full disk, a read-only folder: the staging folder is gone, out untouched
        raise ExportError(f"could not write {out} ({e.strerror or e}); nothing was written") from None
    return meta


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        meta = export(**config)
    except (ExportError, CheckpointError, ModelLoadError, DataError) as e:
        sys.exit(f"error: {e}")
    if meta["tokenizer"] == "gpt2":
        print(f"wrote {config['out']} (config.json, model.safetensors, GPT-2 tokenizer files)")
        return
    print(f"wrote {config['out']} (config.json, model.safetensors, a character-level tokenizer.json)")
    prefix = meta["chars"].index("\n") if "\n" in meta["chars"] else 0
    print(f"note: the character-level tokenizer has no BOS/EOS token, which lm_eval needs as a prefix: pass "
          f"--model_args pretrained={config['out']},prefix_token_id={prefix}"
          + (" (the id of '\\n')" if "\n" in meta["chars"] else ""))


if __name__ == "__main__":
    main()
