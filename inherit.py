"""
Inheritune, step 1: build a smaller model from the blocks of a larger pre-trained one.

    python inherit.py --init_from=gpt2-medium --out_dir=out-inherit            # first L/2 = 12 blocks
    python inherit.py --init_from=out-ref --n_layer=4 --dataset=shakespeare_char --out_dir=out-inherit
    python inherit.py --init_from=gpt2 --layers=0,1,2,3,0,1,2,3 --out_dir=out-hybrid  # any list, repeats allowed
    python inherit.py --init_from=out-ref --n_layer=auto --analysis=out-analysis/analysis.json
    python inherit.py --init_from=gpt2-medium --n_embd=512 --n_head=8 --out_dir=out-half-width  # every block, half wide

The student gets the reference's embeddings, the chosen blocks (in the given order), the final norm and the LM
head. The reference is a GPT-2 name, a Hugging Face GPT-2 / Llama / Qwen2 / Mistral folder or Hub id, or one of our
checkpoints; only the chosen blocks are read from it. The student is written as out_dir/ckpt.pt in train.py's format
(`python train.py --init_from=resume --out_dir=...` trains it), with the reference run's training settings (else
train.py's defaults) and this command's data and evaluation settings. With --dataset (or --data_dir), the
reference's validation loss is measured with train.py's evaluation and stored as the growth target.
--n_embd / --n_head make the half-width baseline (shrink_width); --n_layer=auto takes the depth from
analyze_rank.py's analysis.json of this very reference.

This file is also the library train.py uses to inherit and to grow (--grow_every).
"""

import contextlib
import dataclasses
import json
import os
import shlex
import sys

import torch
import torch.nn as nn

from analyze_rank import suggested_depth
from inheritune.checkpoint import (BLOCK_NAME, checkpoint_path, find_checkpoint, matching_tensors, model_with,
                                   save_checkpoint, select_blocks)
from inheritune.configurator import check_device, configure_or_exit
from inheritune.data import check_data_tokenizer, eval_offsets, evaluate_loss, load_meta, open_tokens
from inheritune.source import open_source
from model import GPT, norm_layer

FRESH_PARTS = ("wpe", "ln_f")  # parts that can be left at fresh init (the paper's released code did)
EVAL_DEFAULTS = dict(eval_iters=200, batch_size=12, seed=1337)  # train.py's, for a reference without a run config


class InheritError(ValueError):
    pass


class Reference:
    """A reference model on disk (a source.ModelSource): its config at once, blocks when asked for. inherit() and
    grow() take one wherever they take a GPT and read only the blocks they copy, never the whole model."""

    def __init__(self, source):
        self.source, self.opened = source, open_source(source)
        # checkpoint: ours (tensors mapped), or None; path: ckpt.pt, ckpt.dcp/ or the Hugging Face folder
        self.config, self.checkpoint, self.path = self.opened.config, self.opened.checkpoint, self.opened.path
        # a reference replaced on disk (a reference run that saved again) must not lend a student blocks of another
        self.stamp = self.opened.files_stamp()

    def load(self, layers=None):
        """A GPT on the CPU of blocks[layers] (renumbered in that order; None: every block) and all outside them."""
        if self.opened.files_stamp() != self.stamp:
            raise InheritError(f"the reference {self.source} changed on disk since it was opened: its blocks would "
                               f"come from another model; restore it, or start the run again")
        return self.opened.load(layers).eval()

    def fingerprint(self):
        """checkpoint.model_fingerprint of the reference (what analyze_rank.py records), read block by block."""
        return self.opened.fingerprint()


