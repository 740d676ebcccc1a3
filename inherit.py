"""
Inheritune, step 1: build a smaller model from the blocks of a larger pre-trained one.

    python inherit.py --init_from=gpt2-medium --out_dir=out-inherit            # first L/2 = 12 blocks
    python inherit.py --init_from=out-ref --n_layer=4 --dataset=shakespeare_char --out_dir=out-inherit
    python inherit.py --init_from=gpt2 --layers=0,1,2,3,0,1,2,3 --out_dir=out-hybrid  # any list, repeats allowed
    python inherit.py --init_from=out-ref --n_layer=auto --analysis=out-analysis/analysis.json

The student gets the reference's token and position embeddings, the chosen blocks (in the given order),
the final LayerNorm and the tied LM head. It is written as out_dir/ckpt.pt in train.py's format, so
`python train.py --init_from=resume --out_dir=...` trains it. With --dataset, the reference's validation
loss is measured with train.py's evaluation and stored as the growth target.

This file is also the library train.py uses to inherit and to grow (--grow_every).
"""

import dataclasses
import os
import sys

import torch

from checkpoint import load_model, save_checkpoint
from model import GPT

FRESH_PARTS = ("wpe", "ln_f")  # parts that can be left at fresh init (the paper's released code did)
GROW_INITS = ("reference", "copy", "identity", "random")


class InheritError(ValueError):
    pass


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


def copy_block(dst, src):
    with torch.no_grad():
        for p_dst, p_src in zip(dst.parameters(), src.parameters()):
            p_dst.copy_(p_src)


def inherit(reference, layers, fresh=(), block_size=None, dropout=None):
    """A new GPT made of reference's embeddings, blocks[layers], final LayerNorm and head.

    Parts named in fresh ("wpe", "ln_f") keep their fresh initialization. block_size may crop the context.
    Note: with scale_attn_by_inverse_layer_idx, a block's attention scale follows its new position.
    """
    unknown = set(fresh) - set(FRESH_PARTS)
    if unknown:
        raise InheritError(f"cannot leave {sorted(unknown)} fresh; choose from {', '.join(FRESH_PARTS)}")
    ref_cfg = reference.config
    block_size = block_size or ref_cfg.block_size
    if block_size > ref_cfg.block_size:
        raise InheritError(f"block_size={block_size} is longer than the reference's context {ref_cfg.block_size}")
    config = dataclasses.replace(ref_cfg, n_layer=len(layers), block_size=block_size,
                                 dropout=ref_cfg.dropout if dropout is None else dropout)
    student = GPT(config).to(reference.lm_head.weight.device)
    with torch.no_grad():
        student.transformer.wte.weight.copy_(reference.transformer.wte.weight)  # also the tied head
        if "wpe" not in fresh:
            student.transformer.wpe.weight.copy_(reference.transformer.wpe.weight[:block_size])
        if "ln_f" not in fresh:
            student.transformer.ln_f.load_state_dict(reference.transformer.ln_f.state_dict())
    for dst, i in zip(student.transformer.h, layers):
        copy_block(dst, reference.transformer.h[i])
    return student


def grow(model, grow_by, init, reference=None, next_reference_layer=None):
    """model with grow_by new blocks on top (below the final LayerNorm); the trained blocks are kept.

    init: "reference" (the reference's blocks next_reference_layer, +1, ...), "copy" (duplicate the
    top grow_by trained blocks), "identity" (fresh blocks whose output projections are zero, so the
    function is unchanged), "random" (fresh blocks, GPT-2 init for the new depth).
    """
    if init not in GROW_INITS:
        raise InheritError(f"grow_init={init!r}: choose from {', '.join(GROW_INITS)}")
    old_n = model.config.n_layer
    if init == "reference":
        if reference is None:
            raise InheritError("grow_init='reference' needs the reference model")
        if next_reference_layer + grow_by > reference.config.n_layer:
            raise InheritError(f"cannot grow by {grow_by} from reference block {next_reference_layer}: "
                               f"the reference has {reference.config.n_layer} blocks")
    if init == "copy" and grow_by > old_n:
        raise InheritError(f"grow_init='copy' duplicates the top {grow_by} blocks but the model has {old_n}")
    grown = GPT(dataclasses.replace(model.config, n_layer=old_n + grow_by)).to(model.lm_head.weight.device)
    grown.load_state_dict(model.state_dict(), strict=False)  # everything but the new blocks
    new_blocks = grown.transformer.h[old_n:]
    for j, block in enumerate(new_blocks):
        if init == "reference":
            copy_block(block, reference.transformer.h[next_reference_layer + j])
        elif init == "copy":
            copy_block(block, model.transformer.h[old_n - grow_by + j])
        elif init == "identity":
            with torch.no_grad():
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight.zero_()
                    if proj.bias is not None:
                        proj.bias.zero_()
    return grown


