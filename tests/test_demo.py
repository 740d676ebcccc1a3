"""The README's Quickstart demo and the commands of docs/demo.md and docs/functional_test.md that run on the demo's
reference, shrunk: test_readme.py's TABLE says how; a file of its own, so that it runs beside test_readme.py."""

import os

from test_readme import check_all_ran, fresh_copy, load_json, run_readme


def test_demo(tmp_path):
    user_repo = fresh_copy(str(tmp_path / "fresh-clone"))  # demo.py prepares the corpus itself
    result = run_readme("python demo.py", user_repo)
    results = load_json(os.path.join(user_repo, "out-demo", "results.json"))
    assert results["reference_layers"] == 4 and results["reference_steps"] == 8
    l = results["inherited_layers"]  # the paper's protocol: rounds of the reference's T steps, from its first L/2
    rounds = (l - 2) // 2 + 1
    assert results["inherited_steps"] == 8 * rounds and len(results["inherited_rounds"]) == rounds
    assert (results["scratch_steps"], results["scratch_2x_steps"]) == (8, 16) and results["scratch_layers"] == l
    assert os.path.getsize(os.path.join(user_repo, "out-demo", "losses.png")) > 0
    assert "wrote out-demo/results.json and out-demo/losses.png" in result.stdout
    assert "val @ Inheritune FLOPs" in result.stdout and "not included above" in result.stdout
    # the collapse of the reference (T = 8: records at iters 0, 2, 4, 6, 8) and of Inheritune over training
    assert [p["iter"] for p in results["reference_collapse"]] == [0, 2, 4, 6, 8]
    assert all(p["n_layer"] == 4 and 1 <= p["min_max_rank"] for p in results["reference_collapse"])
    assert results["inheritune_collapse"][0]["n_layer"] == 2 and len(results["collapse"]) == 2
    for stage in ("reference", "inheritune"):
        assert os.path.getsize(os.path.join(user_repo, "out-demo", f"collapse-{stage}.png")) > 0
    result = run_readme("python demo.py --baselines=True", user_repo)  # the finished stages are reused
    assert result.stdout.count("done earlier, reusing") == 5
    results = load_json(os.path.join(user_repo, "out-demo", "results.json"))
    assert {"stacking_val_loss", "hybrid_stacking_val_loss", "half_width_val_loss", "kd_val_loss"} <= results.keys()
    assert (results["stacking_steps"], results["hybrid_stacking_steps"], results["half_width_steps"],
            results["kd_steps"]) == (16, 8, 8, 4)
    # a longer reference for collapse's onset (N = 16: a record every 1 step), the other stages reused
    result = run_readme("python demo.py --onset_iters=2000", user_repo)
    results = load_json(os.path.join(user_repo, "out-demo", "results.json"))
    assert [p["iter"] for p in results["reference_long_collapse"]] == list(range(17)) and len(results["collapse"]) == 3
    assert "reference trained 16 steps" in result.stdout
    assert os.path.getsize(os.path.join(user_repo, "out-demo", "collapse-reference_long.png")) > 0
    # the functional test in miniature on the demo's reference: students of its blocks 0-1, 2-3, the 2 most collapsed
    # and random init, each trained the same steps
    run_readme("python layer_test.py --model=out-demo/reference --k=2 --groups=0-1,2-3,4-5,6-7,collapsed,random "
               "--steps=500 --batch_size=20 --learning_rate=2e-3 --out_dir=out-layer-test-demo", user_repo)
    report = load_json(os.path.join(user_repo, "out-layer-test-demo", "results.json"))
    students = {s["name"]: s for s in report["students"]}
    assert {"blocks_0_1", "blocks_2_3", "random"} <= students.keys() and len(report["max_rank"]) == 4
    assert {s["steps"] for s in students.values()} == {4} and len({s["flops"] for s in students.values()}) == 1
    check_all_ran("test_demo")
