"""layer_test.py: the paper's functional test (Sec. 2.1, Table 4) end to end on a tiny checkpoint of ours and on a
tiny Hugging Face Llama folder with its own tokenizer."""

import json

import torch

from conftest import assert_one_line_error, run_in_process, train

TINY = ["--k=2", "--steps=4", "--block_size=32", "--batch_size=4", "--eval_iters=2", "--num_samples=8"]


def layer_test(cwd, *args):
    return run_in_process("layer_test.py", args, cwd=cwd)  # its stages are subprocesses


def test_layer_test_trains_each_group_and_reports_steps_and_flops(char_data, tmp_path):
    train(char_data, str(tmp_path / "ref"), "--n_layer=6", "--max_iters=4", "--eval_interval=4", "--eval_iters=2")
    result = layer_test(tmp_path, "--model=ref", "--groups=collapsed,4+5,random", "--out_dir=lt", *TINY)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    with open(tmp_path / "lt" / "results.json") as f:
        report = json.load(f)
    reference = torch.load(tmp_path / "ref" / "ckpt.pt", map_location="cpu", weights_only=False)["model"]
    collapsed = sorted(sorted(range(6), key=lambda i: report["max_rank"][i])[:2])
    students = {s["name"]: s for s in report["students"]}
    expected = {"blocks_" + "_".join(map(str, collapsed)): collapsed, "blocks_4_5": [4, 5], "random": None}
    assert {name: s["blocks"] for name, s in students.items()} == expected
    for name, blocks in expected.items():
        s = students[name]
        assert s["steps"] == 4 and s["flops"] > 0 and s["val_loss_at_matched_steps"] is not None
        assert s["val_loss_at_matched_flops"] is not None
        if blocks is None:
            continue
        assert s["max_rank"] == [report["max_rank"][i] for i in blocks]
        init = torch.load(tmp_path / "lt" / f"inherit_{name}" / "ckpt.pt", map_location="cpu", weights_only=False)
        for j, i in enumerate(blocks):  # the student's block j at init is the reference's block i
            mine = {k: v for k, v in init["model"].items() if k.startswith(f"transformer.h.{j}.")}
            assert mine and all(torch.equal(v, reference[k.replace(f".h.{j}.", f".h.{i}.")]) for k, v in mine.items())
    # every student has the same shape: equal steps are equal FLOPs
    assert len({s["flops"] for s in students.values()}) == 1
    assert report["full_model_val_loss"] > 0 and "full model (6 blocks)" in result.stdout
    for name in expected:
        assert name in report["table"]

    # bad input: one line before any work
    for args, text in [(["--model=ref", "--k=7"], "k=7"), (["--model=ref", "--groups=0-2"], "0-2"),
                       (["--model=nowhere/model"], "nowhere"), (["--model=ref", "--groups=first,x"], "'x'")]:
        assert_one_line_error(layer_test(tmp_path, *args, "--out_dir=bad", *TINY[1:]), text)
    assert not (tmp_path / "bad").exists()


def test_layer_test_on_a_hugging_face_folder(make_hf_family, tmp_path):
    # SmolLM2's path: the bundled text tokenized with the folder's tokenizer, students read from its safetensors
    from test_open_models import save_tokenizer, shakespeare_bpe

    from inheritune.source import open_source

    folder = make_hf_family("llama", name="tiny-llama", num_hidden_layers=4, vocab_size=300, tie_word_embeddings=True)
    save_tokenizer(shakespeare_bpe(), folder, bos_token="<s>", eos_token="</s>")
    result = layer_test(tmp_path, f"--model={folder}", "--groups=first,random", "--out_dir=lt", *TINY)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads((tmp_path / "lt" / "results.json").read_text())
    meta = json.loads((tmp_path / "lt" / "data" / "meta.json").read_text())
    assert meta["tokenizer"] == "hf" and meta["tokenizer_source"] == folder
    assert report["depth"] == 4 and len(report["max_rank"]) == 4 and report["full_model_val_loss"] > 0
    students = {s["name"]: s for s in report["students"]}
    assert {"blocks_0_1", "random"} == students.keys()
    assert len({s["flops"] for s in students.values()}) == 1 and {s["steps"] for s in students.values()} == {4}
    full = open_source(folder).load().state_dict()
    for name, blocks in ((n, s["blocks"]) for n, s in students.items() if s["blocks"]):
        init = torch.load(tmp_path / "lt" / f"inherit_{name}" / "ckpt.pt", map_location="cpu", weights_only=False)
        for j, i in enumerate(blocks):  # the student's block j at init is the folder's block i, converted
            mine = {k: v for k, v in init["model"].items() if k.startswith(f"transformer.h.{j}.")}
            assert mine and all(torch.equal(v, full[k.replace(f".h.{j}.", f".h.{i}.")]) for k, v in mine.items())
    random = torch.load(tmp_path / "lt" / "random" / "ckpt.pt", map_location="cpu", weights_only=False)["model_args"]
    assert (random["n_layer"], random["norm"], random["mlp"], random["pos_emb"]) == (2, "rmsnorm", "swiglu", "rope")
