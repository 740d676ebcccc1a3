"""Every numeric flag of every script is checked against the range beside its default (configurator.py): a value
outside it is one line that names the flag and the range, with a non-zero exit, before any work."""

import datasets
import pytest

import prepare_owt
from conftest import run_in_process
from inheritune import configurator

SEED = ["--seed=-1", "--seed=4294967296"]
BAD = {  # script: an out-of-range value of each of its numeric flags (every int or float default must be here)
    "sample.py": ["--num_samples=0", "--max_new_tokens=0", "--temperature=0", "--temperature=-0.5", "--top_k=0", *SEED],
    "analyze_rank.py": ["--num_samples=0", "--seq_len=-1", "--tau=0", "--tau=1.5", "--eta=0", "--eta=1.01",
                        "--near_rank_one=0.5", "--lazy_tolerance=-0.1", "--lazy_tolerance=1e999", "--batch_size=0",
                        *SEED],
    "layer_test.py": ["--k=0", "--steps=1", "--block_size=0", "--batch_size=-2", "--gradient_accumulation_steps=0",
                      "--learning_rate=0", "--eval_iters=0", "--num_samples=0", *SEED],
    "evaluate.py": ["--limit=-1", "--limit=1e999", "--num_fewshot=-1"],
    "inherit.py": ["--n_embd=0", "--n_head=0", "--block_size=0", "--eval_iters=0", "--batch_size=0",
                   "--batch_size=2.5", "--eval_iters=True", *SEED],
    "prepare_owt.py": ["--max_docs=-1", "--val_fraction=0", "--val_fraction=1", "--num_proc=0", *SEED],
    "bench.py": ["--n_layer=0", "--n_head=0", "--n_embd=0", "--block_size=0", "--batch_size=0", "--vocab_size=0",
                 "--steps=0", "--n_kv_head=-1", "--intermediate_size=-1", "--rounds=0", "--warmup=-1",
                 "--threads=-1", "--threads=100000", "--nproc=0", "--malloc_mmap_threshold=-1",
                 "--malloc_mmap_threshold=100000000", "--num_samples=0"],
    "demo.py": ["--reference_layers=1", "--reference_iters=7", "--max_rounds=0", "--n_embd=0", "--n_head=0",
                "--block_size=0", "--batch_size=0", "--eval_iters=0", "--onset_iters=-1"],
    "compare.py": [],
    "export_hf.py": [],
    "inheritune/checkpoint.py": [],
}


def declared(script, monkeypatch):
    """(defaults, source file) of script, as its --help sees them."""
    seen = {}
    monkeypatch.setattr(configurator, "help_text", lambda defaults, source, *_: seen.update(d=defaults, s=source) or "")
    assert run_in_process(script, ["--help"]).returncode == 0
    return seen["d"], seen["s"]


@pytest.mark.parametrize("script", BAD)
def test_every_numeric_flag_refuses_values_outside_its_range(script, monkeypatch):
    defaults, source = declared(script, monkeypatch)
    numeric = {key for key, value in defaults.items() if type(value) in (int, float)}
    assert numeric <= {arg[2:].split("=")[0] for arg in BAD[script]}, "a numeric flag without a bad value here"
    assert configurator.overrides(defaults, [], source) == {}  # every default is inside its own declared range
    for arg in BAD[script]:
        # a trailing unknown key stops the script before any work should the bad value pass
        r = run_in_process(script, [arg, "--not_a_flag=1"])
        assert r.returncode == 1, (arg, r.stdout[-2000:])
        flag = arg.split("=")[0]
        assert r.stderr.startswith(f"error: {flag}=") and r.stderr.count("\n") == 1, (arg, r.stderr)
        assert " is outside " in r.stderr or " is not an integer: " in r.stderr, (arg, r.stderr)


@pytest.mark.parametrize("script, args, message", [
    ("bench.py", ["--n_head=3", "--quick=True"], "error: n_embd=64 is not divisible by n_head=3"),
    ("demo.py", ["--onset_iters=10"], "error: onset_iters=10 is not above reference_iters=500"),
])
def test_flags_that_depend_on_each_other(script, args, message):
    r = run_in_process(script, args)
    assert r.returncode == 1 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr


def test_val_fraction_near_one_keeps_a_training_document():
    docs = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    assert [len(part) for part in prepare_owt.split_documents(docs, 0.9, 0).values()] == [1, 2]