def inherit_metadata(source, layers, reference, fresh):
    return {
        "source": source,
        "layers": list(layers),
        "source_n_layer": reference.config.n_layer,
        "fresh": list(fresh),
        "reference_val_loss": None,
        "reference_eval": None,
    }


def resolve_n_layer(n_layer, analysis):
    """--n_layer as given, or analyze_rank.py's recommended depth for --n_layer=auto."""
    if n_layer != "auto":
        return n_layer
    if not analysis:
        raise InheritError("--n_layer=auto needs --analysis=out-analysis/analysis.json (from analyze_rank.py)")
    from analyze_rank import suggested_depth

    return suggested_depth(analysis)


# -----------------------------------------------------------------------------
# the command line
if __name__ == "__main__":
    from configurator import configure_or_exit
    from data import DataError, evaluate_loss, eval_offsets, load_meta, open_tokens
    import contextlib

    defaults = dict(
        init_from="gpt2",  # the reference: a GPT-2 name, a Hugging Face folder, or one of our out_dirs / ckpt.pt
        n_layer=None,  # how many leading blocks to inherit (None: half the reference; "auto": --analysis)
        layers="",  # or an explicit list of reference block indices, e.g. "0,1,2,3" or "0,1,2,0,1,2"
        analysis="",  # analyze_rank.py's analysis.json, for --n_layer=auto
        fresh="",  # comma-separated parts left at fresh init: wpe, ln_f
        out_dir="out-inherit",
        # measure the reference's val loss (the growth target) with train.py's evaluation:
        dataset="",  # e.g. shakespeare_char -> data/shakespeare_char (or data_dir)
        data_dir="",
        block_size=None,  # None: the reference's context
        eval_iters=200,
        batch_size=12,
        seed=1337,
        device="cuda" if torch.cuda.is_available() else "cpu",
        dtype="bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32",
    )
    cfg = configure_or_exit(defaults)
    try:
        n_layer = resolve_n_layer(cfg["n_layer"], cfg["analysis"])
        fresh = [p for p in cfg["fresh"].split(",") if p]
        data_dir = cfg["data_dir"] or (os.path.join("data", cfg["dataset"]) if cfg["dataset"] else "")
        meta = load_meta(data_dir) if data_dir else None  # fail on a bad dataset before loading a large model
        reference, ref_ckpt = load_model(cfg["init_from"], cfg["device"])
        reference.eval()
        layers = parse_layers(cfg["layers"], n_layer, reference.config.n_layer)
        if meta and meta["vocab_size"] > reference.config.vocab_size:
            raise InheritError(f"the dataset's vocabulary ({meta['vocab_size']} ids) does not fit the reference's "
                               f"({reference.config.vocab_size}): use data tokenized like the reference")
        block_size = cfg["block_size"] or reference.config.block_size
        student = inherit(reference, layers, fresh, block_size=block_size)
    except (InheritError, DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    meta_inherit = inherit_metadata(cfg["init_from"], layers, reference, fresh)
    print(f"inherited blocks {layers} of {cfg['init_from']} ({reference.config.n_layer} layers): "
          f"{student.get_num_params() / 1e6:.2f}M parameters")
    if data_dir:
        val = open_tokens(data_dir, "val")
        ctx = (torch.autocast(device_type="cuda", dtype=getattr(torch, cfg["dtype"]))
               if "cuda" in cfg["device"] and cfg["dtype"] != "float32" else contextlib.nullcontext())
        offsets = eval_offsets(val, block_size, cfg["eval_iters"], cfg["batch_size"], cfg["seed"])
        if block_size < reference.config.block_size:
            reference.crop_block_size(block_size)
        ref_loss = evaluate_loss(reference, val, offsets, block_size, cfg["batch_size"], cfg["device"], ctx)
        meta_inherit["reference_val_loss"] = ref_loss
        meta_inherit["reference_eval"] = dict(data_dir=os.path.abspath(data_dir), block_size=block_size,
                                              eval_iters=cfg["eval_iters"], batch_size=cfg["batch_size"], seed=cfg["seed"])
        print(f"reference val loss on {data_dir}: {ref_loss:.4f} (the growth target)")
    save_checkpoint({
        "model": student.state_dict(),
        "model_args": dataclasses.asdict(student.config),
        "config": cfg,
        "iter_num": 0,
        "best_val_loss": float("inf"),
        "inherit": meta_inherit,
    }, cfg["out_dir"])
    print(f"wrote {os.path.join(cfg['out_dir'], 'ckpt.pt')}; train it with "
          f"`python train.py --init_from=resume --out_dir={cfg['out_dir']}`")
