"""
Hugging Face interop: load a Hugging Face model folder into our GPT (all blocks, or only chosen ones), and export
ours as a Hub folder of the same architecture. Which folder a name means is source.py's decision.

Architectures: GPT2LMHeadModel (Conv1D weights, transposed both ways) and the "Llama family": LlamaForCausalLM,
Qwen2ForCausalLM and MistralForCausalLM (q, k, v stacked into our c_attn). Sliding-window attention caps
block_size at the window, within which it changes nothing, so the function is exact. Only the tensors asked for
are read (safe_open), so inheriting a few blocks of a large model needs memory for those blocks alone.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import nullcontext

import torch
from safetensors import SafetensorError, safe_open

from inheritune.atomic import swap_in_folder
from inheritune.checkpoint import block_indices, matching_tensors, model_with
from inheritune.hub import hub_unreachable
from model import GPTConfig
from inheritune.tokenizer import GPT2_BPE_DIR

ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "MistralForCausalLM": "mistral"}
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", SAFETENSORS_INDEX, "pytorch_model.bin")
BLOCK_TENSOR = re.compile(r"^((?:transformer\.|model\.)?(?:h|layers)\.)(\d+)\.(.+)$")  # prefix, index, rest
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")  # saved by older transformers; not weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
GPT2_EOT_TEXT = "<|endoftext|>"

# Llama family tensor names, ours -> Hugging Face's within block i; several names are stacked along dim 0
LLAMA_BLOCK_NAMES = (
    ("ln_1.weight", ("input_layernorm.weight",)),
    ("attn.c_attn.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    ("attn.c_attn.bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    ("attn.c_proj.weight", ("self_attn.o_proj.weight",)),
    ("ln_2.weight", ("post_attention_layernorm.weight",)),
    ("mlp.c_gate.weight", ("mlp.gate_proj.weight",)),
    ("mlp.c_fc.weight", ("mlp.up_proj.weight",)),
    ("mlp.c_proj.weight", ("mlp.down_proj.weight",)),
)


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message says what to do instead."""


HUB_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
# what a Hub download fetches: config, safetensors weights (sharded too) and tokenizer files; not the .bin / .pth copies
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "tokenizer.model", "*.jinja"]


def hub_folder(name, download=True):
    """The local snapshot of a Hub model (config, safetensors and tokenizer files), downloaded unless download=False."""
    from huggingface_hub import snapshot_download

    repo_id = f"openai-community/{name}" if name in HUB_GPT2_NAMES[:4] else name  # the Hub moved OpenAI's models
    offline = hub_unreachable() if download else ""  # then from the cache only, at once
    try:
        return snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=not download)
    except Exception as e:  # offline, unknown repo, gated repo, not in the cache: all end the same way for the user
        raise ModelLoadError(
            f"could not get '{repo_id}' from the Hugging Face Hub ({offline or type(e).__name__}). On a machine "
            f"without network, download it elsewhere (`hf download {repo_id} --local-dir {name.split('/')[-1]}`), "
            f"copy the folder here and pass its path instead of the name."
        ) from None


def read_hf_config(folder):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")
    with open(path) as f:
        return json.load(f)


def gguf_folder(path):
    """A Hugging Face folder of the GGUF file at path, de-quantized to float32 by transformers' own GGUF loader;
    written once into the Hugging Face cache, named by the file's path, size and time."""
    import transformers
    from huggingface_hub import constants

    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)} {stat.st_size} {stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = os.path.join(constants.HF_HOME, "gguf-float32", f"{os.path.basename(path).removesuffix('.gguf')}-{key}")
    if os.path.isdir(folder):
        return folder
    where, name = os.path.split(os.path.abspath(path))
    # transformers 5 keeps the weights quantized when the `kernels` package can compute with them; we need them plain
    dequantize = dict(quantization_config=transformers.GgufConfig(dequantize=True)) \
        if hasattr(transformers, "GgufConfig") else {}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32,
                                                                  **dequantize)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    except Exception as e:  # truncated, not GGUF at all, or an architecture transformers cannot read
        raise ModelLoadError(f"{path} is damaged or not a model transformers can read ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:200]}): download it again") from None
    vars(model.config).pop("quantization_config", None)  # the folder holds plain float32 weights
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gguf-", dir=os.path.dirname(folder))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    make_readable(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process (a rank of the same run) wrote it first: that one is used
        shutil.rmtree(tmp)
        if not os.path.isdir(folder):
            raise
    return folder