def parse_layers(layers, n_layer, source_n_layer):
    """The list of source block indices to inherit: --layers if given, else the first n_layer blocks."""
    if layers:
        try:
            chosen = [int(i) for i in str(layers).replace(" ", "").strip("[]()").split(",") if i != ""]
        except ValueError:
            raise InheritError(f"--layers={layers} is not a comma-separated list of block indices") from None
        bad = [i for i in chosen if not 0 <= i < source_n_layer]
        if bad or not chosen:
            raise InheritError(f"layer indices {bad or chosen} are out of range: the source has "
                               f"{source_n_layer} blocks, indices 0..{source_n_layer - 1}")
        return chosen
    if n_layer is None:
        n_layer = source_n_layer // 2  # the paper's default l = L/2
    if not isinstance(n_layer, int) or not 1 <= n_layer <= source_n_layer:
        raise InheritError(f"n_layer={n_layer!r} must be an integer between 1 and the source's depth {source_n_layer}")
    return list(range(n_layer))


def copy_block(dst, src, what_dst="the new block", what_src="the block copied"):
    """src's tensors into dst's of the same names; a missing, extra or differently shaped one is refused."""
    with torch.no_grad():
        dst.load_state_dict(matching_tensors(src.state_dict(), dst.state_dict(), what_src, what_dst, InheritError))


def inherit(reference, layers, fresh=(), block_size=None, dropout=None):
    """A new GPT of reference's (a GPT, or a Reference: only blocks[layers] read) embeddings, blocks[layers], final
    norm and head; parts in fresh keep a fresh init, block_size may crop the context. With
    scale_attn_by_inverse_layer_idx a block's attention scale follows its new position."""
    if unknown := set(fresh) - set(FRESH_PARTS):
        raise InheritError(f"cannot leave {sorted(unknown)} fresh; choose from {', '.join(FRESH_PARTS)}")
    ref_cfg = reference.config
    if "wpe" in fresh and ref_cfg.pos_emb != "learned":
        raise InheritError(f"cannot leave wpe fresh: the reference has no position embedding ({ref_cfg.pos_emb} "
                           f"positions)")
    block_size = block_size or ref_cfg.block_size
    if block_size > ref_cfg.block_size:
        raise InheritError(f"block_size={block_size} is longer than the reference's context {ref_cfg.block_size}")
    config = dataclasses.replace(ref_cfg, n_layer=len(layers), block_size=block_size,
                                 dropout=ref_cfg.dropout if dropout is None else dropout)
    read_here = isinstance(reference, Reference)
    if read_here:  # the chosen blocks only, read for this student: their tensors become its weights
        reference, layers = reference.load(layers), range(len(layers))
    weights = select_blocks(reference.state_dict(), layers)
    if "transformer.wpe.weight" in weights:
        weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][:block_size]
    if not read_here:  # the student owns its weights
        weights = {k: v.detach().clone() for k, v in weights.items()}
    student = model_with(config, weights, "the reference", "the student", InheritError)
    device = student.lm_head.weight.device
    for part in fresh:  # as GPT(config) initializes them
        module = nn.Embedding(block_size, config.n_embd) if part == "wpe" else norm_layer(config)
        student._init_weights(module)
        student.transformer[part] = module.to(device)
    return student


def reference_blocks(new, model, reference, next_layer):
    """The reference's blocks next_layer, +1, ... (from a GPT, or read from a Reference's files: those only)."""
    if reference is None:
        raise InheritError("grow_init='reference' needs the reference model")
    if next_layer + len(new) > reference.config.n_layer:
        raise InheritError(f"cannot grow by {len(new)} from reference block {next_layer}: the reference has "
                           f"{reference.config.n_layer} blocks")
    blocks = reference.load(range(next_layer, next_layer + len(new))).transformer.h \
        if isinstance(reference, Reference) else reference.transformer.h[next_layer:]
    for j, (block, source) in enumerate(zip(new, blocks)):
        copy_block(block, source, f"new block {j}", f"block {next_layer + j} of the reference")


def copied_blocks(new, model, reference, next_layer):
    """The top len(new) trained blocks again (with doubles=True: every trained block, in order)."""
    if len(new) > model.config.n_layer:
        raise InheritError(f"grow_init='copy' duplicates the top {len(new)} blocks but the model has "
                           f"{model.config.n_layer}")
    for block, source in zip(new, model.transformer.h[-len(new):]):
        copy_block(block, source)


