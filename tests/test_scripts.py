"""sample.py and export_hf.py on tiny checkpoints: deterministic samples, tokenizers, Hugging Face round trip."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
from inheritune.checkpoint import save_checkpoint
from conftest import REPO, assert_one_line_error, run_in_process
from inheritune import configurator
from inheritune.data import write_meta
from export_hf import export
from export_hf import main as export_main
from model import GPT, GPTConfig

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def run_script(script, *args, cwd):
    if script == "bench.py":  # it sets torch's thread count, which would stay set in this process
        return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, capture_output=True,
                              text=True, timeout=120)
    return run_in_process(script, args, cwd)


def save_tiny_checkpoint(path, vocab_size, dataset=None, seed=0, **config):
    torch.manual_seed(seed)
    model_args = dict(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    model_args.update(config)
    model = GPT(GPTConfig(**model_args))
    save_checkpoint({"model": model.state_dict(), "model_args": model_args,
                     "config": {"dataset": dataset} if dataset else {}}, str(path / "ckpt.pt"))
    return model


@pytest.fixture
def char_run(tmp_path, monkeypatch):
    """A working directory with data/tiny_char/meta.json and a checkpoint trained 'on' it, as train.py leaves them."""
    (tmp_path / "data" / "tiny_char").mkdir(parents=True)
    write_meta(str(tmp_path / "data" / "tiny_char"), {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS})
    save_tiny_checkpoint(tmp_path / "out", len(CHARS), dataset="tiny_char")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sample_is_deterministic_with_a_seed(char_run):
    args = ["--init_from=out", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=30", "--seed=7",
            "--device=cpu", "--dtype=float32"]
    result = run_script("sample.py", *args, cwd=char_run)
    assert result.returncode == 0, result.stderr
    texts = result.stdout.split(sample.SEPARATOR + "\n")[:-1]
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) == len("ROMEO:") + 30 + 1 for t in texts)
    assert set("".join(texts)) <= set(CHARS)  # decoded with the dataset's characters
    config = {**sample.DEFAULTS, "init_from": "out", "start": "ROMEO:", "num_samples": 2, "max_new_tokens": 30,
              "seed": 7, "device": "cpu", "dtype": "float32"}
    in_process = sample.sample(**config)
    assert [t + "\n" for t in in_process] == texts  # the same text in another process
    assert sample.sample(**config) == in_process
    assert sample.sample(**{**config, "seed": 8}) != in_process
    assert texts[0] != texts[1]  # the generator moves on between samples


def test_sample_start_from_file_and_bad_start(char_run):
    (char_run / "prompt.txt").write_text("JULIET:\n")
    config = {**sample.DEFAULTS, "init_from": "out", "num_samples": 1, "max_new_tokens": 5, "device": "cpu",
              "dtype": "float32"}
    [text] = sample.sample(**{**config, "start": "FILE:prompt.txt"})
    assert text.startswith("JULIET:\n") and len(text) == 8 + 5
    result = run_script("sample.py", "--init_from=out", "--start=ROMEO: 1", cwd=char_run)  # '1' not in CHARS
    assert result.returncode == 1 and "error: the start text cannot be encoded" in result.stderr
    result = run_script("sample.py", "--init_from=out", "--start=FILE:missing.txt", cwd=char_run)
    assert result.returncode == 1 and "cannot read the start text from missing.txt" in result.stderr


def test_sample_errors_for_missing_checkpoint_and_unprepared_char_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "out-char", len(CHARS), dataset="not_prepared_char_set")
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from=out-char", "--device=cpu"])
    message = str(e.value.code)
    assert f"{len(CHARS)}-token vocabulary, not GPT-2's" in message and "data/not_prepared_char_set" in message
    result = run_script("sample.py", "--init_from=no-such-out-dir", cwd=tmp_path)
    assert result.returncode == 1 and "error: unknown model 'no-such-out-dir'" in result.stderr


def test_sample_gpt2_vocab_falls_back_to_bpe_and_never_samples_padding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = save_tiny_checkpoint(tmp_path / "out", 50304)  # nanoGPT's padded GPT-2 vocabulary, no dataset
    config = {**sample.DEFAULTS, "init_from": "out", "start": "Hello world", "num_samples": 1,
              "max_new_tokens": 4, "device": "cpu", "dtype": "float32", "top_k": None}
    [text] = sample.sample(**config)
    assert text.startswith("Hello world")
    sample.never_sample_padding(model, 50257)
    logits, _ = model(torch.tensor([[15496, 995]]))
    assert torch.isinf(logits[..., 50257:]).all() and torch.isfinite(logits[..., :50257]).all()


def test_export_hf_round_trip_with_tokenizer(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    ours = save_tiny_checkpoint(tmp_path / "out", 50257, bias=False, scale_attn_by_inverse_layer_idx=True).eval()
    result = run_script("export_hf.py", "--ckpt=out", "--out=hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "merges.txt", "model.safetensors",
                                                   "tokenizer_config.json", "vocab.json"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and tokenizer.model_max_length == 32
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.tensor([tokenizer("Hello world, this is a test of the export")["input_ids"]])
    with torch.no_grad():
        expected, _ = ours(idx)
        got = hf_model(idx).logits
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5

    # exporting again replaces an earlier export whole: a character-level model's leaves no GPT-2 files
    char_dir = tmp_path / "data" / "tiny_char"
    char_dir.mkdir(parents=True)
    write_meta(str(char_dir), {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS})
    save_tiny_checkpoint(tmp_path / "out-char", len(CHARS), dataset="tiny_char")
    assert export("out-char", "hf")["tokenizer"] == "char"
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".export-")]


def test_export_hf_char_model_tokenizer_is_our_char_tokenizer(tmp_path, monkeypatch):
    """AutoTokenizer on a character-level export encodes and decodes the Shakespeare text as CharTokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inheritune.data import shakespeare_works, split_work
    from inheritune.tokenizer import CharTokenizer

    works = shakespeare_works()
    chars = sorted(set("".join(text for _, text in works)))
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    write_meta(str(tmp_path / "data" / "shakespeare_char"), {"tokenizer": "char", "vocab_size": len(chars),
                                                             "chars": "".join(chars)})
    ours = save_tiny_checkpoint(tmp_path / "out", len(chars), dataset="shakespeare_char").eval()
    monkeypatch.chdir(tmp_path)
    assert export("out", "hf-char")["tokenizer"] == "char"
    tokenizer = AutoTokenizer.from_pretrained("hf-char")
    text = "".join(split_work(text)[1] for _, text in works)  # 0.5M characters, a piece of every work
    ids = tokenizer(text)["input_ids"]
    assert ids == CharTokenizer(chars).encode(text)
    assert tokenizer.decode(ids) == text and tokenizer.model_max_length == 32
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):  # as CharTokenizer, unknown characters are refused
        tokenizer("caf\u00e9")
    hf_model = AutoModelForCausalLM.from_pretrained("hf-char").eval()
    idx = torch.tensor([ids[:32]])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_export_hf_folder_has_the_permissions_of_a_plain_mkdir(tmp_path, monkeypatch, umask):
    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "out", 50257)
    old = os.umask(umask)
    try:
        export("out", "hf")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "hf").st_mode & 0o777 == 0o777 & ~umask
    for name in os.listdir(tmp_path / "hf"):
        assert os.stat(tmp_path / "hf" / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_export_hf_errors(tmp_path, monkeypatch):
    result = run_script("export_hf.py", "--ckpt=out", cwd=tmp_path)
    assert result.returncode == 1 and "error: pass the folder to write with --out=FOLDER" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_script("export_hf.py", "--ckpt=empty", "--out=hf", cwd=tmp_path)
    assert result.returncode == 1 and "holds neither ckpt.pt nor a Hugging Face config.json" in result.stderr
    assert not (tmp_path / "hf").exists()
    # --out is never a folder that holds something else (here the checkpoint itself), nor a file
    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "out", 50257)
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()
    for out, message in (("out", "--out=out holds ckpt.pt, not an earlier export: pass a new folder"),
                         ("out/ckpt.pt", "--out=out/ckpt.pt is a file: --out is the folder to write")):
        with pytest.raises(SystemExit) as e:
            export_main(["--ckpt=out", f"--out={out}"])
        assert str(e.value.code) == f"error: {message}" + (" (it is replaced whole)" if out == "out" else "")
    assert os.listdir(tmp_path / "out") == ["ckpt.pt"] and (tmp_path / "out" / "ckpt.pt").read_bytes() == before
    # a model that fails to load, or a write that fails, leaves nothing behind
    with pytest.raises(SystemExit, match="unknown model 'missing'"):
        export_main(["--ckpt=missing", "--out=hf-new"])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(SystemExit) as e:
        export_main(["--ckpt=out", "--out=hf-new"])
    assert e.value.code == "error: could not write hf-new (No space left on device); nothing was written"
    assert sorted(os.listdir(tmp_path)) == ["empty", "out"]