def hf_family(hf_config, source):
    """'gpt2', 'llama', 'qwen2' or 'mistral' for a config.json we can load; anything else is refused."""
    model_type = hf_config.get("model_type")
    architectures = hf_config.get("architectures") or []
    if model_type == "gpt2":  # any GPT-2 class: only the transformer's weights are read
        return "gpt2"
    family = ARCHITECTURES.get(architectures[0]) if architectures else model_type
    if family not in ARCHITECTURES.values() or family != model_type:
        found = architectures[0] if architectures else f"model_type '{model_type}'"
        raise ModelLoadError(f"{source} is a {found} model: model.py implements {', '.join(ARCHITECTURES)}. "
                             f"To measure attention collapse in it, use `python analyze_rank.py --model={source}`")
    return family


def gpt_config_from_hf(folder, source):
    """Our GPTConfig for the Hugging Face model in folder; a setting model.py does not implement is refused."""
    hf_config = read_hf_config(folder)
    family = hf_family(hf_config, source)
    return gpt2_config_from_hf(hf_config, source) if family == "gpt2" else llama_config_from_hf(folder, family, source)


def refuse_unsupported(source, settings):
    """settings: {key: (what model.py implements, the model's value)}; the first that differs is an error."""
    for key, (ours, theirs) in settings.items():
        if theirs != ours:
            raise ModelLoadError(f"{source}: {key}={theirs!r} is not supported (model.py implements {key}={ours!r})")


def gpt2_config_from_hf(hf_config, source):
    n_inner = hf_config.get("n_inner")
    refuse_unsupported(source, {
        "activation_function": ("gelu_new", hf_config.get("activation_function", "gelu_new")),
        "scale_attn_weights": (True, hf_config.get("scale_attn_weights", True)),
        "reorder_and_upcast_attn": (False, hf_config.get("reorder_and_upcast_attn", False)),
        "tie_word_embeddings": (True, hf_config.get("tie_word_embeddings", True)),
    })
    return GPTConfig(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=hf_config["n_embd"],
        bias=True,  # Hugging Face's GPT-2 always has biases
        scale_attn_by_inverse_layer_idx=hf_config.get("scale_attn_by_inverse_layer_idx", False),
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        intermediate_size=0 if n_inner in (None, 4 * hf_config["n_embd"]) else n_inner,
    )


