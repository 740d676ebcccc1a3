"""The recipe on open models (issue 11): Llama / Qwen2 / Mistral folders made here with transformers' own classes,
a BPE tokenizer trained here on the bundled Shakespeare and saved in Hugging Face format inside the model folder,
data prepared with it (uint16) and with a vocabulary above 65,536 ids (uint32). Exact inheritance from a folder
(read block by block), train.py growth in both modes (one process and DDP), resume, export round trip with the
source's tokenizer files, sampling, the analysis through model.py equal to transformers' eager attentions, and
the bad inputs: unsupported architecture, missing shard, a tokenizer larger than the model, data of another
tokenizer."""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from inheritune import hf
import inherit
from inheritune.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from conftest import REPO, TINY, read_log, run_in_process
from inheritune.data import eval_offsets, evaluate_loss, load_meta, open_tokens, prepare_shakespeare, shakespeare_works
from inheritune.hf import ModelLoadError
from inheritune.source import load_model, load_pretrained
from test_families import RecordingSafeOpen, reference_through

LLAMA = dict(hidden_size=32, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=320, max_position_embeddings=64, tie_word_embeddings=False, rope_theta=500.0,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=16))
# conftest's TINY run settings without its model shape: an inherited model takes the reference's
INHERITED = [arg for arg in TINY if not arg.startswith(("--n_layer=", "--n_head=", "--n_embd="))]
RUN = [*INHERITED, "--eval_interval=10", "--learning_rate=3e-3", "--target_val_loss=0.5"]  # a target that makes it grow


# -- fixtures: a tokenizer, model folders that carry it, data prepared with it ----------------------------------

