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
    assert configurator.configure_or_exit(defaults, [str(tmp_path / "cfg.py")]) == dict(defaults, batch_size=32,
                                                                                           learning_rate=1.0)


def test_ranges_beside_module_global_defaults(tmp_path):
    # train.py's style: defaults are module globals, each range at the start of the comment beside it
    script = tmp_path / "script.py"
    script.write_text("batch_size = 12  # [1, inf): sequences per step\ndropout = 0.0  # [0, 1)\n"
                      "top_k = None  # [1, inf); None: all\nscale = None  # [0.0, 1]\n")
    defaults = dict(batch_size=12, dropout=0.0, top_k=None, scale=None)
    assert configurator.overrides(defaults, ["--batch_size=1", "--dropout=0", "--top_k=None", "--scale=1"],
                                  str(script)) == dict(batch_size=1, dropout=0.0, top_k=None, scale=1)
    for flag, message in [("--batch_size=0", "--batch_size=0 is outside [1, inf): sequences per step"),
                          ("--dropout=1", "--dropout=1 is outside [0, 1)"),
                          ("--dropout=-1e-9", "--dropout=-1e-09 is outside [0, 1)"),
                          ("--top_k=0.5", "--top_k=0.5 is not an integer: [1, inf); None: all"),
                          ("--top_k=True", "--top_k=True is not an integer: [1, inf); None: all"),
                          ("--scale=0.5j", "--scale=0.5j is not a number: [0.0, 1]"),
                          ("--scale=1.5", "--scale=1.5 is outside [0.0, 1]")]:
        with pytest.raises(configurator.ConfigError) as e:
            configurator.overrides(defaults, [flag], str(script))
        assert str(e.value) == message
    (tmp_path / "cfg.py").write_text("dropout = float('nan')\n")  # a config file's value: the same check
    with pytest.raises(configurator.ConfigError, match=r"^dropout=nan \(in .*cfg.py\) is outside \[0, 1\)$"):
        configurator.overrides(defaults, [str(tmp_path / "cfg.py")], str(script))
    script.write_text("batch_size = 12  # [16, inf): a fork's typo\n")  # a default outside its own range
    with pytest.raises(configurator.ConfigError, match=r"batch_size=12 \(the script's default\) is outside \[16, inf"):
        configurator.overrides(dict(batch_size=12), [], str(script))


@pytest.mark.parametrize("text, message", [
    ("batch_size = 4\nlearning_rate = (1e-3\n", "cfg.py:2: '(' was never closed"),
    ("batch_size = 4\nmax_iters = 10 10\n", "cfg.py:2: invalid syntax"),
    ("batch_size = 4\n\nmax_iters = n * 2\n", "cfg.py:3: NameError: name 'n' is not defined"),
])
def test_a_config_file_that_fails_is_one_line_with_its_file_and_line(tmp_path, text, message):
    (tmp_path / "cfg.py").write_text(text)
    r = subprocess.run([sys.executable, "train.py", str(tmp_path / "cfg.py")], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / message}\n", r.stderr
