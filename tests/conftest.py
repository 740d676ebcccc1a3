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
