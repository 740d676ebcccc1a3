"""
Zero-shot evaluation through lm-evaluation-harness, the paper's downstream tables (arXiv 2404.08634, Tables 1, 7).

    python evaluate.py --model=out-inherit --tasks=paper
    python evaluate.py --model=gpt2-medium --tasks=paper_xl --device=cuda --batch_size=auto --out=results.json
    python evaluate.py --model=out-inherit --tasks=my_task --include_path=my_tasks/ --limit=100

--model is one of our checkpoints (exported to a temporary folder as export_hf.py writes it, so the numbers are
those of `lm_eval --model hf --model_args pretrained=FOLDER`), a Hugging Face model folder or a GPT-2 name;
--model_args passes lm-eval's other hf arguments (dtype=bfloat16, prefix_token_id=0, ...). --tasks is `paper`,
`paper_xl` or a comma list of lm-eval task names (docs/evaluation.md). lm-eval is optional: pip install 'lm-eval[hf]'.
"""

import difflib
import importlib
import json
import os
import sys
import tempfile

import torch
from huggingface_hub import constants

from export_hf import export
from inheritune.atomic import atomic_write
from inheritune.checkpoint import CheckpointError
from inheritune.configurator import ConfigError, check_device, configure_or_exit
from inheritune.data import DataError
from inheritune.hf import ModelLoadError
from inheritune.hub import hub_unreachable
from inheritune.source import HF_KINDS, open_source

PAPER_TASKS = ("arc_easy", "piqa", "sciq", "hellaswag", "lambada_openai")
PAPER_XL_TASKS = PAPER_TASKS + ("winogrande", "boolq", "wikitext")
TASK_SETS = {"paper": PAPER_TASKS, "paper_xl": PAPER_XL_TASKS}
# the metrics the paper reports for its tasks; other tasks show every metric lm-eval returns
PAPER_METRICS = {"arc_easy": ("acc",), "piqa": ("acc",), "sciq": ("acc",), "hellaswag": ("acc_norm",),
                 "lambada_openai": ("acc", "perplexity"), "winogrande": ("acc",), "boolq": ("acc",),
                 "wikitext": ("word_perplexity",)}

DEFAULTS = dict(
    model="out",  # our out_dir or .pt, a Hugging Face model folder, or a GPT-2 name
    tasks="paper",  # paper | paper_xl | a comma list of lm-eval task names
    include_path="",  # a folder of extra task YAMLs (lm-eval's --include_path)
    limit=0.0,  # [0, inf): examples per task for a check (0: all; below 1: that fraction); not for reported numbers
    batch_size="1",  # a number, or auto (lm-eval finds the largest that fits; on GPUs)
    num_fewshot=0,  # [0, inf): 0: zero-shot, as in the paper
    device="auto",  # auto: cuda when available, else cpu
    model_args="",  # more arguments of lm-eval's hf model, as lm_eval's --model_args: e.g. dtype=bfloat16
    out="",  # also write the results as JSON to this file
)


class EvalError(ValueError):
    pass


def expand_tasks(spec):
    """The lm-eval task names of --tasks: `paper`, `paper_xl` and lm-eval names, comma-separated, in order."""
    names = []
    for name in (n.strip() for n in spec.split(",")):
        for task in TASK_SETS.get(name, (name,) if name else ()):
            if task not in names:
                names.append(task)
    if not names:
        raise EvalError("--tasks is empty: pass paper, paper_xl or lm-eval task names separated by commas")
    return names


def check_tasks(names, known):
    """Raise EvalError naming the close known names for every name lm-eval does not know."""
    hints = []
    for name in [n for n in names if n not in known]:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hints.append(f"'{name}'" + (f" (close: {', '.join(close)})" if close else ""))
    if hints:
        raise EvalError(f"unknown lm-eval task {'; '.join(hints)}: see `lm_eval ls tasks`, or pass the folder of "
                        f"your task YAMLs with --include_path")


def cached_datasets():
    """The datasets in the Hugging Face caches: datasets' own (HF_DATASETS_CACHE, default HF_HOME/datasets) and the
    Hub's; a quick look that spares an offline run lm-eval's ten-second task index when there is nothing to find."""
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    found = os.listdir(datasets_cache) if os.path.isdir(datasets_cache) else []
    if os.path.isdir(constants.HF_HUB_CACHE):
        found += [name for name in os.listdir(constants.HF_HUB_CACHE) if name.startswith("datasets--")]
    return found


def hf_folder(source, workdir):
    """A Hugging Face folder for source: our checkpoint exported into workdir, an HF folder or Hub model as it is."""
    source = open_source(source)
    if source.kind in HF_KINDS:
        return source.path
    folder = os.path.join(workdir, "hf")
    export(source, folder)
    return folder


