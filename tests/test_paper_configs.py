"""The paper's GPT-2 configs (config/*gpt2*.py): the settings the authors trained with, and the FineWeb-Edu, KD and
reference-first chains running a few steps on CPU, shrunk in size only (width, context, batch, steps; the depths
kept, since students take the references' blocks by index), on GPT-2-tokenized Shakespeare for their data."""

import glob
import os

import pytest
import torch

from conftest import REPO, read_log, run_in_process
from inherit import parse_layers
from inheritune.data import prepare_shakespeare

PAPER_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "config", "*gpt2*.py")))
FINEWEB = {"medium": (24, 1024, 16), "large32": (32, 1280, 20)}  # the references' (n_layer, n_embd, n_head)
SHRINK = ["--block_size=32", "--batch_size=2", "--gradient_accumulation_steps=1", "--max_iters=2", "--warmup_iters=1",
          "--lr_decay_iters=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu", "--compile=False",
          "--dtype=float32"]
NARROW = ["--n_embd=32", "--n_head=2"]  # for models from scratch; students take their width from the reference


def values(name):
    cfg = {}
    with open(os.path.join(REPO, "config", name)) as f:
        exec(f.read(), cfg)
    return cfg


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_train_as_the_authors_did(name):
    cfg = values(name)
    assert cfg["decay_embeddings"] is False and (cfg["beta1"], cfg["beta2"]) == (0.9, 0.95)
    # from scratch: the released code's scaled attention; inherited: the reference's (functional_gpt2_random: its
    # students', OpenAI's GPT-2 small)
    from_scratch = cfg["init_from"] == "scratch" and not name.startswith("functional")
    assert cfg.get("scale_attn_by_inverse_layer_idx", False) is from_scratch
    with open(os.path.join(REPO, "config", name)) as f:
        assert "# Sources: " in f.read()


def test_kd_and_fineweb_configs_hold_the_papers_values():
    kd = values("kd_gpt2_medium.py")
    assert kd["min_lr"] == 3e-5 == pytest.approx(kd["learning_rate"] / 10) and kd["reference"] == kd["teacher"]
    assert parse_layers(kd["inherit_layers"], kd["n_layer"], 24) == list(range(0, 24, 2)) + [18, 19, 20, 21]
    for size, (depth, width, heads) in FINEWEB.items():
        runs = [values(f"fineweb_{kind}_gpt2_{size}{tail}.py") for kind, tail in
                (("scratch", ""), ("inherit", ""), ("scratch", "_16l"))]
        for cfg in runs:
            assert cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"] == 61440
            assert (cfg["sampling"], cfg["max_iters"], cfg["dataset"]) == ("epochs", 100000, "fineweb_edu_100bt")
        assert (runs[0]["n_layer"], runs[0]["n_embd"], runs[0]["n_head"]) == (depth, width, heads)
        assert (runs[2]["n_layer"], runs[2]["n_embd"], runs[2]["n_head"]) == (16, width, heads)
        assert runs[1]["n_layer"] == 16 and runs[1]["reference"] == runs[0]["out_dir"]


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shakespeare_gpt2"))
    prepare_shakespeare(folder, "gpt2")
    return folder


def train_config(name, gpt2_data, out_dir, *args):
    shrink = [a for a in SHRINK if a.split("=")[0] not in {b.split("=")[0] for b in args}]
    result = run_in_process("train.py", [f"config/{name}.py", f"--data_dir={gpt2_data}", f"--out_dir={out_dir}",
                                         *shrink, *args])
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    assert ckpt["iter_num"] == 2 and [r["iter"] for r in read_log(out_dir) if "loss" in r] == [0, 1]
    return ckpt


@pytest.mark.parametrize("size", FINEWEB)
def test_fineweb_configs_run(size, gpt2_data, tmp_path):
    depth = FINEWEB[size][0]
    reference = train_config(f"fineweb_scratch_gpt2_{size}", gpt2_data, tmp_path / "ref", *NARROW)
    student = train_config(f"fineweb_inherit_gpt2_{size}", gpt2_data, tmp_path / "inherit",
                           f"--reference={tmp_path / 'ref'}")
    scratch = train_config(f"fineweb_scratch_gpt2_{size}_16l", gpt2_data, tmp_path / "random", *NARROW)
    assert [c["model_args"]["n_layer"] for c in (reference, student, scratch)] == [depth, 16, 16]
    assert all(c["model_args"]["scale_attn_by_inverse_layer_idx"] for c in (reference, student, scratch))
    assert all(c["config"]["sampling"] == "epochs" and c["config"]["beta2"] == 0.95 for c in (reference, student))
    assert student["inherit"]["layers"] == list(range(16))


def test_reference_first_chain_and_kd_configs_run(gpt2_data, tmp_path):
    # the paper's chain: config/scratch_gpt2_medium.py, then inherit from its out_dir with one flag (and the KD
    # student from the same 24-layer model as teacher and reference)
    ref = tmp_path / "out-scratch-gpt2-medium"
    train_config("scratch_gpt2_medium", gpt2_data, ref, *NARROW)
    student = train_config("inherit_gpt2_medium", gpt2_data, tmp_path / "inherit", f"--reference={ref}",
                           "--grow_every=1", "--lr_decay_iters=1", "--warmup_iters=0", "--target_val_loss=0.01")
    assert student["inherit"]["source_n_layer"] == 24 and student["model_args"]["scale_attn_by_inverse_layer_idx"]
    assert student["growth"]["layers"] == list(range(14))  # Algorithm 1's second round: 12 + 2 blocks
    kd = train_config("kd_gpt2_medium", gpt2_data, tmp_path / "kd", f"--teacher={ref}", f"--reference={ref}",
                      "--n_embd=32", "--n_head=2")
    assert kd["inherit"]["layers"] == list(range(0, 24, 2)) + [18, 19, 20, 21] and kd["config"]["min_lr"] == 3e-5
