"""Faults and requeues: a run killed at any moment (kill -9, a worker of a torchrun group) and started again with
the same command ends bit-identical to an uninterrupted one; a full disk or a damaged checkpoint is a one-line
error that leaves the good files as they were; a new run never replaces another run's checkpoint or log."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, assert_one_line_error, read_log, run_in_process, train, train_cmd

FAST = ["--gradient_accumulation_steps=1"]


def records(out_dir):
    """log.jsonl without the timing fields (which differ between any two runs) and without the run_start record."""
    return [{k: v for k, v in r.items() if k not in ("tok_per_s", "ms_per_step", "mfu")}
            for r in read_log(out_dir) if r.get("event") != "run_start"]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- the same command again continues; another run is refused -----------------------------------------------

def test_same_command_again_continues_the_run(char_data, tmp_path):
    args = [*FAST, "--eval_interval=3", "--dropout=0.1"]
    train(char_data, tmp_path / "straight", *args, "--max_iters=10")
    train(char_data, tmp_path / "run", *args, "--max_iters=6")
    r = train(char_data, tmp_path / "run", *args, "--max_iters=10")  # requeued with a longer max_iters
    assert "continuing the run" in r.stdout and "from its checkpoint at iter 6" in r.stdout
    assert records(tmp_path / "run") == records(tmp_path / "straight")  # the log goes on, nothing twice
    assert_same_weights(tmp_path / "run", tmp_path / "straight")
    log = (tmp_path / "run" / "log.jsonl").read_bytes()
    r = train(char_data, tmp_path / "run", *args, "--max_iters=10")  # a requeue after the run finished: no work
    assert "nothing to do: the run" in r.stdout and "complete at iter 10" in r.stdout
    assert (tmp_path / "run" / "log.jsonl").read_bytes() == log
    r = train(char_data, tmp_path / "run", *args, "--max_iters=5", "--init_from=resume", expect_rc=1)
    assert_one_line_error(r, "max_iters=5 is below", "(10)")


def test_new_run_never_replaces_another_runs_checkpoint(char_data, tmp_path):
    out = tmp_path / "out"
    train(char_data, out, *FAST, "--max_iters=4", "--eval_interval=4")
    before = {name: (out / name).read_bytes() for name in ("ckpt.pt", "log.jsonl")}
    r = train(char_data, out, *FAST, "--max_iters=4", "--eval_interval=4", "--n_layer=1", expect_rc=1)
    assert_one_line_error(r, "holds another run", "n_layer=2 there, 1 here", "--init_from=resume", "--out_dir",
                          "--overwrite=True")
    assert {name: (out / name).read_bytes() for name in before} == before and sorted(os.listdir(out)) == sorted(before)
    train(char_data, out, *FAST, "--max_iters=4", "--eval_interval=4", "--n_layer=1", "--overwrite=True")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["n_layer"] == 1 and ckpt["config"]["n_layer"] == 1
    log = read_log(out)  # a fresh log: the new run's start, then its records only
    assert log[0]["event"] == "run_start" and log[0]["config"]["n_layer"] == 1
    assert [r["iter"] for r in log if "loss" in r] == [0, 1, 2, 3]


def test_log_without_checkpoint(char_data, tmp_path):
    # an attempt killed before its first checkpoint left only log.jsonl: the same command starts the run again,
    # another is refused
    out = tmp_path / "out"
    train(char_data, out, *FAST, "--max_iters=3", "--eval_interval=100")
    (out / "ckpt.pt").unlink()
    r = train(char_data, out, *FAST, "--max_iters=3", "--eval_interval=100", "--learning_rate=1e-3", expect_rc=1)
    assert_one_line_error(r, "holds another run: the log.jsonl has learning_rate=0.0006 there, 0.001 here")
    r = train(char_data, out, *FAST, "--max_iters=3", "--eval_interval=100")
    assert "starting the run in" in r.stdout and "again" in r.stdout
    assert [r["iter"] for r in read_log(out) if "loss" in r] == [0, 1, 2]


def test_failed_run_leaves_no_out_dir(char_data, tmp_path):
    for args in (["--data_dir=" + str(tmp_path / "no-such-data")], ["--out_dir=" + str(tmp_path / "run.pt")]):
        r = subprocess.run(train_cmd(char_data, tmp_path / "out", *args), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and r.stderr.startswith("error: "), r.stderr[-2000:]
    assert os.listdir(tmp_path) == []


# -- damaged checkpoints --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    train(char_data, out, *FAST, "--max_iters=2", "--eval_interval=2")
    return out


def damage(src, dst, how):
    dst.mkdir()
    data = (src / "ckpt.pt").read_bytes()
    if how == "truncated":
        (dst / "ckpt.pt").write_bytes(data[:len(data) // 2])
        (dst / "ckpt.pt.tmp.4242").write_bytes(data[:100])  # what a killed save leaves: not a usable checkpoint
    elif how == "garbage":
        (dst / "ckpt.pt").write_bytes(os.urandom(4096))
    else:  # a readable file that is not one of our checkpoints
        torch.save({"weights": torch.ones(2)}, dst / "ckpt.pt")
    (dst / "log.jsonl").write_bytes((src / "log.jsonl").read_bytes())
    return {p.name: p.read_bytes() for p in dst.iterdir()}


@pytest.mark.parametrize("script, how", [
    ("train.py", "truncated"), ("train.py --init_from=resume", "garbage"), ("train.py --init_from=resume", "no-keys"),
    ("inherit.py", "truncated"), ("export_hf.py", "truncated"), ("sample.py", "truncated"),
    ("analyze_rank.py", "truncated"),
])
def test_damaged_checkpoint_is_named(char_data, trained, tmp_path, script, how):
    out = tmp_path / "out"
    files = damage(trained, out, how)
    name, *extra = script.split()
    args = {
        "train.py": train_cmd(char_data, out, *FAST, "--max_iters=4", "--eval_interval=2")[2:],
        "inherit.py": [f"--init_from={out}", "--n_layer=1", f"--out_dir={tmp_path / 'student'}"],
        "export_hf.py": [f"--ckpt={out}", f"--out={tmp_path / 'hf'}"],
        "sample.py": [f"--init_from={out}", "--max_new_tokens=5", "--device=cpu"],
        "analyze_rank.py": [f"--model={out}", f"--data={char_data}/val.bin", f"--out_dir={tmp_path / 'analysis'}",
                            "--device=cpu"],
    }[name]
    r = run_in_process(name, [*args, *extra])
    assert_one_line_error(r, f"{out / 'ckpt.pt'} is damaged", "No earlier checkpoint is kept")
    if how == "truncated":
        assert "ckpt.pt.tmp.4242 beside it is an unfinished save" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # nothing touched
    assert sorted(os.listdir(tmp_path)) == ["out"]  # and nothing written elsewhere


# -- a full disk during a save ------------------------------------------------------------------------------

FULL_DISK_ON_SECOND_SAVE = """
import contextlib, errno, os, runpy, sys
sys.path.insert(0, os.getcwd())
from inheritune import checkpoint
real_atomic_write, saves = checkpoint.atomic_write, []