def shakespeare_bpe(vocab_size=300):
    """A byte-level BPE trained on three of the bundled works, with <s> / </s>, adding <s> like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text for _, text in shakespeare_works()[:3]], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def save_tokenizer(tok, folder, **special):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)


@pytest.fixture(scope="module")
def bpe():
    return shakespeare_bpe()


@pytest.fixture
def llama(make_hf_family, bpe):
    """A 4-layer Llama folder (GQA, untied head, Llama 3 rope scaling, sharded) with the Shakespeare tokenizer."""
    folder = make_hf_family("llama", shard="40KB", **LLAMA)
    save_tokenizer(bpe, folder, bos_token="<s>", eos_token="</s>")
    return folder


def corpus(folder, n_docs=40, chars=3000):
    """n_docs .txt documents cut from the bundled Shakespeare."""
    os.makedirs(folder, exist_ok=True)
    text = "".join(t for _, t in shakespeare_works()[3:6])
    for i in range(n_docs):
        with open(os.path.join(folder, f"{i:03d}.txt"), "w") as f:
            f.write(text[i * chars:(i + 1) * chars])
    return folder


def prepare(tokenizer, input, out_dir, val_fraction=0.1):
    import prepare_owt

    return prepare_owt.prepare(dataset="", subset="", split="train", revision="", text_column="text",
                               tokenizer=tokenizer, input=input, max_docs=0, val_fraction=val_fraction, seed=2357,
                               num_proc=1, out_dir=out_dir)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture
def llama_data(llama, docs, tmp_path):
    out = str(tmp_path / "data-llama")
    prepare(llama, docs, out)
    return out


def run(*argv, expect_rc=0, timeout=300):
    result = (run_in_process(argv[0], argv[1:]) if argv[0].endswith(".py") else
              subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout))
    assert result.returncode == expect_rc, result.stderr[-3000:] + result.stdout[-3000:]
    return result


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def inherit_cfg(**kw):
    return dict(inherit.DEFAULTS, device="cpu", dtype="float32", **kw)


# -- inheritance ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, kwargs", [
    ("llama", LLAMA),
    ("qwen2", dict(hidden_size=36, num_attention_heads=6, num_key_value_heads=3, intermediate_size=50, vocab_size=83,
                   num_hidden_layers=4, tie_word_embeddings=True)),
    ("mistral", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=12, intermediate_size=56,
                     vocab_size=71, num_hidden_layers=4, sliding_window=24)),
])
def test_inheriting_from_a_folder_is_exact(make_hf_family, family, kwargs):
    folder = make_hf_family(family, **kwargs)
    full = load_pretrained(folder).eval()
    layers = [0, 2, 2]
    student = inherit.inherit(inherit.Reference(folder), layers).eval()
    assert student.config == full.config.__class__(**{**vars(full.config), "n_layer": 3})
    assert "wpe" not in student.transformer
    for j, i in enumerate(layers):
        for (name, p), q in zip(student.transformer.h[j].named_parameters(), full.transformer.h[i].parameters()):
            assert torch.equal(p, q), (j, name)
    for name in ("transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert torch.equal(student.get_parameter(name), full.get_parameter(name))
    assert (student.lm_head.weight is student.transformer.wte.weight) == full.config.tie_embeddings
    repeated = [student.transformer.h[j].attn.c_attn.weight.data_ptr() for j in (1, 2)]
    assert repeated[0] != repeated[1]  # a repeated block is a copy
    idx = torch.randint(0, full.config.vocab_size, (2, full.config.block_size),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(student(idx)[0], reference_through(full, layers, idx))
        # from the model in memory, the same student
        assert torch.equal(inherit.inherit(full, layers).eval()(idx)[0], student(idx)[0])
    fresh = inherit.inherit(full, [0], fresh=["ln_f"])
    assert torch.equal(fresh.transformer.ln_f.weight, torch.ones(full.config.n_embd))
    with pytest.raises(inherit.InheritError, match="cannot leave wpe fresh: the reference has no position embedding"):
        inherit.inherit(full, [0], fresh=["wpe"])


def test_inherit_py_reads_only_the_chosen_blocks(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "safe_open", RecordingSafeOpen)
    RecordingSafeOpen.reads = []
    path, config = inherit.main(inherit_cfg(init_from=llama, n_layer=2, out_dir=str(tmp_path / "student")))
    blocks = {int(name.split(".")[2]) for name in RecordingSafeOpen.reads if name.startswith("model.layers.")}
    assert blocks == {0, 1} and "model.embed_tokens.weight" in RecordingSafeOpen.reads
    assert len(RecordingSafeOpen.reads) == len(set(RecordingSafeOpen.reads))
    student, ckpt = load_model(path)
    assert ckpt["inherit"]["source"] == llama and ckpt["inherit"]["source_n_layer"] == 4
    assert ckpt["model_args"]["pos_emb"] == "rope" and ckpt["model_args"]["rope_scaling"] == LLAMA["rope_scaling"]
    assert config["n_layer"] == 2 and student.config.n_layer == 2

    # one of our checkpoints of that shape: memory-mapped, the chosen tensors copied out
    from inheritune import source
    save_checkpoint({"model": load_pretrained(llama).state_dict(), "model_args": vars(student.config) | {"n_layer": 4}},
                    str(tmp_path / "llama.pt"))
    mapped, real_load = [], source.load_checkpoint

    def recording_load(path, **kwargs):
        mapped.append(kwargs.get("mmap") or kwargs.get("weights") is False)  # weights=False maps ckpt.pt too
        return real_load(path, **kwargs)

    monkeypatch.setattr(source, "load_checkpoint", recording_load)
    path, _ = inherit.main(inherit_cfg(init_from=str(tmp_path / "llama.pt"), layers="3,1",
                                       out_dir=str(tmp_path / "from-ckpt")))
    assert mapped and all(mapped)
    student, _ = load_model(path)
    full = load_pretrained(llama)
    assert torch.equal(student.transformer.h[0].mlp.c_gate.weight, full.transformer.h[3].mlp.c_gate.weight)
    assert torch.equal(student.transformer.h[1].attn.c_attn.weight, full.transformer.h[1].attn.c_attn.weight)


def test_a_reference_replaced_on_disk_lends_no_blocks(llama, tmp_path):
    full = load_pretrained(llama)
    path = str(tmp_path / "ref.pt")
    save_checkpoint({"model": full.state_dict(), "model_args": vars(full.config)}, path)
    for source in (path, llama):
        reference = inherit.Reference(source)
        read = reference.load([1]).transformer.h[0].attn.c_attn.weight
        assert torch.equal(read, full.transformer.h[1].attn.c_attn.weight)
        if source == path:  # a reference run that saved again
            save_checkpoint({"model": full.state_dict(), "model_args": vars(full.config)}, path)
        else:  # a shard rewritten
            shard = sorted(f for f in os.listdir(llama) if f.endswith(".safetensors"))[0]
            os.utime(os.path.join(llama, shard), ns=(0, 0))
        with pytest.raises(inherit.InheritError, match="changed on disk since it was opened"):
            inherit.grow(inherit.inherit(full, [0]), 1, "reference", reference, 1)


# -- train.py: inherit from a folder, grow, resume ----------------------------------------------------------------

def val_loss(model, data_dir):
    val = open_tokens(data_dir, "val")  # TINY's eval settings: block 32, 4 batches of 8, seed 1337
    return evaluate_loss(model.eval(), val, eval_offsets(val, 32, 4, 8, 1337), 32, 8, "cpu", contextlib.nullcontext())


def test_train_inherits_from_a_llama_folder_grows_in_restart_mode_and_resumes(llama, llama_data, tmp_path):
    out = tmp_path / "grow"
    args = ["train.py", f"--data_dir={llama_data}", f"--out_dir={out}", *RUN, "--gradient_accumulation_steps=1",
            "--init_from=inherit", f"--reference={llama}", "--n_layer=2", "--grow_every=10",
            "--stop_at_max_depth=False", "--max_iters=20"]  # trains on past growth's end, so a requeue has work
    run(*args)
    log = read_log(out)
    (grow,) = [r for r in log if r.get("event") == "grow"]
    assert grow["n_layer"] == 4 and grow["layers"] == [0, 1, 2, 3]
    # the round starts from exactly the model that inheriting 4 blocks directly gives
    assert grow["start_val_loss"] == pytest.approx(val_loss(inherit.inherit(load_pretrained(llama), [0, 1, 2, 3]),
                                                            llama_data), rel=1e-6)
    ckpt = load_checkpoint(str(out))
    assert ckpt["model_args"]["n_layer"] == 4 and ckpt["model_args"]["norm"] == "rmsnorm"
    assert ckpt["model_args"]["n_kv_head"] == 2 and not ckpt["model_args"]["tie_embeddings"]
    # the same command, longer: a requeue continues the Llama-shaped run from its checkpoint
    run(*args[:-1], "--max_iters=22")
    assert [r["iter"] for r in read_log(out) if "loss" in r][-1] == 21
    assert load_checkpoint(str(out))["iter_num"] == 22


def test_growth_under_ddp_continue_mode_reads_the_next_reference_blocks(llama, llama_data, tmp_path):
    out = tmp_path / "ddp"
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", f"--data_dir={llama_data}",
        f"--out_dir={out}", *RUN, "--gradient_accumulation_steps=2", "--init_from=inherit", f"--reference={llama}",
        "--n_layer=2", "--grow_every=10", "--grow_mode=continue", "--grow_init=reference", "--max_iters=20")
    ends = [r for r in read_log(out) if r.get("event") == "round_end"]
    assert [e["decision"] for e in ends] == ["grow", "max_iters reached"] and ends[1]["n_layer"] == 4
    (grow,) = [r for r in read_log(out) if r.get("event") == "grow"]
    assert grow["grow_init"] == "reference" and grow["layers"] == [0, 1, 2, 3]
    ckpt = load_checkpoint(str(out))
    assert ckpt["growth"]["layers"] == [0, 1, 2, 3] and len(ckpt["sampler"]) == 2 and ckpt["model_args"]["n_layer"] == 4


def test_inherit_py_measures_the_whole_reference_once(llama, llama_data, tmp_path):
    # the growth target: the whole reference's loss on train.py's validation windows (TINY's: block 32, 4 x 8)
    path, config = inherit.main(inherit_cfg(init_from=llama, data_dir=llama_data, block_size=32, eval_iters=4,
                                            batch_size=8, out_dir=str(tmp_path / "student")))
    ckpt = load_checkpoint(path)
    expected = val_loss(load_pretrained(llama), llama_data)
    assert ckpt["inherit"]["reference_val_loss"] == pytest.approx(expected, rel=1e-6)
    assert ckpt["model_args"]["block_size"] == 32 and config["data_dir"] == llama_data


# -- export, sample, analysis ---------------------------------------------------------------------------------------

def test_export_round_trip_keeps_the_source_tokenizer_and_sample_uses_it(llama, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import export_hf
    import sample

    path, _ = inherit.main(inherit_cfg(init_from=llama, layers="0,3", out_dir=str(tmp_path / "student")))
    student, _ = load_model(path)
    export_hf.main([f"--ckpt={tmp_path / 'student'}", f"--out={tmp_path / 'hf'}"])
    assert f"the tokenizer files of {llama}" in capsys.readouterr().out
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(llama, name), "rb") as a, open(tmp_path / "hf" / name, "rb") as b:
            assert a.read() == b.read(), name
    assert json.load(open(tmp_path / "hf" / "config.json"))["architectures"] == ["LlamaForCausalLM"]
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    idx = torch.tensor([tokenizer("ROMEO: But soft, what light through yonder window breaks?")["input_ids"]])
    assert idx[0, 0].item() == tokenizer.bos_token_id == 0
    with torch.no_grad():
        expected = student.eval()(idx)[0]
        assert ((theirs(idx).logits - expected).abs().max() / expected.abs().max()).item() < 1e-5

    config = dict(sample.DEFAULTS, init_from=str(tmp_path / "student"), start="ROMEO:", num_samples=2,
                  max_new_tokens=8, device="cpu", dtype="float32")
    samples = sample.sample(**config)
    assert len(samples) == 2 and all(s.startswith("ROMEO:") for s in samples)
    assert sample.sample(**config) == samples  # the same seed, the same text
    from inheritune.source import open_source
    from inheritune.tokenizer import tokenizer_from_meta

    tok = tokenizer_from_meta(open_source(llama).tokenizer_meta())
    assert sample.encode_start(tok, "ROMEO:") == [0] + tokenizer("ROMEO:", add_special_tokens=False)["input_ids"]


def test_analysis_through_model_py_equals_transformers_eager(llama, llama_data, tmp_path):
    from analyze_rank import GPTAttentions, HFAttentions, analyze, draw_windows, load_attention_model, main

    ours = load_attention_model(llama, "cpu")
    theirs = HFAttentions.load(llama, "cpu")
    assert isinstance(ours, GPTAttentions) and ours.n_layer == theirs.n_layer == 4
    windows = draw_windows(open_tokens(llama_data, "val"), 6, 40, 0)
    idx = torch.from_numpy(windows)
    mine, hfs = list(ours.layers(idx)), list(theirs.layers(idx))
    assert len(mine) == len(hfs) == 4
    for a, b in zip(mine, hfs):
        assert a.shape == b.shape == (6, 4, 40, 40) and (a - b).abs().max().item() < 1e-6
    records = [analyze(m, windows, batch_size=3, progress=False) for m in (ours, theirs)]
    for rec_ours, rec_theirs in zip(*records):
        for key in ("max_rank", "mean_rank", "avg_mass", "lazy"):
            assert rec_ours[key] == rec_theirs[key], key
        assert rec_ours["sink_share"] == pytest.approx(rec_theirs["sink_share"], abs=1e-6)

    # the command line records the fingerprint inherit.py --n_layer=auto checks, computed block by block there
    report = main([f"--model={llama}", f"--data={llama_data}/val.bin", "--num_samples=4", "--seq_len=32",
                   f"--out_dir={tmp_path / 'analysis'}"])
    assert report["model_kind"] == "gpt"
    assert report["model_fingerprint"] == model_fingerprint(load_pretrained(llama))
    assert report["model_fingerprint"] == inherit.Reference(llama).fingerprint()
    analysis = str(tmp_path / "analysis" / "analysis.json")
    path, _ = inherit.main(inherit_cfg(init_from=llama, n_layer="auto", analysis=analysis,
                                       out_dir=str(tmp_path / "auto")))
    assert load_checkpoint(path)["inherit"]["layers"] == list(range(report["suggested_n_layer"]))


# -- data: prepare_owt.py --tokenizer, uint16 and uint32 ---------------------------------------------------------

def test_prepare_with_the_model_tokenizer_records_its_conventions(llama, llama_data, docs, bpe):
    meta = load_meta(llama_data)
    assert {k: meta[k] for k in ("tokenizer", "tokenizer_source", "vocab_size", "bos_token_id", "eos_token_id",
                                 "bos_per_document", "eos_per_document")} == dict(
        tokenizer="hf", tokenizer_source=llama, vocab_size=300, bos_token_id=0, eos_token_id=1,
        bos_per_document=True, eos_per_document=True)
    assert "dtype" not in meta  # uint16, as every dataset before
    from inheritune.tokenizer import vocab_fingerprint

    assert meta["tokenizer_fingerprint"] == vocab_fingerprint(bpe.get_vocab())
    ids = np.fromfile(os.path.join(llama_data, "train.bin"), dtype=np.uint16)
    assert len(ids) == meta["train_tokens"] and (ids == 0).sum() == (ids == 1).sum() == meta["train_docs"]
    assert ids[0] == 0 and ids[-1] == 1
    # each document is <s> text </s>: the first one decodes back to one of the corpus files
    first = ids[1:np.flatnonzero(ids == 1)[0]]
    texts = [open(os.path.join(docs, name)).read() for name in sorted(os.listdir(docs))]
    assert bpe.decode(first.tolist()) in texts
    from inheritune.tokenizer import tokenizer_from_meta

    assert 1 not in tokenizer_from_meta(meta).encode("a</s>b")  # special tokens in the text are text


def test_vocabulary_above_65536_is_written_as_uint32(docs, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for name in sorted(os.listdir(docs)) for w in open(os.path.join(docs, name)).read().split()})
    vocab = {f"<unused{i}>": i for i in range(66000)}  # the corpus's words get ids above 65,535
    vocab |= {w: 66000 + i for i, w in enumerate(["<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    save_tokenizer(tok, str(tmp_path / "wordlevel"), unk_token="<unk>", eos_token="</s>")
    meta = prepare(str(tmp_path / "wordlevel"), docs, str(tmp_path / "data32"))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(vocab)
    assert not meta["bos_per_document"] and meta["eos_per_document"]
    assert os.path.getsize(tmp_path / "data32" / "train.bin") == 4 * meta["train_tokens"]
    tokens = open_tokens(str(tmp_path / "data32"), "train")
    assert tokens.dtype == np.uint32 and tokens.min() >= 66000 and (tokens == 66001).sum() == meta["train_docs"]
    # train.py trains on it (its windows and eval read uint32): a model from scratch with the 68k vocabulary
    out = tmp_path / "scratch32"
    run("train.py", f"--data_dir={tmp_path / 'data32'}", f"--out_dir={out}", *TINY, "--max_iters=2",
        "--gradient_accumulation_steps=1", "--eval_interval=2", "--eval_iters=1", "--batch_size=2")
    losses = [r["val_loss"] for r in read_log(out) if "val_loss" in r]
    assert losses and losses[0] == pytest.approx(np.log(len(vocab)), rel=0.05)  # a fresh model: ~uniform


# -- bad input: one line, nothing written ------------------------------------------------------------------------

def test_unsupported_architecture_is_one_line_in_every_script(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    import export_hf
    import sample

    neox = str(tmp_path / "neox")
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                     vocab_size=50, max_position_embeddings=32)).save_pretrained(neox)
    supported = "model.py implements GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM"
    with pytest.raises(ModelLoadError, match=supported):
        inherit.main(inherit_cfg(init_from=neox, out_dir=str(tmp_path / "never")))
    for main, argv in ((sample.main, [f"--init_from={neox}", "--device=cpu"]),
                       (export_hf.main, [f"--ckpt={neox}", f"--out={tmp_path / 'never'}"])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert supported in str(e.value.code) and "\n" not in str(e.value.code)
    prepare_shakespeare(str(tmp_path / "chars"), "char")
    result = run("train.py", f"--data_dir={tmp_path / 'chars'}", f"--out_dir={tmp_path / 'never'}", *INHERITED,
                 "--init_from=inherit", f"--reference={neox}", expect_rc=1)
    assert supported in one_line_error(result)
    assert not (tmp_path / "never").exists()


def test_missing_shard_stops_inherit_py(llama, tmp_path):
    shards = sorted(f for f in os.listdir(llama) if f.endswith(".safetensors"))
    os.remove(os.path.join(llama, shards[-1]))
    with pytest.raises(ModelLoadError, match=f"is missing {shards[-1]}"):
        inherit.main(inherit_cfg(init_from=llama, layers="0,1,2,3", out_dir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(make_hf_family, bpe, llama_data, tmp_path):
    import sample
    from analyze_rank import main as analyze_rank

    small = make_hf_family("llama", name="small-vocab", **{**LLAMA, "vocab_size": 200})
    save_tokenizer(bpe, small, bos_token="<s>", eos_token="</s>")
    message = f"the tokenizer of {small} has 300 ids but the model {small} only 200"
    with pytest.raises(SystemExit, match=message):
        sample.main([f"--init_from={small}", "--device=cpu"])
    (tmp_path / "some.txt").write_text("To be, or not to be, that is the question. " * 20)
    with pytest.raises(SystemExit, match=message):
        analyze_rank([f"--model={small}", f"--data={tmp_path / 'some.txt'}", "--num_samples=2", "--seq_len=8",
                      f"--out_dir={tmp_path / 'never'}"])
    result = run("train.py", f"--data_dir={llama_data}", f"--out_dir={tmp_path / 'never'}", *INHERITED,
                 "--init_from=inherit", f"--reference={small}", "--n_layer=2", expect_rc=1)
    assert f"{llama_data} has a vocabulary of 300 ids but the model only 200" in one_line_error(result)
    assert not (tmp_path / "never").exists()


def test_a_folder_without_its_tokenizer_is_not_decoded_as_gpt2(make_hf_family):
    import sample

    folder = make_hf_family("llama", **{**LLAMA, "vocab_size": 60000})  # larger than GPT-2's: no guessing
    with pytest.raises(SystemExit, match="60000-token vocabulary, not GPT-2's.*keep a Hugging Face model's tokenizer"):
        sample.main([f"--init_from={folder}", "--device=cpu"])


def test_data_of_another_tokenizer_is_refused(llama, char_data, tmp_path):
    from analyze_rank import main as analyze_rank

    message = (f"{char_data} was tokenized with a character-level tokenizer, but {llama} uses the tokenizer of "
               f"{llama}: its token ids mean other words to the model; prepare the data with the model's tokenizer "
               f"(python prepare_owt.py --tokenizer={llama})")
    with pytest.raises(ValueError) as e:
        inherit.main(inherit_cfg(init_from=llama, data_dir=char_data, out_dir=str(tmp_path / "never")))
    assert str(e.value) == message
    with pytest.raises(SystemExit) as e:
        analyze_rank([f"--model={llama}", f"--data={char_data}/val.bin", "--num_samples=2", "--seq_len=8",
                      f"--out_dir={tmp_path / 'never'}"])
    assert e.value.code == f"error: {message}"
    for how in (["--init_from=inherit", f"--reference={llama}", "--n_layer=2"], [f"--init_from={llama}"]):
        result = run("train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path / 'never'}", *INHERITED, *how,
                     expect_rc=1)
        assert one_line_error(result) == f"error: {message}"
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("config", ["config/inherit_openllama_3b_v1.py", "config/inherit_smollm2_1_7b.py"])
def test_open_model_configs_run(config, llama, llama_data, tmp_path):
    # every key of the config is one train.py knows, with a value it accepts; shrunk to the local stand-in
    result = run("train.py", config, f"--reference={llama}", f"--data_dir={llama_data}", f"--out_dir={tmp_path / 'o'}",
                 "--n_layer=2", "--block_size=32", "--batch_size=2", "--eval_iters=1", "--eval_only=True",
                 "--device=cpu", "--compile=False", "--dtype=float32")
    assert "inherited blocks [0, 1]" in result.stdout and "val_loss" in result.stdout