def check_tokenizer(folder, source, hflm_args):
    """lm-eval needs the folder's tokenizer, and its BOS or EOS (or prefix_token_id): say so now, not deep inside."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        failure = None if len(tokenizer) > len(set(tokenizer.all_special_tokens)) else "no vocabulary files"
    except Exception as e:  # noqa: BLE001 (missing files, an unknown tokenizer class: the same advice)
        failure = type(e).__name__
    if failure:  # transformers 5 makes an empty GPT-2 tokenizer, special tokens only, for a folder without files
        raise EvalError(f"{source} has no tokenizer that transformers can load ({failure}): lm-eval needs the "
                        f"model's Hugging Face tokenizer files in the folder")
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None and "prefix_token_id" not in hflm_args:
        raise EvalError(f"{source}'s tokenizer has no BOS or EOS token, which lm-eval puts before each text: pass "
                        f"--model_args=prefix_token_id=ID (e.g. the id of a newline)")


def table_rows(results, tasks):
    """[{task, metric, value, stderr}] from lm-eval's results["results"]: the paper's metrics for its tasks, every
    metric for others, in the order of tasks (a group's subtasks after them)."""
    rows = []
    for task, metrics in results.items():
        names = [k.split(",")[0] for k in metrics if "," in k and "_stderr" not in k]
        for name in PAPER_METRICS.get(task, names):
            key = next(k for k in metrics if k.split(",")[0] == name and "_stderr" not in k)
            stderr = metrics.get(key.replace(",", "_stderr,", 1))  # "N/A" where lm-eval has none
            rows.append({"task": task, "metric": name, "value": metrics[key],
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    order = {task: i for i, task in enumerate(tasks)}
    return sorted(rows, key=lambda row: order.get(row["task"], len(order)))


def evaluate(model, tasks, include_path="", limit=0.0, batch_size="1", num_fewshot=0, device="auto", model_args=""):
    """Run lm-eval's tasks on model; returns {"rows": table rows, "results": lm-eval's per-task results, ...}."""
    names = expand_tasks(tasks)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    batch = str(batch_size)
    if batch != "auto" and not (batch.isdigit() and int(batch) > 0):
        raise EvalError(f"batch_size={batch!r}: pass a positive number or auto")
    if limit > 1 and limit != int(limit):
        raise EvalError(f"limit={limit}: pass 0 (all), a count of examples, or a fraction below 1")
    limit = None if limit == 0 else int(limit) if limit >= 1 else limit  # lm-eval's: None (all), a count, a fraction
    if include_path and not os.path.isdir(include_path):
        raise EvalError(f"include_path={include_path!r} is not a folder: pass the folder that holds your task YAMLs")
    offline = hub_unreachable()  # then datasets reads its cache only, and a dataset not there fails at once
    if offline and not include_path and not cached_datasets():  # lm-eval's own tasks all read a Hub dataset
        raise EvalError(f"{', '.join(names)} need their datasets from the Hub ({offline}), and the Hugging Face cache "
                        f"(HF_HOME={constants.HF_HOME}) holds none: run once with network, or copy a cache that has them")
    try:
        import_hf_evaluate()
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import simple_parse_args_string
    except ImportError as e:
        raise EvalError(f"evaluate.py needs lm-evaluation-harness with its Hugging Face extra ({e.name} is not "
                        f"installed): pip install 'lm-eval[hf]'") from None
    hflm_args = simple_parse_args_string(model_args)
    if "pretrained" in hflm_args:
        raise EvalError("--model names the model; --model_args takes lm-eval's other hf arguments (no pretrained=)")
    task_manager = TaskManager(include_path=include_path or None)
    check_tasks(names, task_manager.all_tasks)
    load_task = getattr(task_manager, "load", None) or task_manager.load_task_or_group  # older lm-eval: only the latter
    for name in names:  # each task's dataset, before the model: unreachable and not cached is one line, not a traceback
        try:
            load_task(name)
        except ConnectionError as e:
            raise EvalError(f"task {name}: {e}: the task needs its dataset from the Hub ({offline or 'not reached'}) "
                            f"or in the Hugging Face cache (HF_HOME)") from None
    with tempfile.TemporaryDirectory(prefix="evaluate-") as workdir:
        folder = hf_folder(model, workdir)
        check_tokenizer(folder, model, hflm_args)
        # the model `lm_eval --model hf --model_args pretrained=FOLDER,MODEL_ARGS` builds (batch: a string there too)
        lm = HFLM.create_from_arg_obj({"pretrained": folder, **hflm_args}, {"batch_size": batch, "device": device})
        output = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                         task_manager=task_manager, log_samples=False)
    return {"model": model, "model_args": hflm_args, "tasks": names, "num_fewshot": num_fewshot, "limit": limit,
            "device": device, "lm_eval_version": lm_eval.__version__, "rows": table_rows(output["results"], names),
            "results": output["results"], "n-samples": output.get("n-samples")}


def main(argv=None):
    config = configure_or_exit(DEFAULTS, argv)
    try:
        report = evaluate(**{k: v for k, v in config.items() if k != "out"})
    except (EvalError, ConfigError, CheckpointError, ModelLoadError, DataError) as e:
        sys.exit(f"error: {e}")
    width = max([len("task")] + [len(row["task"]) for row in report["rows"]]) + 2
    print(f"{'task':<{width}}{'metric':<18}{'value':>14}{'stderr':>10}")
    for row in report["rows"]:
        stderr = "" if row["stderr"] is None else f"{row['stderr']:.4f}"
        print(f"{row['task']:<{width}}{row['metric']:<18}{row['value']:>14.4f}{stderr:>10}")
    if config["out"]:
        os.makedirs(os.path.dirname(os.path.abspath(config["out"])), exist_ok=True)
        with atomic_write(config["out"], "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"wrote {config['out']}")


def import_hf_evaluate():
    """Import Hugging Face's `evaluate` package, which some lm-eval tasks use (squadv2, humaneval, ...): this
    script's name would shadow it while its folder is on sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("evaluate")
    except ImportError:
        pass  # not installed: only the tasks that need it fail, saying so
    finally:
        sys.path[:] = saved


if __name__ == "__main__":
    main()