def identity_blocks(new, model, reference, next_layer):
    """Fresh blocks whose output projections are zero: the grown model computes what the trained one did."""
    for proj in (p for block in new for p in (block.attn.c_proj, block.mlp.c_proj)):
        nn.init.zeros_(proj.weight)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)


@dataclasses.dataclass(frozen=True)
class GrowInit:
    """A way to make the blocks a growth step adds (train.py --grow_init): one entry of GROW_INITS."""
    what: str  # one line: --help, refusals and the README say it
    fill: object  # fill(new_blocks, trained_model, reference, next_reference_layer): set the new blocks' weights
    modes: tuple = ("continue",)  # the grow_mode values it works in
    needs_reference: bool = False  # its blocks come from the reference (which train.py then keeps at hand)
    doubles: bool = False  # it adds as many blocks as the model has (grow_by is ignored)
    kept_at: object = lambda old_n, grow_by: range(old_n)  # kept_at(old_n, grow_by): each trained block's new index


# Adding a growth init: one entry here and its fill function; train.py's checks, --help and messages read this table.
GROW_INITS = {
    "reference": GrowInit("the reference's next blocks (Inheritune, Algorithm 1)", reference_blocks,
                          modes=("restart", "continue"), needs_reference=True),
    "stack": GrowInit("every trained block again, in order (stacking, Gong et al. 2019)", copied_blocks,
                      modes=("restart", "continue"), doubles=True),
    "copy": GrowInit("the top grow_by trained blocks again", copied_blocks),
    "identity": GrowInit("fresh blocks with zero output projections (the function is unchanged)", identity_blocks),
    "random": GrowInit("fresh blocks, GPT-2's init for the new depth", lambda *args: None),  # nothing to copy
}


def moved_names(names, kept_at):
    """{name: its name in the grown model} of the trained model's tensor names, its block i moved to kept_at[i]."""
    return {name: name if (match := BLOCK_NAME.match(name)) is None
            else f"transformer.h.{kept_at[int(match.group(1))]}.{match.group(2)}" for name in names}


def grow(model, grow_by, init, reference=None, next_reference_layer=None):
    """model with grow_by new blocks, made as GROW_INITS[init] says; the trained blocks are kept, where its kept_at
    says (by default the new blocks go on top, below the final norm). reference, next_reference_layer: where
    init="reference" reads the new blocks from (a GPT, or a Reference: then only those blocks are read)."""
    if init not in GROW_INITS:
        raise InheritError(f"grow_init={init!r}: choose from {', '.join(GROW_INITS)}")
    old_n = model.config.n_layer
    grow_by = old_n if GROW_INITS[init].doubles else grow_by
    kept_at = list(GROW_INITS[init].kept_at(old_n, grow_by))
    grown = GPT(dataclasses.replace(model.config, n_layer=old_n + grow_by)).to(model.lm_head.weight.device)
    moved = moved_names(model.state_dict(), kept_at)
    grown.load_state_dict({moved[k]: v for k, v in model.state_dict().items()}, strict=False)  # all but the new blocks
    new = [block for i, block in enumerate(grown.transformer.h) if i not in kept_at]
    GROW_INITS[init].fill(new, model, reference, next_reference_layer)
    return grown


def growth_step(config, trained, init, mode, grow_by, reference, layers, fresh=()):
    """Inheritune's growth step: (the grown model, each block's reference block or None, old name -> new name of each
    kept tensor). trained() gives the trained model, called only when its blocks are kept: restart mode with a
    reference init starts afresh from the reference's first l + grow_by blocks (Algorithm 1), keeping none."""
    entry = GROW_INITS[init]
    if entry.needs_reference and mode == "restart":
        layers = layers + [layers[-1] + 1 + j for j in range(grow_by)]
        weights = inherit(reference, layers, fresh, block_size=config.block_size).state_dict()
        # this run's model, deeper, of those blocks: a reference whose blocks are built otherwise is refused
        return model_with(dataclasses.replace(config, n_layer=len(layers)), weights,
                          f"the student of reference blocks {layers}", "the growing model", InheritError), layers, {}
    model, grow_by = trained(), config.n_layer if entry.doubles else grow_by
    next_layer = max((i for i in layers if i is not None), default=-1) + 1
    added = iter([next_layer + j if entry.needs_reference else None for j in range(grow_by)])
    kept_at = list(entry.kept_at(config.n_layer, grow_by))
    kept = dict(zip(kept_at, layers))  # the grown model's block index -> its reference block
    grown_layers = layers * 2 if entry.doubles else [kept[i] if i in kept else next(added)
                                                       for i in range(len(layers) + grow_by)]
    return grow(model, grow_by, init, reference, next_layer), grown_layers, moved_names(model.state_dict(), kept_at)


