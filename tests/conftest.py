"""Shared test set-up: everything offline, every cache in a temporary folder, small models made locally."""

import os
import tempfile

# Before transformers / huggingface_hub / tiktoken are imported: they read these at import time.
_cache = tempfile.mkdtemp(prefix="inheritune-test-cache-")
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="disabled",
    HF_HOME=os.path.join(_cache, "hf"),
    TIKTOKEN_CACHE_DIR=os.path.join(_cache, "tiktoken"),
    TOKENIZERS_PARALLELISM="false",
)

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def make_hf_gpt2(tmp_path):
    """Factory: a random-weight Hugging Face GPT-2 folder of the given shape; returns its path."""

    def make(name="hf-gpt2", seed=0, safetensors=True, **config_kwargs):
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        kwargs = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=96, n_positions=64)
        kwargs.update(config_kwargs)
        model = GPT2LMHeadModel(GPT2Config(**kwargs)).eval()
        folder = tmp_path / name
        model.save_pretrained(folder, safe_serialization=safetensors)
        return str(folder)

    return make


# -- train.py runs on tiny models --------------------------------------------------------------
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_iters=4",
        "--log_interval=1", "--device=cpu", "--compile=False", "--warmup_iters=5", "--lr_decay_iters=100"]


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """The bundled Shakespeare corpus, character-level, in a temporary folder."""
    folder = str(tmp_path_factory.mktemp("shakespeare_char"))
    from data import prepare_shakespeare

    prepare_shakespeare(folder, "char")
    return folder


def train_cmd(char_data, out_dir, *args):
    return [sys.executable, "train.py", f"--data_dir={char_data}", f"--out_dir={out_dir}", *TINY, *args]


def train(char_data, out_dir, *args, expect_rc=0):
    result = subprocess.run(train_cmd(char_data, out_dir, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect_rc, result.stderr[-3000:] + result.stdout[-3000:]
    return result


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