def llama_config_from_hf(folder, family, source):
    """Read through transformers' own config class, so absent keys get its defaults and old key names
    (rope_theta / rope_scaling of transformers 4) are understood as it understands them."""
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise ModelLoadError(f"{source}: transformers cannot read its config.json "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    rope = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    rope_theta = rope.pop("rope_theta", getattr(c, "rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"{source}: rope type {rope_type!r} is not supported (model.py implements 'default' "
                             f"and 'llama3')")
    refuse_unsupported(source, {
        "hidden_act": ("silu", c.hidden_act),
        "attention_bias": (False, getattr(c, "attention_bias", False)),  # Llama's: o_proj too, not only q, k, v
        "mlp_bias": (False, getattr(c, "mlp_bias", False)),
        "partial_rotary_factor": (1.0, rope.get("partial_rotary_factor") or 1.0),
    })
    rope_scaling = None
    if rope_type == "llama3":
        factors = {k: float(rope[k]) for k in ("factor", "low_freq_factor", "high_freq_factor")}
        rope_scaling = dict(rope_type="llama3", **factors,
                            original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                                          c.max_position_embeddings)))
    sliding = family == "mistral" or "sliding_attention" in (getattr(c, "layer_types", None) or []) \
        or getattr(c, "use_sliding_window", False)
    window = c.sliding_window if sliding and c.sliding_window else c.max_position_embeddings
    n_kv_head = c.num_key_value_heads or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return GPTConfig(
        block_size=min(c.max_position_embeddings, window),
        vocab_size=c.vocab_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_embd=c.hidden_size,
        bias=False,
        norm="rmsnorm",
        norm_eps=float(c.rms_norm_eps),
        mlp="swiglu",
        intermediate_size=c.intermediate_size,
        pos_emb="rope",
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        n_kv_head=0 if n_kv_head == c.num_attention_heads else n_kv_head,
        head_dim=0 if head_dim * c.num_attention_heads == c.hidden_size else head_dim,
        tie_embeddings=bool(c.tie_word_embeddings),
        qkv_bias=family == "qwen2",
    )


def weight_locations(folder):
    """{tensor name: file} of folder's safetensors weights (one file or sharded), or None for pytorch_model.bin."""
    index = os.path.join(folder, SAFETENSORS_INDEX)
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError) as e:
            raise ModelLoadError(f"{index} is damaged ({type(e).__name__}): download it again") from None
        return {name: os.path.join(folder, fname) for name, fname in weight_map.items()}
    if os.path.isfile(single):
        try:
            with safe_open(single, framework="pt") as f:
                return dict.fromkeys(f.keys(), single)
        except SafetensorError as e:
            raise ModelLoadError(f"{single} is damaged ({e}): download it again") from None
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        return None
    raise ModelLoadError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} "
                         f"(sharded .bin checkpoints are not supported; save the model with safe_serialization)")


def read_hf_weights(folder, layers=None, dtype=torch.float32, rest=True):
    """The Hugging Face-named tensors of folder, as dtype (None: as stored). With layers (source block indices, any
    order, repeats allowed) only blocks layers[0], layers[1], ... are read, renumbered 0, 1, ... (a repeat is a copy),
    with the tensors outside the blocks (embeddings, final norm, head) unless rest=False."""
    locations = weight_locations(folder)
    if locations is None:  # pytorch_model.bin: one pickle, read whole
        stored = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        locations = dict.fromkeys(stored, None)
    plan = {}  # stored name -> the names it gets in the result
    for name in locations:
        if name.endswith(BUFFERS):
            continue
        match = BLOCK_TENSOR.match(name)
        if match and layers is not None:
            prefix, i, part = match.groups()
            targets = [f"{prefix}{j}.{part}" for j, source in enumerate(layers) if source == int(i)]
        else:
            targets = [name] if match or rest else []
        if targets:
            plan[name] = targets
    files = {}  # file -> the stored names to read from it
    for name in plan:
        files.setdefault(locations[name], []).append(name)
    missing = sorted(os.path.basename(f) for f in files if f is not None and not os.path.isfile(f))
    if missing:
        raise ModelLoadError(f"{folder} is missing {', '.join(missing)} (listed in {SAFETENSORS_INDEX}): "
                             f"download the model again")
    out = {}
    for path, names in files.items():
        try:
            with safe_open(path, framework="pt") if path else nullcontext() as f:
                for name in names:
                    tensor = f.get_tensor(name) if path else stored[name]
                    tensor = tensor if dtype is None else tensor.to(dtype)
                    out |= {target: tensor if k == 0 else tensor.clone() for k, target in enumerate(plan[name])}
        except SafetensorError as e:
            raise ModelLoadError(f"{path} is damaged ({e}): download the model again") from None
    return out


def gpt2_state_dict_from_hf(hf_sd):
    """Hugging Face GPT-2 keys/layout -> ours (strip prefix, transpose Conv1D, tie the head)."""
    sd = {"transformer." + k.removeprefix("transformer."): conv1d_transposed(k, v) for k, v in hf_sd.items()
          if k != "lm_head.weight"}  # tied to wte
    if "transformer.wte.weight" in sd:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def conv1d_transposed(name, tensor):
    """GPT-2's Conv1D weights (in, out) as nn.Linear's (out, in), or the reverse; other tensors as they are."""
    return (tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor).contiguous()