# What each dimension of each parameter indexes, by its name in model.py's scheme (a block's parameters without
# their "transformer.h.{i}." prefix): the axes shrink_width narrows.
WIDTH_AXES = {
    "transformer.wte.weight": ("vocab", "embd"), "lm_head.weight": ("vocab", "embd"),
    "transformer.wpe.weight": ("position", "embd"),
    "attn.c_attn.weight": ("qkv", "embd"), "attn.c_attn.bias": ("qkv",),
    "attn.c_proj.weight": ("embd", "heads"), "attn.c_proj.bias": ("embd",),
    "mlp.c_fc.weight": ("mlp", "embd"), "mlp.c_fc.bias": ("mlp",),
    "mlp.c_gate.weight": ("mlp", "embd"), "mlp.c_gate.bias": ("mlp",),
    "mlp.c_proj.weight": ("embd", "mlp"), "mlp.c_proj.bias": ("embd",),
} | {f"{norm}.{p}": ("embd",) for norm in ("ln_1", "ln_2", "transformer.ln_f") for p in ("weight", "bias")}


# The GPTConfig fields whose meaning under narrowing width_config knows (the widths it scales, the rest it keeps): a
# field model.py gains is refused, when set, until it is added here (and its parameters' axes to WIDTH_AXES).
WIDTH_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "norm", "norm_eps", "mlp",
                "scale_attn_by_inverse_layer_idx", "intermediate_size", "pos_emb", "rope_theta", "rope_scaling",
                "n_kv_head", "head_dim", "tie_embeddings", "qkv_bias")


