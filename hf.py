"""
Hugging Face interop for GPT-2: load a Hub name or local folder into our GPT, export ours as a Hub folder.

Hugging Face's GPT-2 stores its attention/MLP weights as Conv1D, i.e. (in, out): we transpose them to
nn.Linear's (out, in) on the way in and back on the way out. Keys may or may not carry "transformer.".
"""

import json
import os
import shutil
import tempfile

import torch

from model import GPT, GPTConfig
from tokenizer import GPT2_BPE_DIR

HUB_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
GPT2_EOT_TEXT = "<|endoftext|>"


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message says what to do instead."""


def hub_repo_id(name):
    """openai-community/gpt2 for gpt2 (the Hub moved OpenAI's models there); other names are kept."""
    return f"openai-community/{name}" if name in HUB_GPT2_NAMES[:4] else name


def looks_like_path(name):
    """True for a name that can only mean a local folder: absolute, ./ ../ ~, two or more '/', or a name
    under a folder that exists here; such a name is never sent to the Hub."""
    if name.startswith(("./", "../", "~")) or os.path.isabs(name) or name.count("/") > 1:
        return True
    parent = os.path.dirname(name)
    return bool(parent) and os.path.isdir(parent)


def resolve_hf_folder(name_or_path):
    """A local folder for a Hub name or folder path; downloads (or finds in the HF cache) Hub names."""
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if os.path.exists(name_or_path):
        raise ModelLoadError(f"{name_or_path} is a file, not a Hugging Face model folder (config.json + weights)")
    if looks_like_path(name_or_path):
        raise ModelLoadError(f"no such folder: {name_or_path} (pass an existing folder with config.json and "
                             f"the weights, an out_dir of ours, or a Hub name)")
    short = name_or_path.split("/")[-1]
    if short not in HUB_GPT2_NAMES and "/" not in name_or_path:
        raise ModelLoadError(f"unknown model '{name_or_path}': no such folder here, and not one of "
                             f"{', '.join(HUB_GPT2_NAMES)} (or an 'org/name' Hub id)")
    from huggingface_hub import snapshot_download

    repo_id = hub_repo_id(name_or_path)
    patterns = ["config.json", "model.safetensors", "generation_config.json", "*.json", "*.txt"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise ModelLoadError(
            f"could not get '{repo_id}' from the Hugging Face Hub ({type(e).__name__}). On a machine without "
            f"network, download it elsewhere (`hf download {repo_id} --local-dir {short}`), "
            f"copy the folder here and pass its path instead of the name."
        ) from None


def read_hf_config(folder):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")
    with open(path) as f:
        return json.load(f)


def load_hf_state_dict(folder):
    """The weights of a Hugging Face folder (model.safetensors, else pytorch_model.bin)."""
    for fname in WEIGHT_FILES:
        path = os.path.join(folder, fname)
        if os.path.isfile(path):
            if fname.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise ModelLoadError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} "
                         f"(sharded checkpoints are not supported; save the model with safe_serialization "
                         f"and a max_shard_size above its size)")


def gpt_config_from_hf(hf_config, source):
    """Our GPTConfig from a Hugging Face GPT-2 config dict; anything else is refused with a reason."""
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ModelLoadError(f"{source} is a '{model_type}' model, not GPT-2: GPT.from_pretrained loads GPT-2 "
                             f"checkpoints only. To measure attention collapse in it, use "
                             f"`python analyze_rank.py --model={source}`")
    unsupported = {
        "activation_function": ("gelu_new", hf_config.get("activation_function", "gelu_new")),
        "n_inner": (None, hf_config.get("n_inner")),
        "layer_norm_epsilon": (1e-5, hf_config.get("layer_norm_epsilon", 1e-5)),
        "scale_attn_weights": (True, hf_config.get("scale_attn_weights", True)),
        "reorder_and_upcast_attn": (False, hf_config.get("reorder_and_upcast_attn", False)),
    }
    for key, (ours, theirs) in unsupported.items():
        if theirs != ours and not (key == "n_inner" and theirs == 4 * hf_config["n_embd"]):
            raise ModelLoadError(f"{source}: {key}={theirs!r} is not supported (model.py implements {key}={ours!r})")
    return GPTConfig(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=hf_config["n_embd"],
        dropout=0.0,
        bias=True,  # Hugging Face's GPT-2 always has biases
        scale_attn_by_inverse_layer_idx=hf_config.get("scale_attn_by_inverse_layer_idx", False),
    )