@pytest.mark.parametrize("name", ["/models/gpt2-medium", "./gpt2-folder", "../gpt2-folder", "models/gpt2",
                                  "path/to/gpt2-medium", "~/gpt2-medium-missing"])
def test_missing_local_folder_is_no_such_folder_not_a_hub_download(tmp_path, monkeypatch, name):
    from inheritune.hf import ModelLoadError
    from inheritune.source import open_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # "models/gpt2" is under an existing folder: a path, not an org/name Hub id
    with pytest.raises(ModelLoadError) as e:
        open_source(name)
    assert str(e.value).startswith(f"no such folder: {name} ")


def test_hub_name_offline_says_how_to_download_with_hf(tmp_path, monkeypatch):
    from inheritune.hf import ModelLoadError
    from inheritune.source import open_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        open_source("gpt2-medium")  # HF_HUB_OFFLINE=1 in the tests and nothing in the cache
    assert "`hf download openai-community/gpt2-medium --local-dir gpt2-medium`" in str(e.value)
    assert "huggingface-cli" not in str(e.value)
    with pytest.raises(SystemExit) as e:  # through a script: one line
        sample.main(["--init_from=./gpt2-folder", "--device=cpu"])
    assert str(e.value.code).startswith("error: no such folder: ./gpt2-folder ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors on a machine without CUDA")