def width_config(config, n_embd=None, n_head=None):
    """config narrowed to n_embd dimensions and n_head attention heads of the same head size (either may be None:
    derived from the other through the head size); kv heads and MLP units shrink in the same proportion."""
    if unknown := [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
                   if f.name not in WIDTH_FIELDS and getattr(config, f.name) != f.default]:
        raise InheritError(f"cannot narrow a model with {', '.join(unknown)}: inherit.width_config does not know how "
                           f"that field narrows; add it to inherit.WIDTH_FIELDS (and its parameters to WIDTH_AXES)")
    hd, kv = config.head_size, config.kv_heads
    if n_embd is None and n_head is None:
        raise InheritError("give n_embd or n_head (or both) for the narrower model")
    if n_head is None:
        if n_embd % hd:
            raise InheritError(f"n_embd={n_embd} is not a multiple of the head size {hd}: the heads keep their size, "
                               f"so pass n_embd = n_head * {hd} (or pass n_head)")
        n_head = n_embd // hd
    n_embd = n_head * hd if n_embd is None else n_embd
    if not (0 < n_embd <= config.n_embd and 0 < n_head <= config.n_head):
        raise InheritError(f"n_embd={n_embd}, n_head={n_head} must be positive and at most the source's "
                           f"n_embd={config.n_embd}, n_head={config.n_head}")
    if not config.head_dim and n_embd != n_head * hd:
        raise InheritError(f"n_embd={n_embd} with n_head={n_head} gives heads of {n_embd / n_head:g} dimensions, not "
                           f"the source's {hd}: the heads keep their size, so n_embd = n_head * {hd}")
    if (kv * n_head) % config.n_head:
        raise InheritError(f"n_head={n_head} of {config.n_head} query heads does not keep whole groups of the "
                           f"{kv} key/value heads (grouped-query attention): make n_head a multiple of "
                           f"{config.n_head // kv}")
    if (config.mlp_width * n_embd) % config.n_embd:
        raise InheritError(f"n_embd={n_embd} of {config.n_embd} does not keep a whole number of the "
                           f"{config.mlp_width} MLP units in proportion")
    return dataclasses.replace(
        config, n_embd=n_embd, n_head=n_head, n_kv_head=kv * n_head // config.n_head if config.n_kv_head else 0,
        intermediate_size=config.mlp_width * n_embd // config.n_embd if config.intermediate_size else 0)


def shrink_width(model, n_embd=None, n_head=None):
    """The half-width baseline (or any narrower width): model's depth, n_embd wide with n_head heads of its head
    size, every tensor a slice of model's: the first heads (with grouped-query attention the kv heads they use), MLP
    units and embedding dimensions, one rule per axis (WIDTH_AXES), so GPT-2 and the Llama family narrow alike."""
    old, new = model.config, width_config(model.config, n_embd, n_head)
    hd = old.head_size
    q, kv = torch.arange(new.n_head * hd), torch.arange(new.kv_heads * hd)
    kept = {"embd": torch.arange(new.n_embd), "heads": q, "mlp": torch.arange(new.mlp_width), "vocab": None,
            "position": None,
            "qkv": torch.cat([q, old.n_head * hd + kv, (old.n_head + old.kv_heads) * hd + kv])}
    narrowed = {}
    for name, tensor in model.state_dict().items():
        axes = WIDTH_AXES.get(name.split(".", 3)[3] if name.startswith("transformer.h.") else name)
        if axes is None:
            raise InheritError(f"cannot narrow {name}: inherit.WIDTH_AXES does not say what its dimensions index")
        for dim, axis in enumerate(axes):
            if kept[axis] is not None:
                tensor = tensor.index_select(dim, kept[axis].to(tensor.device))
        narrowed[name] = tensor
    return model_with(new, narrowed, "the model narrowed by WIDTH_AXES", f"a model {new.n_embd} wide", InheritError)


def inherit_metadata(source, layers, reference, fresh):
    return dict(source=source, layers=list(layers), source_n_layer=reference.config.n_layer, fresh=list(fresh),
                reference_val_loss=None, reference_eval=None)


def source_shape(config, info=None):
    """(n_layer, n_embd, n_head) of a reference (config), or of the one a model of config was inherited from
    (info: its checkpoint's inherit metadata): a growing run checks that its reference is still that one."""
    if info is None:
        return config.n_layer, config.n_embd, config.n_head
    return info["source_n_layer"], *info.get("source_width", (config.n_embd, config.n_head))


def check_analysis_is_of(analysis, reference, source):
    """Refuse an analysis.json (for --n_layer=auto) that analyze_rank.py made of another model than reference."""
    with open(analysis) as f:
        report = json.load(f)
    theirs, ours = report.get("model_fingerprint"), reference.fingerprint()
    if theirs != ours:
        what = f"model fingerprint {theirs}" if theirs else "no model fingerprint"
        of = f"of {report['model']!r}" if report.get("model") else "of an unnamed model"
        raise InheritError(f"{analysis} is an analysis {of} ({what}), not of --init_from={source!r} "
                           f"(fingerprint {ours}): run python analyze_rank.py --model={source} first")


def student_config(cfg, reference_checkpoint, layers, block_size):
    """The student's run config, as train.py keys: the reference run's training settings (its checkpoint's
    student_keys), then how the student was made, then this command's data and evaluation settings."""
    run_config = (reference_checkpoint or {}).get("config") or {}
    recorded = {k: run_config[k] for k in (reference_checkpoint or {}).get("student_keys", ()) if k in run_config}
    if cfg["dataset"] and not cfg["data_dir"]:
        recorded.pop("data_dir", None)  # --dataset names the data; the reference's data_dir would win over it
    recorded |= dict(init_from="inherit", reference=cfg["init_from"], n_layer=len(layers), block_size=block_size,
                     inherit_layers=",".join(map(str, layers)), inherit_fresh=cfg["fresh"])
    recorded |= {k: cfg[k] for k in ("dataset", "data_dir") if cfg[k]}
    return recorded | {k: cfg[k] for k in EVAL_DEFAULTS}  # the reference's loss was measured with these


def train_command(out_dir, config, round_iters):
    """The train.py command that trains the student in out_dir (its data named explicitly), growing in rounds of
    round_iters steps, each with its own cosine (README step 5), when round_iters is not 0."""
    data_arg = f"--data_dir={config['data_dir']}" if config.get("data_dir") else \
        f"--dataset={config.get('dataset') or 'openwebtext'}"
    rounds = [f"--grow_every={round_iters}", f"--lr_decay_iters={round_iters}"] if round_iters else []
    return shlex.join(["python", "train.py", "--init_from=resume", f"--out_dir={out_dir}", *rounds, data_arg])


# -----------------------------------------------------------------------------
# the command line
DEFAULTS = dict(
    init_from="gpt2",  # the reference: a GPT-2 name, a Hugging Face folder, or one of our out_dirs / ckpt.pt
    n_layer=None,  # how many leading blocks to inherit (None: half the reference; "auto": --analysis)
    layers="",  # or an explicit list of reference block indices, e.g. "0,1,2,3" or "0,1,2,0,1,2"
    analysis="",  # analyze_rank.py's analysis.json of this reference, for --n_layer=auto
    fresh="",  # comma-separated parts left at fresh init: wpe, ln_f
    n_embd=None,  # [1, inf): the half-width baseline: narrow every block to this width (None: the reference's)
    n_head=None,  # [1, inf): ... and to its first n_head heads, of the reference's head size (None: n_embd / head size)
    out_dir="out-inherit",  # a folder: the student goes to out_dir/ckpt.pt
    overwrite=False,  # replace a checkpoint already in out_dir
    # measure the reference's val loss (the growth target) with train.py's evaluation:
    dataset="",  # e.g. shakespeare_char -> data/shakespeare_char (or data_dir)
    data_dir="",
    block_size=None,  # [1, inf); None: the reference's context
    eval_iters=None,  # [1, inf); None: the reference run's (our checkpoints), else 200
    batch_size=None,  # [1, inf); None: the reference run's (our checkpoints), else 12
    seed=None,  # [0, 4294967295]; None: the reference run's (our checkpoints), else 1337
    device="cuda" if torch.cuda.is_available() else "cpu",
    dtype="bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32",
)


def main(cfg):
    """Inherit, measure the reference's val loss (with data), write out_dir/ckpt.pt; returns its path and config.
    Every check comes before the checkpoint is written: a refused command writes nothing."""
    check_device(cfg["device"])
    out_path = checkpoint_path(cfg["out_dir"])
    if cfg["out_dir"].endswith(".pt"):
        raise InheritError(f"out_dir={cfg['out_dir']!r} ends in .pt, but out_dir is a folder (the student goes "
                           f"to out_dir/ckpt.pt)")
    existing = find_checkpoint(cfg["out_dir"])  # ckpt.pt, or a sharded ckpt.dcp/ that writing ckpt.pt would remove
    if existing and not cfg["overwrite"]:
        raise InheritError(f"{existing[1]} exists: train it with python train.py --init_from=resume --out_dir="
                           f"{cfg['out_dir']}, pick another --out_dir, or replace it with --overwrite=True")
    if cfg["n_layer"] == "auto" and not cfg["analysis"]:
        raise InheritError("--n_layer=auto needs --analysis=out-analysis/analysis.json (from analyze_rank.py)")
    n_layer = suggested_depth(cfg["analysis"]) if cfg["n_layer"] == "auto" else cfg["n_layer"]
    fresh = [p for p in cfg["fresh"].split(",") if p]
    data_dir = cfg["data_dir"] or (os.path.join("data", cfg["dataset"]) if cfg["dataset"] else "")
    meta = load_meta(data_dir) if data_dir else None  # fail on a bad dataset before loading a large model
    reference = Reference(cfg["init_from"])  # its config; blocks are read when needed
    if cfg["n_layer"] == "auto":
        check_analysis_is_of(cfg["analysis"], reference, cfg["init_from"])
    width = {k: cfg[k] for k in ("n_embd", "n_head") if cfg[k] is not None}
    if width and n_layer is None:  # the half-width baseline keeps the full depth
        n_layer = reference.config.n_layer
    layers = parse_layers(cfg["layers"], n_layer, reference.config.n_layer)
    if meta and meta["vocab_size"] > reference.config.vocab_size:
        raise InheritError(f"the dataset's vocabulary ({meta['vocab_size']} ids) does not fit the reference's "
                           f"({reference.config.vocab_size}): use data tokenized like the reference")
    if meta:
        check_data_tokenizer(meta, data_dir, reference.opened.known_tokenizer_meta(), cfg["init_from"])
    block_size = cfg["block_size"] or reference.config.block_size
    student = inherit(reference, layers, fresh, block_size=block_size)
    if width:
        student = shrink_width(student, **width)
    student = student.to(cfg["device"])
    reference_run = (reference.checkpoint or {}).get("config") or {}
    for key, default in EVAL_DEFAULTS.items():  # evaluate as the reference run did, so train.py's eval matches
        if cfg[key] is None:
            cfg[key] = reference_run.get(key, default)
    meta_inherit = inherit_metadata(cfg["init_from"], layers, reference, fresh) | {"settings": dict(cfg)}  # resolved
    if width:
        meta_inherit["source_width"] = [reference.config.n_embd, reference.config.n_head]
    print(f"inherited blocks {layers} of {cfg['init_from']} ({reference.config.n_layer} layers)"
          + (f", narrowed to n_embd={student.config.n_embd}, n_head={student.config.n_head}" if width else "")
          + f": {student.get_num_params() / 1e6:.2f}M parameters")
    if data_dir:  # the reference's own loss needs all of it, once
        full_reference = reference.load().to(cfg["device"])
        val = open_tokens(data_dir, "val")
        ctx = (torch.autocast(device_type="cuda", dtype=getattr(torch, cfg["dtype"]))
               if "cuda" in cfg["device"] and cfg["dtype"] != "float32" else contextlib.nullcontext())
        offsets = eval_offsets(val, block_size, cfg["eval_iters"], cfg["batch_size"], cfg["seed"])
        ref_loss = evaluate_loss(full_reference, val, offsets, block_size, cfg["batch_size"], cfg["device"], ctx)
        del full_reference
        meta_inherit["reference_val_loss"] = ref_loss
        meta_inherit["reference_eval"] = dict(data_dir=os.path.abspath(data_dir), block_size=block_size,
                                              eval_iters=cfg["eval_iters"], batch_size=cfg["batch_size"],
                                              seed=cfg["seed"])
        print(f"reference val loss on {data_dir}: {ref_loss:.4f} (the growth target)")
    config = student_config(cfg, reference.checkpoint, layers, block_size)
    if width:
        config |= {"n_embd": student.config.n_embd, "n_head": student.config.n_head}
    save_checkpoint(dict(model=student.state_dict(), model_args=dataclasses.asdict(student.config), config=config,
                         iter_num=0, best_val_loss=float("inf"), inherit=meta_inherit), out_path)
    round_iters = reference_run.get("max_iters", 0) // 4  # the README's rounds; the paper's are all T of them
    print(f"wrote {out_path}, with the training settings of "
          + ("the reference run" if reference_run.get("learning_rate") else "train.py's defaults")
          + f"; train it with: {train_command(cfg['out_dir'], config, round_iters)}  "
          + (f"(rounds of a quarter of the reference run's {reference_run['max_iters']} steps until its val loss)"
             if round_iters else "(add --grow_every=ITERS --lr_decay_iters=ITERS to grow it in rounds)"))
    return out_path, config


if __name__ == "__main__":
    try:
        main(configure_or_exit(DEFAULTS))
    except ValueError as e:  # InheritError, CheckpointError, DataError, ConfigError, ModelLoadError, AnalysisError
        sys.exit(f"error: {e}")
