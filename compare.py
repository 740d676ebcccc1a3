"""
Compare train.py runs at equal steps and at equal compute: a table, and a PNG of val loss against steps and FLOPs.

    python compare.py out-inherit out-scratch out-scratch-2x --out=compare.png --json=compare.json
    python compare.py out-inherit out-scratch --metric=lr --out=lr.png   # any number in log.jsonl, by name

One row per run (an out_dir with log.jsonl): layers (e.g. 4->6), parameters, steps, tokens and FLOPs (all rounds),
final and best val loss, and the val loss at the FIRST run's steps and FLOPs, interpolated between its evals ("n/a"
outside the curve: never extrapolated). A reference's or teacher's training cost is listed apart (from its log.jsonl
when it is one of our runs), with the total including it. --metric: any number the runs log (nested: layer_loss/3).
A run trained with --collapse_every also gets OUT-collapse-RUN.png: MaxRank and sink share per layer and iteration,
and each layer's grad_q / grad_k against its eps with Thm H.1's bounds when logged.
"""

import json
import os
import re
import sys

import matplotlib
import numpy as np
import torch

from inheritune.atomic import atomic_write
from inheritune.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from inheritune.configurator import configure_or_exit
from inheritune.run import flat
from model import GPT, GPTConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULTS = dict(
    out="compare.png",  # the PNG to write: val loss against steps and against FLOPs
    json="",  # also write the comparison as JSON to this file
    metric="val_loss",  # the number the PNG draws against steps and FLOPs (a nested one by its path: key/sub)
)


class CompareError(ValueError):
    pass


def read_log(out_dir):
    """The records of out_dir/log.jsonl, in its order."""
    path, records = os.path.join(out_dir, "log.jsonl"), []
    if not os.path.isfile(path):
        raise CompareError(f"{out_dir} has no log.jsonl: pass the out_dirs of train.py runs")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise CompareError(f"{path} is damaged: line {lineno} is not JSON") from None
    return records


def read_evals(out_dir):
    """The eval records of out_dir/log.jsonl in iteration order, the last logged per iteration winning (a resume)."""
    by_iter, path = {r["iter"]: r for r in read_log(out_dir) if "val_loss" in r}, os.path.join(out_dir, "log.jsonl")
    if not by_iter:
        raise CompareError(f"{path} has no eval records (val_loss): the run has not reached its first eval")
    if any("flops" not in r for r in by_iter.values()):
        raise CompareError(f"{path} has eval records without tokens and FLOPs (written by a train.py from before "
                           f"they were counted): re-run the training to compare it at equal compute")
    return [by_iter[i] for i in sorted(by_iter)]