def test_cuda_device_without_cuda_stops_sample_bench_and_bench_gpu_at_once(char_run):
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from=out", "--device=cuda"])
    assert str(e.value.code).startswith("error: device='cuda' but ") and "--device=cpu" in str(e.value.code)
    result = run_script("bench.py", "--device=cuda", "--quick=True", cwd=char_run)
    assert result.returncode == 1 and result.stderr.startswith("error: device='cuda' but ")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    result = subprocess.run(["bash", os.path.join(REPO, "bench_gpu.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: bench_gpu.sh needs a CUDA GPU and a CUDA build of torch; "
                                                  "on a CPU run python bench.py"]


def test_an_argument_that_is_not_a_python_config_file_is_one_line(char_run):
    (char_run / "data" / "tiny_char" / "notes.txt").write_text("batch_size = 4\n")
    for script, arg, message in (
            ("sample.py", "out", "out is a folder, not a config file: flags are --key=value, e.g. --init_from=out"),
            ("sample.py", "out/ckpt.pt", "out/ckpt.pt is a checkpoint, not a config file: flags are --key=value, "
                                         "e.g. --init_from=out/ckpt.pt"),  # a binary file, never read as text
            ("train.py", "data/tiny_char/meta.json", "data/tiny_char/meta.json is not a Python config file: a "
                                                     "config file is a .py of assignments")):
        assert_one_line_error(run_script(script, arg, cwd=char_run), f"error: {message}")
    given = dict(init_from="scratch", out_dir="out", batch_size=1)
    with pytest.raises(configurator.ConfigError, match="e.g. --init_from=out or --out_dir=out$"):
        configurator.overrides(given, ["out"])  # train.py: a folder is a model to start from or the run's folder
    with pytest.raises(configurator.ConfigError, match="data/tiny_char/notes.txt is not a Python config file"):
        configurator.overrides(given, ["data/tiny_char/notes.txt"])  # Python inside, but not a .py: refused too


def test_usage_names_the_script_as_run_from_here(tmp_path, monkeypatch):
    prepare = os.path.join(REPO, "data", "shakespeare", "prepare.py")
    for cwd, shown in ((REPO, "data/shakespeare/prepare.py"), (os.path.dirname(prepare), "prepare.py"),
                       (str(tmp_path), prepare)):  # outside the repository: the whole path
        monkeypatch.chdir(cwd)
        assert configurator.help_text({"out_dir": ""}, prepare).startswith(f"usage: python {shown} [config.py ...]")
    assert configurator.help_text({"out": ""}, configurator.__file__).startswith("usage: python -m inheritune.")


def test_evaluate_without_the_tasks_datasets_names_the_task_in_one_line(tmp_path):
    pytest.importorskip("lm_eval")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))  # conftest sets HF_*_OFFLINE=1
    os.makedirs(tmp_path / "hf" / "hub" / "datasets--someone--other")  # a cache with another dataset: looked into
    result = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), "--model=no-such-run", "--tasks=paper",
                             "--device=cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # refused at the first task's dataset, before the model is looked for
    assert_one_line_error(result, "error: task arc_easy: ",  # then datasets' words, e.g. "Couldn't reach ..."
                          "the task needs its dataset from the Hub (HF_HUB_OFFLINE is set) or in the Hugging Face "
                          "cache (HF_HOME)")