@contextlib.contextmanager
def filling_disk(path, mode="wb"):
    saves.append(path)
    with real_atomic_write(path, mode) as f:
        if len(saves) < 2:
            yield f
            return

        class Full:  # the first 1000 bytes fit, then the disk is full
            written = 0

            def write(self, data):
                Full.written += len(data)
                if Full.written > 1000:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return f.write(data)

            def flush(self):
                f.flush()

        yield Full()


checkpoint.atomic_write = filling_disk
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_full_disk_during_a_save_keeps_the_checkpoint(char_data, tmp_path):
    out = tmp_path / "out"
    cmd = train_cmd(char_data, out, *FAST, "--max_iters=6", "--eval_interval=2")
    r = subprocess.run([sys.executable, "-c", FULL_DISK_ON_SECOND_SAVE, *cmd[1:]], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert_one_line_error(r, "could not save the checkpoint of iter 4", "No space left on device",
                          "the previous checkpoint (iter 2) is intact", "run the same command again")
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl"]  # no temporary file left
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 2
    r = train(char_data, out, *FAST, "--max_iters=6", "--eval_interval=2")  # space freed: the same command goes on
    assert "from its checkpoint at iter 2" in r.stdout
    train(char_data, tmp_path / "straight", *FAST, "--max_iters=6", "--eval_interval=2")
    assert_same_weights(out, tmp_path / "straight")
    assert records(out) == records(tmp_path / "straight")


# -- kill -9 at random moments, then the same command --------------------------------------------------------

SLOW_SAVES = """
import io, os, runpy, sys, time
sys.path.insert(0, os.getcwd())
from inheritune import checkpoint
real_save = checkpoint.torch.save


def slow_save(obj, f):  # write half, pause, write the rest: a window for the parent to kill us mid-save
    buf = io.BytesIO()
    real_save(obj, buf)
    data = buf.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    time.sleep(0.3)
    f.write(data[len(data) // 2:])


checkpoint.torch.save = slow_save
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def train_until_killed(cmd, out, kill_when):
    """Run cmd until kill_when(out, pid) holds, then SIGKILL it; the return code (-9 if it was killed)."""
    with open(out.parent / "output.txt", "a") as output:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                if kill_when(out, proc.pid):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.01)
            return proc.wait(timeout=60)
        finally:
            proc.kill()


def trained_iters(out):
    try:
        with open(out / "log.jsonl") as f:
            return max((json.loads(line)["iter"] for line in f if '"loss"' in line), default=-1)
    except (OSError, ValueError):  # not there yet, or a line half-written
        return -1


def test_kill_9_at_random_moments_then_same_command(char_data, tmp_path):
    args = [*FAST, "--max_iters=60", "--eval_interval=5", "--dropout=0.1"]
    train(char_data, tmp_path / "straight", *args)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", SLOW_SAVES, *train_cmd(char_data, out, *args)[1:]]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_points = [
        lambda o, pid, k=rng.randint(2, 15): trained_iters(o) >= k,  # mid-training
        lambda o, pid: os.path.exists(o / f"ckpt.pt.tmp.{pid}"),  # mid-save (this attempt's, not a stale file)
        lambda o, pid, k=rng.randint(25, 40): trained_iters(o) >= k,
        lambda o, pid, k=rng.randint(41, 55), t=rng.uniform(0, 0.2): trained_iters(o) >= k and not time.sleep(t),
    ]
    for kill_when in kill_points:
        assert train_until_killed(cmd, out, kill_when) == -signal.SIGKILL, f"seed {seed}: the run was not killed"
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"seed {seed}: " + result.stderr[-2000:]
    assert_same_weights(out, tmp_path / "straight")
    assert records(out) == records(tmp_path / "straight"), f"seed {seed}"


# -- torchrun: a worker SIGKILLed, the group restarted ------------------------------------------------------

def worker_pid(parent, rank):
    """The pid of the torchrun worker of the given RANK among parent's children, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry)
    return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_torchrun_restarts_a_killed_worker_and_ends_bit_identical(char_data, tmp_path):
    args = ["--max_iters=24", "--eval_interval=4", "--gradient_accumulation_steps=2", "--dist_timeout_s=60"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    straight = subprocess.run([*torchrun, *train_cmd(char_data, tmp_path / "straight", *args)[1:]], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "out"
    cmd = [*torchrun, "--max_restarts=3", *train_cmd(char_data, out, *args)[1:]]
    with open(tmp_path / "output.txt", "w") as output:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        killed, deadline = None, time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if killed is None and trained_iters(out) >= 9:  # past the checkpoint of iter 8
                killed = worker_pid(proc.pid, 1)
                if killed:
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "output.txt").read_text()
    assert killed and proc.returncode == 0, text[-4000:]
    assert text.count("continuing the run") == 1 and "connectFullMesh failed" not in text, text[-4000:]
    assert_same_weights(out, tmp_path / "straight")
    assert records(out) == records(tmp_path / "straight")


@pytest.mark.parametrize("rank, agent_store", [(0, False), (1, True)])
def test_rendezvous_that_cannot_complete_fails_within_dist_timeout(char_data, tmp_path, rank, agent_store):
    # one process of a world of two: its peer (rank 0: a worker; rank 1: torchrun's store) never comes
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if agent_store:
        env.update(TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")
    r = subprocess.run(train_cmd(char_data, tmp_path / "out", "--dist_timeout_s=2"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)  # dist_timeout_s, not gloo's 30 minutes
    assert r.returncode != 0, r.stderr[-2000:]
    # a one-line error, or (where gloo or the store client outwaits its timeout) the watchdog's traceback
    assert "not set up within dist_timeout_s=2" in r.stderr or "Timeout (0:00:04)!" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# -- a wrapper of train.py (demo.py, layer_test.py) -------------------------------------------------------------

@pytest.mark.parametrize("how", ["a stage that exits 0 short of its end", "Ctrl-C between stages"])
def test_a_wrappers_stopped_stage_is_not_done_and_says_how_to_continue_in_one_line(tmp_path, how):
    (tmp_path / "train.py").write_text("print('saved at iter 3 of 10 (preempted)')\n")  # exits 0, records no end
    stage_dir = str(tmp_path / "out" / "reference")
    (tmp_path / "wrapper.py").write_text(
        f"import os, signal, sys\nsys.path.insert(0, {REPO!r})\n"
        "from inheritune.run import run_stage, stop_in_one_line\n"
        "stop_in_one_line()\n"
        + ("os.kill(os.getpid(), signal.SIGINT)\n" if how.startswith("Ctrl-C") else "")
        + f"run_stage([{str(tmp_path / 'train.py')!r}, '--out_dir={stage_dir}'], {stage_dir!r}, 'out', '1')\n")
    result = subprocess.run([sys.executable, "wrapper.py", "--k=2"], cwd=tmp_path, capture_output=True, text=True)
    again = "run python wrapper.py --k=2 again to continue (finished stages are reused)"
    if how.startswith("Ctrl-C"):
        assert result.returncode == 1 and result.stderr == f"\nstopped (Ctrl-C): {again}\n"
    else:
        assert result.returncode == 1 and result.stdout.endswith("saved at iter 3 of 10 (preempted)\n")
        assert result.stderr == f"error: the reference stage stopped before its end (see its output above); {again}\n"
        assert not os.path.exists(os.path.join(stage_dir, "done.json"))