def state_dict_from_hf(hf_sd):
    """Hugging Face GPT-2 keys/layout -> ours (strip prefix, drop mask buffers, transpose Conv1D)."""
    sd = {}
    for k, v in hf_sd.items():
        k = k.removeprefix("transformer.")
        if k.endswith(("attn.bias", "attn.masked_bias")) and v.dim() > 1:  # causal-mask buffers of old versions
            continue
        if k == "lm_head.weight":  # tied to wte
            continue
        if k.endswith(CONV1D_WEIGHTS):
            v = v.t()
        sd["transformer." + k] = v.contiguous()
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def load_gpt2(name_or_path, override_args=None):
    """GPT from a GPT-2 Hub name or folder; override_args may set dropout."""
    folder = resolve_hf_folder(name_or_path)
    config = gpt_config_from_hf(read_hf_config(folder), name_or_path)
    for k, v in (override_args or {}).items():
        if k != "dropout":
            raise ValueError(f"only dropout can be overridden when loading pretrained weights, not {k}")
        config.dropout = v
    sd = state_dict_from_hf(load_hf_state_dict(folder))
    model = GPT(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{name_or_path}: weights do not match a GPT-2 of this config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def hf_config_from_gpt(config):
    from transformers import GPT2Config

    eot = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, absent from char vocabs
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx,
        tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot,
        architectures=["GPT2LMHeadModel"],
    )


def state_dict_to_hf(model):
    """Our weights in Hugging Face's GPT-2 layout; bias=False models get zero biases (same function)."""
    c = model.config
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":  # tied: Hugging Face re-ties it from wte
            continue
        if k.endswith(CONV1D_WEIGHTS):
            v = v.t()
        sd[k] = v.detach().to("cpu", torch.float32).contiguous().clone()
    if not c.bias:
        for i in range(c.n_layer):
            p = f"transformer.h.{i}."
            for name, size in (("ln_1", c.n_embd), ("ln_2", c.n_embd), ("attn.c_attn", 3 * c.n_embd),
                               ("attn.c_proj", c.n_embd), ("mlp.c_fc", 4 * c.n_embd), ("mlp.c_proj", c.n_embd)):
                sd[p + name + ".bias"] = torch.zeros(size)
        sd["transformer.ln_f.bias"] = torch.zeros(c.n_embd)
    return sd


def write_gpt2_tokenizer(folder, model_max_length):
    """GPT-2's tokenizer files in Hugging Face's names, from the copies bundled in data/gpt2_bpe/."""
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "encoder.json"), os.path.join(folder, "vocab.json"))
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "vocab.bpe"), os.path.join(folder, "merges.txt"))
    config = dict(tokenizer_class="GPT2Tokenizer", model_max_length=model_max_length, bos_token=GPT2_EOT_TEXT,
                  eos_token=GPT2_EOT_TEXT, unk_token=GPT2_EOT_TEXT, add_prefix_space=False, errors="replace")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_char_tokenizer(folder, chars, model_max_length):
    """A Hugging Face tokenizer (tokenizer.json, for PreTrainedTokenizerFast) that maps each character of chars
    to its index, as tokenizer.CharTokenizer does: a WordLevel vocabulary, a split into single characters and
    a decoder that joins them. Characters outside chars are an error on encoding (there is no unknown token)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character, \n too
    tok.decoder = decoders.Fuse()
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=model_max_length,
                  clean_up_tokenization_spaces=False)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def make_readable(folder):
    """Give folder and its files the permissions a plain mkdir / open would (0755 / 0644 under umask 022):
    mkdtemp and safetensors create them private (0700 / 0600), unreadable to the rest of a cluster group."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def export_hf(model, folder, tokenizer_meta=None):
    """Write model as a Hugging Face GPT-2 folder (config.json + model.safetensors, and the tokenizer that
    tokenizer_meta, a dataset's meta.json, names: GPT-2's files or a character-level tokenizer.json),
    atomically: built under a temporary name, then swapped in."""
    from safetensors.torch import save_file

    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        hf_config_from_gpt(model.config).save_pretrained(tmp)
        save_file(state_dict_to_hf(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        kind = (tokenizer_meta or {}).get("tokenizer")
        if kind == "gpt2":
            write_gpt2_tokenizer(tmp, model.config.block_size)
        elif kind == "char":
            write_char_tokenizer(tmp, tokenizer_meta["chars"], model.config.block_size)
        make_readable(tmp)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
