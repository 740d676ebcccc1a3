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
    # one thread per process: the suite runs on 2 workers (pytest-xdist) and many tests start 2-process runs, and
    # more threads than cores slow every process down many times over
    OMP_NUM_THREADS="1",
)

import contextlib  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

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


HF_FAMILIES = {  # transformers' config and model classes of the Llama family model.py implements
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


@pytest.fixture
def make_hf_family(tmp_path):
    """Factory: a random Hugging Face Llama / Qwen2 / Mistral folder built with transformers' own classes.

    Norm weights and biases are drawn at random too (transformers initializes them to 1 and 0, which would hide
    a swapped or dropped tensor). shard: save_pretrained's max_shard_size (sharded safetensors);
    dtype: the weights' stored dtype (e.g. torch.bfloat16). Returns the folder's path.
    """

    def make(family="llama", name=None, seed=0, shard=None, dtype=None, **config_kwargs):
        import transformers

        config_cls, model_cls = (getattr(transformers, c) for c in HF_FAMILIES[family])
        torch.manual_seed(seed)
        kwargs = dict(hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
        kwargs.update(copy.deepcopy(config_kwargs))  # transformers fills in dicts such as rope_scaling
        model = model_cls(config_cls(**kwargs)).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname:
                    p.add_(0.1 * torch.randn_like(p))
        if dtype is not None:
            model = model.to(dtype)
        folder = tmp_path / (name or family)
        model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        return str(folder)

    return make


def assert_one_line_error(result, *texts):
    """A finished subprocess refused with exit status 1 and one line on stderr, `error: ...`, holding each text."""
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for text in texts:
        assert text in lines[0], lines[0]


# -- train.py runs on tiny models --------------------------------------------------------------
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_iters=4",
        "--log_interval=1", "--device=cpu", "--compile=False", "--warmup_iters=5", "--lr_decay_iters=100"]


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """The bundled Shakespeare corpus, character-level, in a temporary folder."""
    folder = str(tmp_path_factory.mktemp("shakespeare_char"))
    from inheritune.data import prepare_shakespeare

    prepare_shakespeare(folder, "char")
    return folder


def train_cmd(char_data, out_dir, *args):
    return [sys.executable, "train.py", f"--data_dir={char_data}", f"--out_dir={out_dir}", *TINY, *args]


def train(char_data, out_dir, *args, expect_rc=0):
    result = run_in_process("train.py", train_cmd(char_data, out_dir, *args)[2:])
    assert result.returncode == expect_rc, result.stderr[-3000:] + result.stdout[-3000:]
    return result


def run_in_process(script, args, cwd=REPO):
    """python REPO/SCRIPT ARGS in the folder cwd, run in this process (as __main__) and answered as subprocess.run
    would: its exit status, stdout and stderr (an uncaught exception: status 1 and its traceback). It saves each run
    the second a new process takes to import torch; argv, the working directory and the signal handlers the script
    sets are restored after it."""
    saved = sys.argv, os.getcwd(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out, err, returncode = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, *map(str, args)]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(os.path.join(REPO, script), run_name="__main__")
            except SystemExit as e:  # sys.exit(): None or a status, or a message that Python prints and exits 1 on
                returncode = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                returncode = 1
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        signal.signal(signal.SIGTERM, saved[2])
        signal.signal(signal.SIGINT, saved[3])
    return subprocess.CompletedProcess([script, *args], returncode, out.getvalue(), err.getvalue())


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def kill_when_writing(script, *args):
    """Run `python -c script args` and SIGKILL it as soon as it prints "writing" (the script's save is under way)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()