def llama_tensor_names(config, rest=True):
    """[(our name, [Hugging Face names stacked into it])] of a Llama-family model (rest=False: its blocks only)."""
    names = []
    if rest:
        names += [("transformer.wte.weight", ["model.embed_tokens.weight"]),
                  ("transformer.ln_f.weight", ["model.norm.weight"])]
    if rest and not config.tie_embeddings:
        names.append(("lm_head.weight", ["lm_head.weight"]))
    for i in range(config.n_layer):
        for ours, theirs in LLAMA_BLOCK_NAMES:
            if ours != "attn.c_attn.bias" or config.qkv_bias:
                names.append((f"transformer.h.{i}.{ours}", [f"model.layers.{i}.{t}" for t in theirs]))
    return names


def llama_state_dict_from_hf(hf_sd, config, source, rest=True):
    """Hugging Face Llama-family tensors -> our names (q, k, v stacked), taken out of hf_sd (rest=False: blocks)."""
    sd = {}
    for ours, theirs in llama_tensor_names(config, rest):
        missing = [t for t in theirs if t not in hf_sd]
        if missing:
            raise ModelLoadError(f"{source}: the weights have no {missing[0]}: the files are incomplete or do not "
                                 f"belong to this config.json")
        parts = [hf_sd.pop(t) for t in theirs]
        sd[ours] = torch.cat(parts) if len(parts) > 1 else parts[0]
    if config.tie_embeddings and rest:
        hf_sd.pop("lm_head.weight", None)  # a copy of the embedding some repos store
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    if hf_sd:
        raise ModelLoadError(f"{source}: unexpected tensors {sorted(hf_sd)[:3]} for this config.json (a setting "
                             f"model.py does not implement, or weights of another model)")
    return sd


def load_folder(folder, config, source, layers=None, dtype=torch.float32):
    """Our GPT of the Hugging Face model in folder (config: its gpt_config_from_hf; source: its name, for errors)
    with blocks[layers] (read_hf_weights; None: all) in that order, as dtype. With GPT-2's
    scale_attn_by_inverse_layer_idx a block's attention scale follows its new position (as inherit.py)."""
    layers = list(range(config.n_layer)) if layers is None else block_indices(layers, config, source, ModelLoadError)
    weights = our_state_dict(folder, config, layers, source, dtype)
    return model_with(dataclasses.replace(config, n_layer=len(layers)), weights, f"{source}'s weights",
                      "a model of its config.json", ModelLoadError)


def our_state_dict(folder, config, layers, source, dtype=torch.float32, rest=True):
    """Our names -> tensors of the model in folder (config: its gpt_config_from_hf), as read_hf_weights reads them."""
    hf_sd = read_hf_weights(folder, layers, dtype, rest)
    if config.pos_emb == "learned":
        return gpt2_state_dict_from_hf(hf_sd)
    return llama_state_dict_from_hf(hf_sd, dataclasses.replace(config, n_layer=len(layers)), source, rest)


