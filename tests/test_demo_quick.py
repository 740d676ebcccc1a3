"""The README's quick demo (`python demo.py --quick=True`), stopped and run again: a file apart from test_demo.py so
that the two long demo tests can run on two xdist workers."""

import os
import signal
import subprocess
import sys

from test_readme import check_all_ran, fresh_copy, load_json, run_readme

from inheritune.checkpoint import load_checkpoint
from inheritune.run import run_finished


def test_quick_demo_stopped_and_run_again_equals_an_uninterrupted_one(tmp_path):
    """--quick=True: the whole protocol at small sizes. A stage stopped mid-run (SIGTERM to the stage, as a preempted
    job gets it; then Ctrl-C, SIGINT to the demo's process group) saves and exits 0 but is not taken as done: the demo
    says in one line how to continue, the same command continues the stage from its checkpoint, and the results
    equal an uninterrupted demo's."""
    user_repo = fresh_copy(str(tmp_path / "fresh-clone"))
    result = run_readme("python demo.py --quick=True", user_repo, timeout=900)
    straight = load_json(os.path.join(user_repo, "out-demo-quick", "results.json"))
    assert (straight["reference_layers"], straight["reference_steps"], straight["scratch_2x_steps"]) == (4, 40, 80)
    assert straight["settings"]["n_embd"] == 64 and "wrote out-demo-quick/results.json" in result.stdout
    argv = [sys.executable, "demo.py", "--quick=True", "--reference_iters=40", "--batch_size=4", "--eval_iters=2",
            "--out_dir=out-stopped"]

    def stopped(stage, stop):
        """Run the demo again, stop it at its stage's first checkpoint (iter 10 of 40); its last line."""
        demo = subprocess.Popen(argv, cwd=user_repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        lines = iter(demo.stdout)
        next(line for line in lines if line.startswith(f"== {stage}: "))
        next(line for line in lines if line.startswith("saved checkpoint at iter 10 "))
        stop(demo.pid)
        output = demo.communicate(timeout=900)[0]
        out_dir = os.path.join(user_repo, "out-stopped", stage)
        assert demo.returncode == 1 and 10 <= load_checkpoint(out_dir, weights=False)["iter_num"] < 40
        assert not run_finished(out_dir) and not os.path.exists(os.path.join(out_dir, "done.json"))
        return output.splitlines()[-1]

    def stage_process(demo_pid):  # the demo's one child: the stage's train.py
        return int(open(f"/proc/{demo_pid}/task/{demo_pid}/children").read())

    again = ("see its output above); run python demo.py --quick=True --reference_iters=40 --batch_size=4 "
             "--eval_iters=2 --out_dir=out-stopped again to continue (finished stages are reused)")
    assert stopped("reference", lambda pid: os.kill(stage_process(pid), signal.SIGTERM)) == (
        f"error: the reference stage stopped before its end ({again}")
    assert stopped("inheritune", lambda pid: os.killpg(pid, signal.SIGINT)) == (
        f"error: the inheritune stage stopped before its end ({again}")
    result = subprocess.run(argv, cwd=user_repo, capture_output=True, text=True, timeout=900)
    inheritune = os.path.join(user_repo, "out-stopped", "inheritune")
    assert result.returncode == 0 and f"continuing the run in {inheritune} from its checkpoint" in result.stdout
    continued = load_json(os.path.join(user_repo, "out-stopped", "results.json"))
    assert {k: v for k, v in continued.items() if k != "settings"} == {k: v for k, v in straight.items()
                                                                       if k != "settings"}
    check_all_ran("test_quick_demo_stopped_and_run_again_equals_an_uninterrupted_one")
