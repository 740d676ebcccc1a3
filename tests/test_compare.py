"""Training compute in log.jsonl (tokens and FLOPs per eval: the formula, across a growth, continued exactly by a
resume) and compare.py (matched steps / FLOPs against a hand interpolation, the reference's cost, bad input)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import compare
from inheritune.checkpoint import save_checkpoint
from conftest import read_log, train
from inheritune.data import load_meta
from model import GPT, GPTConfig

FAST = ["--gradient_accumulation_steps=2"]
TOKENS_PER_ITER = 2 * 8 * 32  # gradient_accumulation_steps * TINY's batch_size * block_size
GROW = ["--init_from=inherit", "--n_layer=2", "--grow_every=10", "--eval_interval=10", "--target_val_loss=0.5"]


def flops_per_token(char_data, n_layer):
    config = GPTConfig(n_layer=n_layer, n_head=2, n_embd=32, block_size=32, bias=False,
                       vocab_size=load_meta(char_data)["vocab_size"])
    return GPT(config).flops_per_token(32)


def evals(out_dir):
    return [r for r in read_log(out_dir) if "val_loss" in r]


@pytest.fixture(scope="module")
def runs(char_data, tmp_path_factory):
    """A 4-layer reference (30 steps), a run inherited from it and grown 2 -> 4 layers at step 10 (18 steps), and a
    4-layer run from scratch (24 steps, evals every 8)."""
    root = tmp_path_factory.mktemp("runs")
    train(char_data, root / "ref", *FAST, "--n_layer=4", "--max_iters=30", "--eval_interval=30", "--learning_rate=3e-3")
    train(char_data, root / "grow", *FAST, *GROW, f"--reference={root / 'ref'}", "--max_iters=18")
    train(char_data, root / "scratch", *FAST, "--n_layer=4", "--max_iters=24", "--eval_interval=8")
    return {name: str(root / name) for name in ("ref", "grow", "scratch")}


def test_eval_records_carry_tokens_and_flops_of_all_rounds(char_data, runs):
    f2, f4 = flops_per_token(char_data, 2), flops_per_token(char_data, 4)
    grow = evals(runs["grow"])
    assert [(r["iter"], r["n_layer"]) for r in grow] == [(0, 2), (10, 2), (18, 4)]
    assert [r["tokens"] for r in grow] == [0, 10 * TOKENS_PER_ITER, 18 * TOKENS_PER_ITER]
    round_1 = 10 * TOKENS_PER_ITER * f2  # 10 steps at 2 layers, then 8 at 4
    assert [r["flops"] for r in grow] == [0, round_1, round_1 + 8 * TOKENS_PER_ITER * f4]
    scratch = evals(runs["scratch"])
    assert [(r["iter"], r["tokens"], r["flops"]) for r in scratch] == [
        (i, i * TOKENS_PER_ITER, i * TOKENS_PER_ITER * f4) for i in (0, 8, 16, 24)]
    assert all(isinstance(r["flops"], float) for r in grow + scratch)  # big runs pass int64 (pandas would wrap)
    ckpt = torch.load(os.path.join(runs["grow"], "ckpt.pt"), weights_only=True)
    assert ckpt["compute"] == {"tokens": grow[-1]["tokens"], "flops": grow[-1]["flops"]}


def test_resume_continues_the_counts_exactly(char_data, runs, tmp_path):
    args = [*FAST, *GROW, f"--reference={runs['ref']}"]
    train(char_data, tmp_path / "stopped", *args, "--max_iters=13")
    train(char_data, tmp_path / "stopped", *args[:len(FAST)], *GROW[1:], "--init_from=resume", "--max_iters=18")
    straight, resumed = evals(runs["grow"]), evals(tmp_path / "stopped")
    assert resumed[-1] == straight[-1]  # iter 18: the same tokens, FLOPs and val loss

    # a checkpoint from before the counts: the resumed run logs none rather than counting from zero
    ckpt = torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)
    del ckpt["compute"]
    save_checkpoint(ckpt, str(tmp_path / "old" / "ckpt.pt"))
    train(char_data, tmp_path / "old", *FAST, *GROW[1:], "--init_from=resume", "--max_iters=20")
    assert [("flops" in r, "tokens" in r) for r in evals(tmp_path / "old")] == [(False, False)]
    with pytest.raises(compare.CompareError, match="without tokens and FLOPs .* re-run the training"):
        compare.read_evals(str(tmp_path / "old"))


def hand_interpolation(points, x):
    """y at x between the two points (x0, y0) <= x <= (x1, y1) that bracket it."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    return None