def test_analyze_rank_tokenizer_errors_say_it_once(char_run):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from analyze_rank import main as analyze_rank
    from inheritune.data import write_tokens

    (char_run / "data" / "gpt2").mkdir()
    write_tokens(str(char_run / "data" / "gpt2" / "val.bin"), np.arange(2000) % 50257)
    write_meta(str(char_run / "data" / "gpt2"), {"tokenizer": "gpt2", "vocab_size": 50257})
    with pytest.raises(SystemExit) as e:
        analyze_rank(["--model=out", "--data=data/gpt2/val.bin", "--num_samples=2", "--seq_len=8"])
    assert e.value.code == ("error: data/gpt2 was tokenized with GPT-2 BPE, but out uses a character-level tokenizer: "
                            "its token ids mean other words to the model; prepare the data with the model's tokenizer")
    # a model that model.py does not implement, saved without tokenizer files: transformers makes a tokenizer of
    # special tokens only, which must not tokenize a text into nothing
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     vocab_size=96)).save_pretrained(char_run / "neox")
    (char_run / "text.txt").write_text("To be, or not to be, that is the question. " * 20)
    with pytest.raises(SystemExit) as e:
        analyze_rank(["--model=neox", "--data=text.txt", "--num_samples=2", "--seq_len=8"])
    assert e.value.code.startswith("error: cannot tokenize text.txt: neox has no tokenizer files")
    assert e.value.code.count("tokenizer files") == 1


def test_demo_refusing_an_out_dir_names_the_flags_that_differ(tmp_path):
    repo = tmp_path / "repo"  # the demo runs the train.py beside it: here one that fails at once
    (repo / "data" / "shakespeare_char").mkdir(parents=True)
    (repo / "data" / "shakespeare_char" / "meta.json").write_text("{}")
    (repo / "train.py").write_text("raise SystemExit(1)\n")
    (repo / "demo.py").symlink_to(os.path.join(REPO, "demo.py"))

    def demo(*args):
        return subprocess.run([sys.executable, str(repo / "demo.py"), "--out_dir=out-demo", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    first = demo("--n_embd=64")
    command = next(line for line in first.stdout.splitlines() if line.startswith("== reference: "))
    (tmp_path / "out-demo" / "reference").mkdir(parents=True)  # as if that reference stage had finished
    (tmp_path / "out-demo" / "reference" / "done.json").write_text(json.dumps({"command": command[14:].split()}))
    assert_one_line_error(demo("--n_embd=32"), "error: out-demo holds a demo.py run with other settings (its reference "
                          "stage ran train.py with n_embd=64 there, 32 here): pass another --out_dir, or remove "
                          "out-demo to start over")


def test_bench_modes_take_key_value_flags(tmp_path):
    result = run_script("bench.py", "--what=rank", "--quick=True", cwd=tmp_path)  # 4 x 4 heads, N=20, T=50: seconds
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("model: 4 layers x 4 heads, n_embd 128, random weights; N=20, T=50; ")
    assert "k*/m* disagreements between the two: 0 of 640" in result.stdout
    assert_one_line_error(run_script("bench.py", "--what=speed", cwd=tmp_path),
                          "error: what='speed': use one of throughput, memory, rank")
    assert_one_line_error(run_script("bench.py", "--what=memory", "--data_dir=nowhere", cwd=tmp_path),
                          "error: no dataset at nowhere: run python data/shakespeare/prepare.py first")
    assert_one_line_error(run_script("bench.py", "--quick", cwd=tmp_path), "--quick has no value: write --quick=VALUE")
