"""
Prepare the bundled Shakespeare corpus (the 42 works in texts/) for train.py.

    python data/shakespeare/prepare.py                      # characters -> data/shakespeare_char/
    python data/shakespeare/prepare.py --tokenizer=gpt2     # GPT-2 BPE  -> data/shakespeare_gpt2/

Writes train.bin / val.bin (uint16) and meta.json; the last 10% of every work goes to val.
The work is done by data.prepare_shakespeare, which demo.py and the tests call directly.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root

from inheritune.configurator import configure_or_exit  # noqa: E402
from inheritune.data import DataError, prepare_shakespeare  # noqa: E402

DEFAULTS = dict(
    tokenizer="char",  # "char" or "gpt2"
    out_dir="",  # default: data/shakespeare_<tokenizer>
)

if __name__ == "__main__":
    config = configure_or_exit(DEFAULTS)
    try:
        meta = prepare_shakespeare(config["out_dir"] or None, config["tokenizer"])
    except DataError as e:
        sys.exit(f"error: {e}")
    out_dir = config["out_dir"] or f"data/shakespeare_{config['tokenizer']}"
    print(f"wrote {out_dir}: vocab {meta['vocab_size']}, train.bin {meta['train_tokens']:,} tokens, "
          f"val.bin {meta['val_tokens']:,} tokens")