def read_series(out_dir, name):
    """[(iter, FLOPs or None, value)] of the number called name (nested: by its path) in log.jsonl, as read_evals."""
    by_iter, names = {}, set()
    for record in read_log(out_dir):
        numbers = {k: v for k, v in flat(record).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        names |= {k.split("/")[0] for k in numbers}
        if name in numbers:
            by_iter[record["iter"]] = (record["iter"], record.get("flops"), numbers[name])
    if not by_iter:
        raise CompareError(f"{out_dir}/log.jsonl has no number named {name!r} (--metric): it logs "
                           f"{', '.join(sorted(names))} (a nested one by its path, e.g. key/0)")
    return [by_iter[i] for i in sorted(by_iter)]


COLLAPSE_KEYS = ("max_rank", "sink_share", "eps")  # what the collapse plots draw of a layer's collapse record
GRAD_KEYS = ("grad_q", "bound_q", "grad_k", "bound_k")  # optional: records written before they were logged lack them


def read_collapse(out_dir):
    """{iter: {layer: {COLLAPSE_KEYS, and the GRAD_KEYS logged}}} of out_dir/log.jsonl's collapse records, or {}."""
    by_iter = {}
    for lineno, record in enumerate(read_log(out_dir), 1):
        if not isinstance(record, dict) or record.get("event") != "collapse":
            continue
        try:
            layers = {int(layer["layer"]): {k: float(layer[k]) for k in (*COLLAPSE_KEYS, *GRAD_KEYS)
                                            if k in COLLAPSE_KEYS or k in layer} for layer in record["layers"]}
            if not layers or min(layers) < 0:  # the heatmap's rows are the layers 0 .. n_layer - 1
                raise ValueError
            by_iter[int(record["iter"])] = layers
        except (KeyError, TypeError, ValueError):
            raise CompareError(f"{os.path.join(out_dir, 'log.jsonl')} is damaged: line {lineno} is not a collapse "
                               f"record (iter, and layers with layer, max_rank, sink_share, eps)") from None
    return by_iter


def collapse_grid(by_iter, key):
    """(iters, grid): grid[layer, i] is key of layer at iters[i]; NaN where the layer did not exist yet."""
    iters = sorted(by_iter)
    grid = np.full((1 + max(max(layers) for layers in by_iter.values()), len(iters)), np.nan)
    for i, it in enumerate(iters):
        for layer, metrics in by_iter[it].items():
            grid[layer, i] = metrics[key]
    return iters, grid


def plot_collapse(name, by_iter, path):
    """One run's MaxRank and sink-share heatmaps and, when logged, grad_q / grad_k against eps with their bounds (do
    collapsed layers stop learning?). Returns the gradients drawn ("q", "k")."""
    points = [(layer, m) for layers in by_iter.values() for layer, m in layers.items()]
    grads = [g for g in ("q", "k") if any(f"grad_{g}" in m for _, m in points)]
    fig, axes = plt.subplots(1 + bool(grads), 2, figsize=(12, 4.5 * (1 + bool(grads))), squeeze=False)
    for ax, key, title in zip(axes[0], ("max_rank", "sink_share"), ("MaxRank", "sink share")):
        iters, grid = collapse_grid(by_iter, key)
        # cell edges halfway between records, so that the x axis is iterations even when the interval changed
        steps = np.diff(iters) if len(iters) > 1 else np.ones(1)
        x = np.concatenate([[iters[0] - steps[0] / 2], np.array(iters[:-1]) + steps / 2, [iters[-1] + steps[-1] / 2]])
        mesh = ax.pcolormesh(x, np.arange(len(grid) + 1) - 0.5, np.ma.masked_invalid(grid), cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=title)
        blank = " (blank: layer not there yet)" if np.isnan(grid).any() else ""
        ax.set(xlabel="iteration", ylabel="layer", title=f"{name}\n{title} per layer{blank}")
        ax.yaxis.get_major_locator().set_params(integer=True)
    for ax, g in zip(axes[1] if grads else [], grads):
        for key, marker in ((f"grad_{g}", "o"), (f"bound_{g}", "x")):
            have = [(layer, m) for layer, m in points if key in m]
            if have:  # one color scale for all layers, so that a layer has the same color in both marks
                dots = ax.scatter([m["eps"] for _, m in have], [m[key] for _, m in have], marker=marker, label=key,
                                  c=[layer for layer, _ in have], cmap="viridis", vmin=0,
                                  vmax=max(layer for layer, _ in points))
        fig.colorbar(dots, ax=ax, label="layer").ax.yaxis.get_major_locator().set_params(integer=True)
        least_eps = min(m["eps"] for _, m in points)
        # at least two decades, so that the ticks are 10^k even when every eps is close to 1 (an eps of 0 is off scale)
        left = min([m["eps"] for _, m in points if m["eps"] > 0] + [0.02]) / 2
        ax.set(xscale="log", yscale="log", xlim=(left, 1.5), xlabel="eps (Thm H.1)",
               ylabel=f"||dL/dW_{g}||_F", title=f"{name}\ngrad_{g} (o) and Thm H.1's bound (x) against eps")
        if least_eps >= 0.5:
            ax.text(0.03, 0.03, f"every eps >= {least_eps:.2f}: no head is sink-collapsed", transform=ax.transAxes)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return grads


def interpolate(xs, ys, x):
    """y at x on the piecewise-linear curve through (xs, ys); None outside [xs[0], xs[-1]]: no extrapolation."""
    return float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else None


def reference_source(ckpt):
    """(kind, where) of the trained model a run was built from (its latest location): an inherited run's reference, a
    distilled run's teacher, or (None, None)."""
    config = (ckpt or {}).get("config") or {}
    if ckpt is not None and ckpt.get("inherit"):
        return "reference", config.get("reference") or ckpt["inherit"].get("source")
    if ckpt is not None and ckpt.get("distill"):
        return "teacher", config.get("teacher") or ckpt["distill"]["teacher"]
    return None, None


def reference_cost(source):
    """{source, tokens, flops, steps} of a reference that is one of our runs; else {source, note} saying why not."""
    out_dir = (os.path.dirname(source) or ".") if source.endswith(".pt") else source
    if not os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        return {"source": source, "note": f"not known: no log.jsonl at {out_dir}"}
    try:
        last = read_evals(out_dir)[-1]
    except CompareError as e:
        return {"source": source, "note": f"not known: {e}"}
    return {"source": source, "tokens": last["tokens"], "flops": last["flops"], "steps": last["iter"]}


def summarize(out_dir):
    """One run's row: its eval curve and what it cost."""
    evals = read_evals(out_dir)
    try:  # its metadata only: the tensors stay on disk (ckpt.pt memory-mapped, a sharded checkpoint's shards unread)
        ckpt = load_checkpoint(out_dir, weights=False) if find_checkpoint(out_dir) else None
    except CheckpointError as e:  # it names the file as damaged
        raise CompareError(str(e)) from None
    # growing runs log their depth with every eval
    depths = [r["n_layer"] for r in evals if "n_layer" in r] + ([ckpt["model_args"]["n_layer"]] if ckpt else [])
    layers = [d for i, d in enumerate(depths) if i == 0 or d != depths[i - 1]]
    with torch.device("meta"):  # the shape only: no memory, no init
        params = GPT(GPTConfig(**ckpt["model_args"])).get_num_params(non_embedding=False) if ckpt else None
    kind, source = reference_source(ckpt)
    last = evals[-1]
    return {"name": out_dir, "layers": layers, "params": params, "steps": last["iter"], "tokens": last["tokens"],
            "flops": last["flops"], "final_val_loss": last["val_loss"],
            "best_val_loss": min(r["val_loss"] for r in evals),
            "reference": reference_cost(source) if source else None, "reference_kind": kind,
            "evals": evals}


def compare(out_dirs):
    """The runs' rows, with each run's val loss at the first run's steps and FLOPs."""
    runs = [summarize(d) for d in out_dirs]
    matched_steps, matched_flops = runs[0]["steps"], runs[0]["flops"]
    for run in runs:
        iters, flops, losses = ([r[k] for r in run["evals"]] for k in ("iter", "flops", "val_loss"))
        run["val_loss_at_matched_steps"] = interpolate(iters, losses, matched_steps)
        run["val_loss_at_matched_flops"] = interpolate(flops, losses, matched_flops)
        ref = run["reference"]
        run["flops_incl_reference"] = run["flops"] + ref["flops"] if ref and "flops" in ref else None
    return {"matched_steps": matched_steps, "matched_flops": matched_flops, "runs": runs}


def count(n):
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def loss(x):
    return "n/a" if x is None else f"{x:.4f}"


def format_report(result):
    steps, flops = result["matched_steps"], result["matched_flops"]
    header = ["run", "layers", "params", "steps", "tokens", "FLOPs", "final val", "best val",
              f"val @ {steps} steps", f"val @ {flops:.3g} FLOPs"]
    rows = [[run["name"], "->".join(map(str, run["layers"])) or "?",
             "?" if run["params"] is None else count(run["params"]), str(run["steps"]), count(run["tokens"]),
             f"{run['flops']:.3g}", loss(run["final_val_loss"]), loss(run["best_val_loss"]),
             loss(run["val_loss_at_matched_steps"]), loss(run["val_loss_at_matched_flops"])] for run in result["runs"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"val @: each run's val loss at the first run's ({result['runs'][0]['name']}) steps and FLOPs, "
                 f"interpolated between its evals; n/a: outside its eval curve (never extrapolated)")
    for run in (run for run in result["runs"] if run["reference"]):
        ref, kind = run["reference"], run["reference_kind"]
        if "flops" in ref:
            lines.append(f"{run['name']}: {kind} cost: {ref['flops']:.3g} FLOPs, {count(ref['tokens'])} tokens, "
                         f"{ref['steps']} steps ({ref['source']}; not included above)")
            lines.append(f"{run['name']}: total incl. {kind}: {run['flops_incl_reference']:.3g} FLOPs")
        else:
            lines.append(f"{run['name']}: {kind} cost: {ref['note']} ({ref['source']}; not included above)")
    return "\n".join(lines)


def plot(result, path, metric="val_loss", series=None):
    """metric (series: {run name: its read_series}; by default from the runs' eval records) against steps and against
    FLOPs, one line per run, the matched budgets dotted; written atomically."""
    series = series or {run["name"]: [(r["iter"], r["flops"], r[metric]) for r in run["evals"]]
                        for run in result["runs"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
    for run in result["runs"]:
        label = f"{run['name']} ({'->'.join(map(str, run['layers']))} layers)"
        points = series[run["name"]]
        line, = axes[0].plot([p[0] for p in points], [p[2] for p in points], marker=".", label=label)
        flops, values = [p[1] for p in points if p[1] is not None], [p[2] for p in points if p[1] is not None]
        axes[1].plot(flops, values, marker=".", color=line.get_color(), label=label)
        if run["flops_incl_reference"] is not None:  # the same curve, moved right by what the reference cost
            axes[1].plot([f + run["reference"]["flops"] for f in flops], values, linestyle="--",
                         color=line.get_color(), label=f"{run['name']} incl. {run['reference_kind']}")
    for ax, x, xlabel, title in zip(axes, (result["matched_steps"], result["matched_flops"]),
                                    ("steps", "training FLOPs"),
                                    ("equal steps", "equal compute (dashed: incl. reference / teacher)")):
        ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        ax.set(xlabel=xlabel, ylabel=metric.replace("_", " "), title=f"{metric} at {title}")
        ax.grid(alpha=0.3)
    # one legend below the plots, never over a curve: the right plot's lines (every run, and the dashed ones)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:  # the arguments are out_dirs, not the config files the key list mentions
        print(__doc__.strip() + "\n")
    out_dirs = [os.path.normpath(a) for a in argv if not a.startswith("-")]
    config = configure_or_exit(DEFAULTS, [a for a in argv if a.startswith("-")])
    if not out_dirs:
        sys.exit("error: pass the out_dirs of the runs to compare, the baseline first: python compare.py OUT_DIR ...")
    if not config["out"].lower().endswith(".png"):
        sys.exit(f"error: out={config['out']!r} is not a .png file path: pass --out=NAME.png")
    try:
        result = compare(out_dirs)
        series = {d: read_series(d, config["metric"]) for d in out_dirs}  # all read before anything is written
        collapses = {d: read_collapse(d) for d in out_dirs}
    except CompareError as e:
        sys.exit(f"error: {e}")
    print(format_report(result))
    plot(result, config["out"], config["metric"], series)
    if config["json"]:
        os.makedirs(os.path.dirname(os.path.abspath(config["json"])), exist_ok=True)
        with atomic_write(config["json"], "w") as f:
            json.dump(result, f, indent=1)
    print(f"wrote {config['out']}" + (f" and {config['json']}" if config["json"] else ""))
    for out_dir, by_iter in collapses.items():
        if by_iter:  # runs trained without --collapse_every have no records: nothing to draw
            name = re.sub(r"[^\w.-]+", "_", out_dir).strip("_.") or "run"  # "../runs/a" -> "runs_a", "." -> "run"
            path = f"{config['out'][:-len('.png')]}-collapse-{name}.png"
            grads = plot_collapse(out_dir, by_iter, path)
            print(f"wrote {path}: {out_dir}'s MaxRank and sink share per layer over iterations"
                  + "".join(f", grad_{g} against eps" for g in grads))


if __name__ == "__main__":
    main()