def hf_architecture(config, source_config=None):
    """The Hugging Face architecture that computes what config does: the source's when given (Mistral stays
    Mistral), else GPT-2, Qwen2 (q, k, v biases) or Llama; a model none of them computes is refused."""
    parts = (config.norm, config.mlp, config.pos_emb)
    if parts == ("layernorm", "gelu", "learned"):
        arch = "GPT2LMHeadModel"
        problems = {"grouped-query attention": config.kv_heads != config.n_head,
                    "head_dim apart from n_embd // n_head": config.head_dim not in (0, config.n_embd // config.n_head),
                    "an untied LM head": not config.tie_embeddings,
                    "q, k, v biases without the other biases": config.qkv_bias and not config.bias}
    elif parts == ("rmsnorm", "swiglu", "rope") and not config.bias:
        arch = ((source_config or {}).get("architectures") or [None])[0]
        if ARCHITECTURES.get(arch) not in ("llama", "qwen2", "mistral"):
            arch = "Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"
        head_dim_apart = (config.head_dim not in (0, config.n_embd // config.n_head)
                          or config.n_embd % config.n_head != 0)
        problems = {"q, k, v biases (only Qwen2 has them)": config.qkv_bias and arch != "Qwen2ForCausalLM",
                    "no q, k, v biases (Qwen2 always has them)": not config.qkv_bias and arch == "Qwen2ForCausalLM",
                    "head_dim apart from n_embd // n_head": head_dim_apart and arch != "MistralForCausalLM"}
    else:
        raise ModelLoadError(f"no Hugging Face architecture has norm={config.norm!r}, mlp={config.mlp!r}, "
                             f"pos_emb={config.pos_emb!r}, bias={config.bias} together: GPT-2 is "
                             f"layernorm/gelu/learned, the Llama family rmsnorm/swiglu/rope without biases")
    problem = next((p for p, bad in problems.items() if bad), None)
    if problem:
        raise ModelLoadError(f"cannot write this model as {arch}: it has {problem}")
    return arch


# The GPTConfig fields hf_config_from_gpt writes into a Hugging Face config (or derives the architecture from): a
# field model.py gains is refused, when set, until the export says what it becomes (never silently dropped).
EXPORT_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "norm", "norm_eps",
                 "mlp", "scale_attn_by_inverse_layer_idx", "intermediate_size", "pos_emb", "rope_theta", "rope_scaling",
                 "n_kv_head", "head_dim", "tie_embeddings", "qkv_bias")


def hf_config_from_gpt(config, source_config=None):
    """transformers' config for ours; source_config (a config.json dict) gives the architecture and token ids."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    unknown = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
               if f.name not in EXPORT_FIELDS and getattr(config, f.name) != f.default]
    if unknown:
        raise ModelLoadError(f"cannot export a model with {', '.join(unknown)}: the Hugging Face export does not know "
                             f"that field; teach hf.hf_config_from_gpt (and hf.EXPORT_FIELDS) what it becomes")

    arch = hf_architecture(config, source_config)
    token_ids = {k: (source_config or {}).get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if arch == "GPT2LMHeadModel":
        eot = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, absent from char vocabs
        if source_config is None:
            token_ids = dict(bos_token_id=eot, eos_token_id=eot)
        return GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, n_inner=config.intermediate_size or None,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=config.norm_eps, tie_word_embeddings=True, architectures=[arch],
            scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx, **token_ids,
        )
    cls = dict(LlamaForCausalLM=LlamaConfig, Qwen2ForCausalLM=Qwen2Config, MistralForCausalLM=MistralConfig)[arch]
    family = dict(
        LlamaForCausalLM=dict(head_dim=config.head_size, attention_bias=False, mlp_bias=False),
        Qwen2ForCausalLM=dict(use_sliding_window=False),
        # beyond block_size our model refuses to go; the source's window, which contains it, is kept
        MistralForCausalLM=dict(head_dim=config.head_size,
                                sliding_window=(source_config or {}).get("sliding_window") or config.block_size),
    )[arch]
    return cls(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.mlp_width,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps, hidden_act="silu",
        tie_word_embeddings=config.tie_embeddings, attention_dropout=0.0, architectures=[arch],
        # the keys transformers 4 reads; transformers 5 turns them into its rope_parameters
        rope_theta=config.rope_theta, rope_scaling=config.rope_scaling and dict(config.rope_scaling),
        **family, **token_ids,
    )


def state_dict_to_hf(model):
    """Our weights in the Hugging Face layout of the model's architecture, float32 on CPU."""
    c = model.config
    ours = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if c.pos_emb == "rope":
        sd = {}
        qkv_sizes = model.transformer.h[0].attn.qkv_sizes if c.n_layer else None
        for name, theirs in llama_tensor_names(c):
            parts = ours[name].split(qkv_sizes) if len(theirs) == 3 else [ours[name]]
            for hf_name, part in zip(theirs, parts):
                sd[hf_name] = part.contiguous().clone()
        return sd
    sd = {k: conv1d_transposed(k, v).clone() for k, v in ours.items() if k != "lm_head.weight"}  # re-tied from wte
    if not c.bias:  # bias=False GPT-2 models get zero biases (the same function); Conv1D's out is its last dim
        sd |= {k.removesuffix("weight") + "bias": torch.zeros(v.shape[-1]) for k, v in sd.items()
               if not k.endswith(("wte.weight", "wpe.weight"))}
    return sd


def write_hf_config(hf_config, config, folder):
    hf_config.save_pretrained(folder)
    if config.pos_emb == "rope":  # transformers 4 reads rope_theta / rope_scaling, not transformers 5's rope_parameters
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            keys = json.load(f)
        keys.update(rope_theta=config.rope_theta, rope_scaling=config.rope_scaling)
        with open(path, "w") as f:
            json.dump(keys, f, indent=2, sort_keys=True)


def write_gpt2_tokenizer(folder, model_max_length):
    """GPT-2's tokenizer files in Hugging Face's names, from the copies bundled in data/gpt2_bpe/."""
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "encoder.json"), os.path.join(folder, "vocab.json"))
    shutil.copyfile(os.path.join(GPT2_BPE_DIR, "vocab.bpe"), os.path.join(folder, "merges.txt"))
    config = dict(tokenizer_class="GPT2Tokenizer", model_max_length=model_max_length, bos_token=GPT2_EOT_TEXT,
                  eos_token=GPT2_EOT_TEXT, unk_token=GPT2_EOT_TEXT, add_prefix_space=False, errors="replace")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_char_tokenizer(folder, chars, model_max_length):
    """A Hugging Face tokenizer.json that maps each character of chars to its index, as tokenizer.CharTokenizer does
    (no unknown token: characters outside chars are an error on encoding)."""
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
    """Give folder and its files a plain mkdir's / open's permissions: mkdtemp and safetensors make them private."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def export_hf(model, folder, tokenizer_meta=None, source=None):
    """Write model as a Hugging Face folder (config.json + model.safetensors), atomically. tokenizer_meta: a
    dataset's meta.json, whose tokenizer is written (for "hf": its tokenizer_source's files and BOS/EOS ids).
    source: the Hugging Face folder the model came from: its architecture (Mistral stays Mistral), special token
    ids and, unless tokenizer_meta names one, tokenizer files are kept."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    source_config = read_hf_config(source) if source else None
    kind = (tokenizer_meta or {}).get("tokenizer")
    tokenizer_folder = source
    if kind == "hf":  # meta.json records a folder by its absolute path (tokenizer files alone will do), else a Hub id
        name = tokenizer_meta["tokenizer_source"]
        tokenizer_folder = name if os.path.isdir(name) else hub_folder(name)
        source_config = source_config or {k: tokenizer_meta[k] for k in ("bos_token_id", "eos_token_id")}
    hf_config = hf_config_from_gpt(model.config, source_config)  # refuses a model no architecture computes
    with torch.device("meta"):  # the architecture's own parameters (a tied head once): ours must match them
        expected = dict(AutoModelForCausalLM.from_config(hf_config).named_parameters())
    weights = matching_tensors(state_dict_to_hf(model), expected, "our weights in Hugging Face's names",
                               f"transformers' {hf_config.architectures[0]}", ModelLoadError)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        write_hf_config(hf_config, model.config, tmp)
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if kind == "gpt2":
            write_gpt2_tokenizer(tmp, model.config.block_size)
        elif kind == "char":
            write_char_tokenizer(tmp, tokenizer_meta["chars"], model.config.block_size)
        for name in TOKENIZER_FILES if tokenizer_folder and kind not in ("gpt2", "char") else ():
            if os.path.isfile(os.path.join(tokenizer_folder, name)):
                shutil.copyfile(os.path.join(tokenizer_folder, name), os.path.join(tmp, name))
        make_readable(tmp)
        swap_in_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
