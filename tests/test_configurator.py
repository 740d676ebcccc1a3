"""configurator.py: --help lists every key with its default and the comment beside it; device checks."""

import subprocess
import sys

import pytest

from inheritune import configurator
from conftest import REPO

SCRIPTS = ["train.py", "inherit.py", "sample.py", "export_hf.py", "analyze_rank.py", "prepare_owt.py", "demo.py",
           "bench.py", "data/shakespeare/prepare.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_keys_and_exits_zero(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python {script} ")  # the path from the current folder (here: the repo)
    assert "has no value" not in r.stdout + r.stderr


def test_help_text_takes_the_comment_of_the_default_line():
    text = subprocess.run([sys.executable, "train.py", "-h"], cwd=REPO, capture_output=True, text=True,
                          timeout=120).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("--eval_iters "))
    assert "200" in line and "validation batches per eval" in line
    assert "--CKPT_NAME" not in text  # imported constants are not config keys
    text = subprocess.run([sys.executable, "inherit.py", "-h"], cwd=REPO, capture_output=True, text=True,
                          timeout=120).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("--n_layer "))
    assert "how many leading blocks to inherit" in line  # not the comment of a later `n_layer = ...` in the code


@pytest.mark.parametrize("device, message", [
    ("tpu", "is not a device"),
    ("cuda:0" if not __import__("torch").cuda.is_available() else "cuda:999", "cuda"),
])
def test_check_device_refuses_unusable_devices(device, message):
    with pytest.raises(configurator.ConfigError, match=message):
        configurator.check_device(device)
    configurator.check_device("cpu")


def test_overrides_are_only_what_files_and_flags_set(tmp_path):
    (tmp_path / "cfg.py").write_text("batch_size = 32\nlearning_rate = 1\n")
    defaults = dict(batch_size=12, learning_rate=6e-4, out_dir="out")
    given = configurator.overrides(defaults, [str(tmp_path / "cfg.py"), "--batch_size=64"])
    assert given == {"batch_size": 64, "learning_rate": 1.0}  # flags after files win; out_dir was not given
    assert configurator.configure(defaults, [str(tmp_path / "cfg.py")]) == dict(defaults, batch_size=32,
                                                                                   learning_rate=1.0)
