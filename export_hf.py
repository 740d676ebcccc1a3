"""
Export a checkpoint as a Hugging Face folder (GPT-2, or Llama / Qwen2 / Mistral for models of that shape), for
transformers, lm-evaluation-harness and the Hub.

    python export_hf.py --ckpt=out-inherit --out=hf-inherit
    lm_eval --model hf --model_args pretrained=hf-inherit --tasks lambada_openai,hellaswag
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf-inherit')('Hello'))"

--out is a folder: config.json + model.safetensors (hf.export_hf) and the model's tokenizer files, so AutoTokenizer
and lm_eval load it offline (docs/evaluation.md says which tokenizer each model gets). It is written under a temporary
name and swapped in whole; an existing --out is replaced only when it holds an earlier export and nothing else.
"""

import os
import sys

from inheritune.checkpoint import CheckpointError
from inheritune.configurator import configure_or_exit
from inheritune.data import DataError
from inheritune.hf import TOKENIZER_FILES, ModelLoadError, export_hf
from inheritune.source import HF_KINDS, open_source
from inheritune.tokenizer import TokenizerError

DEFAULTS = dict(
    ckpt="out",  # out_dir or .pt file (a GPT-2 name or Hugging Face folder also works)
    out="",  # the folder to write (created; an earlier export there is replaced)
)
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES}


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


def hf_origin(source):
    """The local Hugging Face folder a Llama-family model came from (source itself, or the reference it was inherited
    from), whose architecture and special tokens the export keeps; None for others or when it is not here."""
    try:
        origin = source if source.kind in HF_KINDS else source.origin()
    except ModelLoadError as e:
        print(f"note: {e}: its architecture name and special token ids are not copied (the weights and tokenizer "
              f"are written all the same)", file=sys.stderr)
        return None
    return origin.path if origin is not None and origin.kind in HF_KINDS else None


def export(ckpt, out):
    """Write the model at ckpt (a name, or a source.ModelSource) and its tokenizer as the Hugging Face folder out;
    returns the meta.json-like dict that says the tokenizer."""
    check_out(out)
    source = open_source(ckpt)
    model = source.load()
    meta = source.tokenizer_meta()
    origin = hf_origin(source) if model.config.pos_emb == "rope" else None
    try:
        export_hf(model, out, tokenizer_meta=meta, source=origin)
    except OSError as e:  # a full disk, a read-only folder: the staging folder is gone, out untouched
        raise ExportError(f"could not write {out} ({e.strerror or e}); nothing was written") from None
    return meta


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        meta = export(**config)
    except (ExportError, CheckpointError, ModelLoadError, DataError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    files = {"gpt2": "GPT-2 tokenizer files", "hf": f"the tokenizer files of {meta.get('tokenizer_source')}",
             "char": "a character-level tokenizer.json"}[meta["tokenizer"]]
    print(f"wrote {config['out']} (config.json, model.safetensors, {files})")
    if meta["tokenizer"] != "char":
        return
    prefix = meta["chars"].index("\n") if "\n" in meta["chars"] else 0
    print(f"note: the character-level tokenizer has no BOS/EOS token, which lm_eval needs as a prefix: pass "
          f"--model_args pretrained={config['out']},prefix_token_id={prefix}"
          + (" (the id of '\\n')" if "\n" in meta["chars"] else ""))


if __name__ == "__main__":
    main()