def test_compare_matches_steps_and_flops_and_shows_the_reference_cost(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compare.main([runs["grow"], runs["scratch"], "--out=figs/cmp.png", "--json=cmp.json"])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert (tmp_path / "figs" / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grow, scratch = result["runs"]
    g, s = evals(runs["grow"]), evals(runs["scratch"])
    assert result["matched_steps"] == 18 and result["matched_flops"] == g[-1]["flops"]
    assert grow["layers"] == [2, 4] and scratch["layers"] == [4]
    assert grow["params"] == scratch["params"] == GPT(GPTConfig(**torch.load(
        os.path.join(runs["scratch"], "ckpt.pt"), weights_only=True)["model_args"])).get_num_params(non_embedding=False)
    assert (grow["steps"], grow["tokens"], grow["flops"]) == (18, g[-1]["tokens"], g[-1]["flops"])
    assert grow["final_val_loss"] == g[-1]["val_loss"] and grow["best_val_loss"] == min(r["val_loss"] for r in g)
    assert grow["val_loss_at_matched_steps"] == grow["val_loss_at_matched_flops"] == g[-1]["val_loss"]
    # scratch: 18 steps lies between its evals at 16 and 24; the grown run's FLOPs between two of its evals too
    expected_steps = hand_interpolation([(r["iter"], r["val_loss"]) for r in s], 18)
    expected_flops = hand_interpolation([(r["flops"], r["val_loss"]) for r in s], g[-1]["flops"])
    assert scratch["val_loss_at_matched_steps"] == pytest.approx(expected_steps, rel=1e-12)
    assert scratch["val_loss_at_matched_flops"] == pytest.approx(expected_flops, rel=1e-12)
    assert s[1]["flops"] < g[-1]["flops"] < s[2]["flops"]  # a real interpolation, not an eval point

    ref = evals(runs["ref"])[-1]
    assert grow["reference"] == {"source": runs["ref"], "tokens": ref["tokens"], "flops": ref["flops"], "steps": 30}
    assert grow["flops_incl_reference"] == g[-1]["flops"] + ref["flops"] and scratch["reference"] is None
    assert f"reference cost: {ref['flops']:.3g} FLOPs" in printed and "not included above" in printed
    assert f"total incl. reference: {g[-1]['flops'] + ref['flops']:.3g} FLOPs" in printed
    assert "2->4" in printed and f"{scratch['val_loss_at_matched_flops']:.4f}" in printed

    # the other way round: the grown run's curve ends before the scratch run's 24 steps and its FLOPs
    result = compare.compare([runs["scratch"], runs["grow"]])
    assert result["runs"][1]["val_loss_at_matched_steps"] is None
    assert result["runs"][1]["val_loss_at_matched_flops"] is None
    assert compare.format_report(result).splitlines()[3].split()[-2:] == ["n/a", "n/a"]


def test_reference_without_a_log(runs, tmp_path):
    # a run inherited from a published model: its reference's training cost is not known, and the table says so
    shutil.copytree(runs["grow"], tmp_path / "from-gpt2")
    ckpt = torch.load(tmp_path / "from-gpt2" / "ckpt.pt", weights_only=True)
    ckpt["config"]["reference"] = "gpt2-medium"
    save_checkpoint(ckpt, str(tmp_path / "from-gpt2" / "ckpt.pt"))
    report = compare.format_report(compare.compare([str(tmp_path / "from-gpt2")]))
    assert "reference cost: not known: no log.jsonl at gpt2-medium (gpt2-medium; not included above)" in report
    assert "total incl. reference" not in report


def write_log(folder, records, extra_line=None):
    folder.mkdir()
    with open(folder / "log.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        if extra_line:
            f.write(extra_line)
    return str(folder)


@pytest.mark.parametrize("make,message", [
    (lambda d: (d.mkdir(), str(d))[1], "has no log.jsonl: pass the out_dirs of train.py runs"),
    (lambda d: write_log(d, [{"iter": 0, "loss": 4.0}]), "has no eval records (val_loss)"),
    (lambda d: write_log(d, [{"iter": 0, "train_loss": 4.0, "val_loss": 4.1, "lr": 0.0}]),
     "without tokens and FLOPs (written by a train.py from before they were counted): re-run the training"),
    (lambda d: write_log(d, [{"iter": 0, "val_loss": 4.1, "tokens": 0, "flops": 0}], '{"iter": 1, "lo'),
     "is damaged: line 2 is not JSON"),
])
def test_bad_run_folders(tmp_path, monkeypatch, make, message):
    monkeypatch.chdir(tmp_path)
    folder = make(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        compare.main([folder, "--json=cmp.json"])
    assert str(e.value.code).startswith("error: ") and message in str(e.value.code)
    assert "run" in str(e.value.code)  # the folder is named
    assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing written


def test_bad_arguments(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        compare.main(["--help"])
    assert e.value.code == 0 and "python compare.py out-inherit" in capsys.readouterr().out
    for argv, message in (([], "pass the out_dirs of the runs to compare"),
                          ([runs["grow"], "--out=cmp.jpg"], "out='cmp.jpg' is not a .png file path"),
                          ([runs["grow"], "--outt=x.png"], "unknown config key 'outt'"),
                          ([runs["grow"], "--metric=nope"], "has no number named 'nope' (--metric): it logs")):
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert message in str(e.value.code)
    (tmp_path / "damaged").mkdir()
    shutil.copy(os.path.join(runs["grow"], "log.jsonl"), tmp_path / "damaged")
    (tmp_path / "damaged" / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        compare.main(["damaged"])
    assert "damaged/ckpt.pt is damaged" in str(e.value.code)
    assert sorted(os.listdir(tmp_path)) == ["damaged"]


def collapse(it, n_layer, grads=False):
    """A collapse record as train.py logs it, with made-up metrics that name their layer and iteration."""
    layers = [{"layer": i, "max_rank": 10 * i + it, "distance_from_lazy": 1.0, "mean_rank": 1.0, "avg_mass": 1.0,
               "sink_share": (i + 1) / 10, "entropy": 1.0, "eps": 0.1 * (i + 1)} for i in range(n_layer)]
    if grads:
        for layer in layers:
            layer.update(grad_q=layer["eps"] / 2, bound_q=layer["eps"], grad_k=layer["eps"] / 3, bound_k=layer["eps"])
    return {"iter": it, "event": "collapse", "round": 0 if n_layer == 2 else 1, "n_layer": n_layer, "layers": layers}


def test_collapse_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    evals = [{"iter": i, "val_loss": 4.0 - i / 10, "tokens": i, "flops": 1.0 * i} for i in (0, 10, 20)]
    grow = write_log(tmp_path / "grow", [evals[0], collapse(0, 2), evals[1], collapse(10, 2), collapse(10, 2),
                                         evals[2], collapse(20, 3)])  # iter 10 twice, as a resumed run logs it
    write_log(tmp_path / "grads", [*evals, *(collapse(i, 2, grads=True) for i in (0, 10))])
    write_log(tmp_path / "plain", evals)
    compare.main(["grow", "grads", "plain", "--out=figs/cmp.png"])
    printed = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "figs")) == ["cmp-collapse-grads.png", "cmp-collapse-grow.png", "cmp.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in (tmp_path / "figs").iterdir())
    assert "wrote figs/cmp-collapse-grow.png: grow's MaxRank and sink share per layer over iterations\n" in printed
    assert "cmp-collapse-grads.png: grads's MaxRank and sink share per layer over iterations, grad_q against eps, " \
           "grad_k against eps" in printed and "plain" not in printed.split("wrote figs/cmp.png")[1]

    # the third layer, added at iter 20, is blank before it
    by_iter = compare.read_collapse(grow)
    iters, max_rank = compare.collapse_grid(by_iter, "max_rank")
    assert iters == [0, 10, 20]
    np.testing.assert_array_equal(max_rank, [[0, 10, 20], [10, 20, 30], [np.nan, np.nan, 40]])
    np.testing.assert_array_equal(compare.collapse_grid(by_iter, "sink_share")[1],
                                  [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [np.nan, np.nan, 0.3]])
    assert by_iter[0][0] == {"max_rank": 0, "sink_share": 0.1, "eps": 0.1}  # no gradient norms logged: none read
    assert compare.read_collapse(str(tmp_path / "grads"))[10][1] == pytest.approx(
        dict(max_rank=20, sink_share=0.2, eps=0.2, grad_q=0.1, bound_q=0.2, grad_k=0.2 / 3, bound_k=0.2))


@pytest.mark.parametrize("damage", [lambda r: r["layers"][1].pop("max_rank"), lambda r: r.update(layers=None),
                                    lambda r: r.update(layers=[]), lambda r: r["layers"][0].update(eps="small")])
def test_damaged_collapse_record(tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    record = collapse(10, 2)
    damage(record)
    write_log(tmp_path / "run", [{"iter": 0, "val_loss": 4.1, "tokens": 0, "flops": 0}, collapse(0, 2), record])
    with pytest.raises(SystemExit) as e:
        compare.main(["run"])
    assert e.value.code == (f"error: {os.path.join('run', 'log.jsonl')} is damaged: line 3 is not a collapse record "
                            f"(iter, and layers with layer, max_rank, sink_share, eps)")
    assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing written


def test_json_carries_every_eval_key_and_metric_plots_any_number(tmp_path, monkeypatch, capsys):
    # an eval metric of any JSON shape (per-layer lists, nested dicts): --json keeps it whole, --metric draws a number
    monkeypatch.chdir(tmp_path)
    records = [{"iter": it, "loss": 3.0 - it / 10, "lr": 1e-3 * (it + 1)} for it in range(3)]
    records += [{"iter": it, "train_loss": 2.0, "val_loss": 2.5 - it / 10, "tokens": 100 * it, "flops": 1e9 * it,
                 "layer_loss": [1.0 + it, 2.0 + it], "probe": {"kind": "made up", "depth": {"last": it / 2}}}
                for it in (0, 2)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for metric, points in (("layer_loss/1", [(0, 0.0, 2.0), (2, 2e9, 4.0)]), ("probe/depth/last", [(0, 0.0, 0.0),
                           (2, 2e9, 1.0)]), ("lr", [(0, None, 1e-3), (1, None, 2e-3), (2, None, 3e-3)])):
        assert compare.read_series("run", metric) == points
        compare.main(["run", f"--metric={metric}", "--out=m.png", "--json=m.json"])
        assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "m.json").read_text())["runs"][0]["evals"] == records[3:]
    with pytest.raises(SystemExit) as e:
        compare.main(["run", "--metric=probe/kind"])  # not a number
    assert str(e.value.code) == ("error: run/log.jsonl has no number named 'probe/kind' (--metric): it logs flops, "
                                 "iter, layer_loss, loss, lr, probe, tokens, train_loss, val_loss (a nested one by its "
                                 "path, e.g. key/0)")
