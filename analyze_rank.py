"""
Measure attention collapse ("lazy layers") in a decoder LM, as in Inheritune (arXiv 2404.08634, Sec. 2, App. C).

    python analyze_rank.py --model=out-shakespeare-char --data=data/shakespeare_char/val.bin
    python analyze_rank.py --model=gpt2-medium --data=data/openwebtext/val.bin --out_dir=out-analysis-gpt2m
    python analyze_rank.py --model=path/to/any/hf/causal-lm --data=some.txt

--model: ours or any Hugging Face causal LM; --data: a .bin of the model's token ids or a .txt (docs/analysis.md).

Metrics, for one head's T x T post-softmax attention matrix A of one sequence:
  k*(tau)  smallest k with (s_1^2 + ... + s_k^2) / (s_1^2 + ... + s_T^2) >= tau, s the singular values of A
  m*(eta)  smallest number of columns, largest p_j first, whose p_j = ||A[:, j]||^2 / ||A||_F^2 sum to >= eta
  p_0      the first column's share ||A[:, 0]||^2 / ||A||_F^2 (the attention sink)
Rank(h) = mean k* over the samples, MaxRank(l) = max over heads, Mass(h) = mean m*, AvgMass(l) = mean over
heads. Layer l is lazy when MaxRank(l) == 1: every head is rank one on every sample (the paper's rule);
--lazy_tolerance=x relaxes it to MaxRank(l) <= 1 + x.
"""

import csv
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from inheritune.atomic import atomic_write
from inheritune.checkpoint import CheckpointError, model_fingerprint
from inheritune.configurator import ConfigError, check_device, configure_or_exit
from inheritune.data import DataError, check_data_tokenizer, load_meta, open_tokens
from inheritune.hf import ARCHITECTURES, ModelLoadError, read_hf_config
from inheritune.hub import hub_unreachable
from inheritune.source import HF_KINDS, open_source
from inheritune.tokenizer import HFTokenizer, TokenizerError, hf_tokenizer_meta, tokenizer_from_meta

# Cumulative shares within this relative tolerance of tau / eta count as reaching it: the T x T identity
# has share exactly k/T for its top k, and rounding must not turn k* = 90 into 91 at tau = 0.9.
BOUNDARY_RTOL = 1e-6
PAPER_SEQ_LEN = 100  # the paper's T
# the tolerances whose depths every run reports besides --lazy_tolerance, so the choice of one is visible
REPORTED_TOLERANCES = (0.0, 0.1, 0.25, 0.5)

DEFAULTS = dict(
    model="",  # our out_dir or .pt, a GPT-2 name / Hugging Face GPT-2 folder, or any Hugging Face causal LM folder
    data="",  # a .bin of token ids or a .txt file
    num_samples=100,  # [1, inf): N sequences
    seq_len=0,  # [0, inf): T tokens each; 0: the paper's 100, or the model's context when that is shorter
    seed=1337,  # [0, 4294967295]: which windows are drawn
    tau=0.9,  # (0, 1]: energy threshold of the approximate rank k*
    eta=0.9,  # (0, 1]: mass threshold of m*
    near_rank_one=1.5,  # [1, inf): heads with Rank below this are listed as near-rank-one
    lazy_tolerance=0.0,  # [0, inf): a layer is lazy when MaxRank <= 1 + this; 0: the paper's rule MaxRank == 1
    batch_size=10,  # [1, inf): sequences per forward pass
    device="auto",  # auto: cuda when available, else cpu
    out_dir="out-analysis",
)


class AnalysisError(ValueError):
    """Bad input to the analysis; the message says what was wrong and what to do."""


# ----------------------------------------------------------------------------------------------------------
# the metrics


def check_threshold(name, value):
    if not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise AnalysisError(f"{name}={value!r} is outside (0, 1]: it is a fraction of the total, e.g. 0.9")


def is_lazy(max_rank, lazy_tolerance):
    # 1 + tolerance, not distance <= tolerance: 1.1 - 1 rounds above 0.1; k* >= 1, so 0 means every k* is 1
    return max_rank <= 1 + lazy_tolerance


def smallest_count_reaching(shares_desc, level):
    """Per row of shares sorted in decreasing order: the smallest k whose first k shares sum to >= level."""
    below = shares_desc.cumsum(-1) < level * (1 - BOUNDARY_RTOL)
    return (below.sum(-1) + 1).clamp_max(shares_desc.size(-1))


eig_pool = functools.lru_cache(maxsize=1)(ThreadPoolExecutor)  # one pool, a new one when the thread count changes


def squared_singular_values(A):
    """s_i^2, largest first, of each matrix of A (..., T, T): the eigenvalues of A A^T, batched."""
    G = A @ A.mT
    flat = G.reshape(-1, *G.shape[-2:])
    workers = torch.get_num_threads()
    if G.device.type == "cpu" and workers > 1 and flat.size(0) >= 2 * workers:
        # LAPACK's own threads on many small matrices are slow, and stall badly when other processes share
        # the cores; one call per core, each on a slice of the stack, is faster and steady
        eig = torch.cat(list(eig_pool(workers).map(torch.linalg.eigvalsh, flat.chunk(workers))))
    else:
        eig = torch.linalg.eigvalsh(flat)
    return eig.reshape(G.shape[:-1]).flip(-1).clamp_min(0)


def layer_metrics(att, tau=0.9, eta=0.9):
    """(k_star, m_star, sink_share) of attention matrices att (..., T, T), each with att's leading shape.
    s_i^2 by a float32 eigvalsh of A A^T (to ~1e-6 of the total, faster on CPU than svdvals); shares in float64."""
    check_threshold("tau", tau)
    check_threshold("eta", eta)
    if att.dim() < 2 or att.size(-1) != att.size(-2):
        raise AnalysisError(f"attention matrices must have shape (..., T, T), got {tuple(att.shape)}")
    energy = squared_singular_values(att.detach().float()).double()
    k_star = smallest_count_reaching(energy / energy.sum(-1, keepdim=True), tau)
    A = att.detach().to(torch.float64)
    column_mass = A.square().sum(-2)  # ||A[:, j]||^2
    p = column_mass / column_mass.sum(-1, keepdim=True)
    m_star = smallest_count_reaching(p.sort(-1, descending=True).values, eta)
    return k_star, m_star, p[..., 0]


def attention_metrics(att, tau=0.9, eta=0.9):
    """(k_star, m_star): approximate rank and column mass of att (..., T, T), int64 with att's leading shape."""
    return layer_metrics(att, tau, eta)[:2]


def entropy_and_eps(att):
    """(mean row entropy in nats, eps of the paper's Thm H.1: the most mass a row puts off the first column) of att
    (..., T, T); eps is summed off the column, as 1 - A[i, 0] rounds to 0 in float32 below about 6e-8."""
    A = att.detach().to(torch.float64)
    entropy = -(A * A.clamp_min(1e-30).log()).sum(-1).mean(-1)
    return entropy, A[..., :, 1:].sum(-1).amax(-1).clamp_max(1)  # (a float32 row can sum to 1 + 1e-7)


def summarize(sums, eps_max, count, near_rank_one, lazy_tolerance=0.0):
    """analysis.json's per-layer records from each layer's sums (4, n_head) over count samples and largest eps."""
    layers = []
    for layer in sorted(sums):
        ranks, masses, sinks, entropies = (sums[layer] / count).tolist()  # per head
        eps = eps_max[layer].tolist()
        heads = [dict(head=h, rank=r, mass=m, sink_share=s, entropy=e, eps=x)
                 for h, (r, m, s, e, x) in enumerate(zip(ranks, masses, sinks, entropies, eps))]
        max_rank = max(ranks)
        layers.append(dict(
            layer=layer,
            max_rank=max_rank,
            mean_rank=sum(ranks) / len(ranks),
            avg_mass=sum(masses) / len(masses),
            sink_share=sum(sinks) / len(sinks),
            entropy=sum(entropies) / len(entropies),
            eps=max(eps),  # the layer is eps-sink-collapsed only when every head is
            lazy=is_lazy(max_rank, lazy_tolerance),
            distance_from_lazy=max_rank - 1,  # how far above the paper's MaxRank == 1
            near_rank_one_heads=[h for h, r in enumerate(ranks) if r < near_rank_one],
            heads=heads,
        ))
    return layers


def recommend_depth(layers):
    """(suggested_n_layer, paper_default_n_layer, reason): the layers before the first lazy one (at least 1), else
    the paper's default L/2."""
    n_layer = len(layers)
    paper_default = max(1, n_layer // 2)
    lazy = [rec["layer"] for rec in layers if rec["lazy"]]
    if not lazy:
        return paper_default, paper_default, "no lazy layer: the paper's default L/2"
    if lazy[0] == 0:
        return 1, paper_default, "layer 0 is already lazy: the smallest depth, 1"
    return lazy[0], paper_default, f"the {lazy[0]} layers before the first lazy layer ({lazy[0]})"


def depth_by_tolerance(layers, lazy_tolerance):
    """For each of REPORTED_TOLERANCES and lazy_tolerance: the lazy layers and the depth recommend_depth picks."""
    rows = []
    for tolerance in sorted({*REPORTED_TOLERANCES, lazy_tolerance}):
        relaxed = [dict(rec, lazy=is_lazy(rec["max_rank"], tolerance)) for rec in layers]
        depth, _, reason = recommend_depth(relaxed)
        rows.append(dict(lazy_tolerance=tolerance, lazy_layers=[rec["layer"] for rec in relaxed if rec["lazy"]],
                         suggested_n_layer=depth, reason=reason, chosen=tolerance == lazy_tolerance))
    return rows


def suggested_depth(analysis_json_path):
    """suggested_n_layer from an analysis.json written by this script (for inherit.py --n_layer=auto)."""
    try:
        with open(analysis_json_path) as f:
            analysis = json.load(f)
    except FileNotFoundError:
        raise AnalysisError(f"{analysis_json_path} not found: run `python analyze_rank.py --model=...` first "
                            f"(it writes out_dir/analysis.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{analysis_json_path} is not valid JSON ({e}): rerun analyze_rank.py") from None
    depth = analysis.get("suggested_n_layer") if isinstance(analysis, dict) else None
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise AnalysisError(f"{analysis_json_path} has no positive integer 'suggested_n_layer' (got {depth!r}): "
                            f"it is not an analysis.json from analyze_rank.py; rerun it")
    return depth


# ----------------------------------------------------------------------------------------------------------
# models: ours (explicit attention path) or any Hugging Face causal LM


class GPTAttentions:
    """Our GPT, its attentions one layer at a time; source: its source.ModelSource (None for a model made here)."""

    def __init__(self, model, source, name=None):
        self.model, self.source, self.name = model.eval(), source, name or str(source)
        self.kind, self.context = "gpt", model.config.block_size
        self.vocab_size, self.n_layer = model.config.vocab_size, model.config.n_layer

    @torch.no_grad()
    def layers(self, idx):
        yield from self.model.iter_attentions(idx)

    def tokenizer(self):
        try:
            return tokenizer_from_meta(self.source.tokenizer_meta())
        except DataError as e:
            raise AnalysisError(f"{e}; or pass a .bin of token ids from its data preparation instead") from None


class HFAttentions:
    """Any Hugging Face causal LM with eager attention; one batch's attentions of all layers at a time."""

    def __init__(self, model, source):
        self.model, self.source, self.name = model.eval(), source, str(source)
        self.kind = "hf"
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                             if isinstance(getattr(config, k, None), int)), None)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.n_layer = getattr(config, "num_hidden_layers", None)

    @classmethod
    def load(cls, source, device):
        """source: a source.ModelSource or its name."""
        from transformers import AutoModelForCausalLM

        source = open_source(source)
        # a Hub id by its name: transformers fetches the weight files a download of ours leaves out (.bin)
        where = source.path if source.kind == "hf_folder" else source.name
        try:
            model = AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager", dtype=torch.float32)
        except Exception as e:  # unknown architecture, no eager attention, missing files: all end here
            raise AnalysisError(f"could not load {source} with transformers as a causal LM with "
                                f"attn_implementation='eager' ({type(e).__name__}: {str(e)[:300]})") from None
        return cls(model.to(device), source)

    @torch.no_grad()
    def layers(self, idx):
        out = self.model(input_ids=idx, output_attentions=True, use_cache=False)
        attentions = getattr(out, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            raise AnalysisError(
                f"{self.name} returned no attention probabilities (attn implementation "
                f"'{getattr(self.model.config, '_attn_implementation', '?')}'). Load it with "
                f"AutoModelForCausalLM.from_pretrained(..., attn_implementation='eager') and call it with "
                f"output_attentions=True; sdpa / flash attention never materialize them")
        rows = attentions[0].sum(-1)
        if not torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
            raise AnalysisError(f"{self.name}'s attentions are not softmax probabilities (rows sum to "
                                f"{rows.min().item():.3g}..{rows.max().item():.3g}); this model cannot be analyzed")
        yield from attentions

    def tokenizer(self):
        try:
            return HFTokenizer(hf_tokenizer_meta(self.source.path))
        except TokenizerError as e:
            raise AnalysisError(f"{e}; or pass a .bin of token ids instead of a .txt file") from None


def load_attention_model(name, device):
    """GPTAttentions for our checkpoints and the families model.py implements, else HFAttentions."""
    if not name:
        raise AnalysisError("no --model: pass an out_dir or .pt checkpoint, a GPT-2 name, or a Hugging Face folder")
    source = open_source(name)
    if source.kind not in HF_KINDS:
        return GPTAttentions(source.load(device=device), source)
    if read_hf_config(source.path).get("model_type") in ARCHITECTURES.values():
        try:
            return GPTAttentions(source.load(device=device), source)
        except ModelLoadError as e:  # a variant model.py does not implement: transformers still can
            print(f"note: {e}; analyzing it with transformers instead")
    return HFAttentions.load(source, device)


def offline_model_problem(name):
    """'; and --model: why' when the Hub cannot be reached and name is not found here or in the Hub's cache, else ''."""
    try:
        if name and hub_unreachable():
            open_source(name)
    except (CheckpointError, ModelLoadError) as e:
        return f"; and --model: {e}"
    return ""


# ----------------------------------------------------------------------------------------------------------
# data: N random non-overlapping windows of T tokens


def read_tokens(path, attention_model):
    """Token ids of a .bin (refused when its meta.json names another tokenizer) or a .txt (tokenized here)."""
    if path.endswith(".bin"):
        data_dir = os.path.dirname(path) or "."
        if os.path.isfile(os.path.join(data_dir, "meta.json")):
            check_data_tokenizer(load_meta(data_dir), data_dir, attention_model.source.known_tokenizer_meta(),
                                 attention_model.name)
        return open_tokens(data_dir, os.path.basename(path)[:-len(".bin")])
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            ids = attention_model.tokenizer().encode(text)
        except ValueError as e:  # no tokenizer for the model (e says why), or characters outside a char vocabulary
            raise AnalysisError(f"cannot tokenize {path}: {e}") from None
        return np.asarray(ids, dtype=np.int64)
    raise AnalysisError(f"--data={path}: expected a .bin of token ids or a .txt file")


def draw_windows(tokens, num_samples, seq_len, seed):
    """(N, T) int64: num_samples non-overlapping windows tokens[i*T:(i+1)*T], i drawn without replacement."""
    available = len(tokens) // seq_len
    if num_samples > available:
        raise AnalysisError(f"the data has {len(tokens)} tokens, i.e. {available} non-overlapping windows of "
                            f"{seq_len}, fewer than --num_samples={num_samples}: lower --num_samples or "
                            f"--seq_len, or use more data")
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(available, generator=g)[:num_samples].tolist()
    return np.stack([np.asarray(tokens[i * seq_len:(i + 1) * seq_len], dtype=np.int64) for i in picks])


# ----------------------------------------------------------------------------------------------------------
# the analysis


def check_seq_len(attention_model, seq_len):
    if attention_model.context is not None and seq_len > attention_model.context:
        raise AnalysisError(f"--seq_len={seq_len} is longer than the model's context of {attention_model.context} "
                            f"tokens: use --seq_len={attention_model.context} or less")


def choose_seq_len(attention_model, seq_len):
    """--seq_len as given (checked), or for 0 the paper's T = 100, or the model's context when that is shorter."""
    if seq_len:
        check_seq_len(attention_model, seq_len)
        return seq_len
    context = attention_model.context
    if context is not None and context < PAPER_SEQ_LEN:
        print(f"note: seq_len={context}, the model's context: the paper's {PAPER_SEQ_LEN} does not fit "
              f"(ranks of shorter windows are not comparable with the paper's)", file=sys.stderr)
        return context
    return PAPER_SEQ_LEN


def analyze(attention_model, windows, tau=0.9, eta=0.9, near_rank_one=1.5, batch_size=10, device="cpu",
            progress=True, lazy_tolerance=0.0):
    """Per-layer records for windows (N, T) token ids, streaming batch by batch and layer by layer."""
    N, T = windows.shape
    check_seq_len(attention_model, T)
    top = int(windows.max())
    if top >= attention_model.vocab_size:
        raise AnalysisError(f"the data has token id {top} but the model's vocabulary has {attention_model.vocab_size} "
                            f"ids: the data was made with another tokenizer; prepare it with the model's")
    sums, eps_max = {}, {}  # layer -> float64 sums over the samples (4, n_head), the largest eps (n_head,)
    n_layer = attention_model.n_layer
    bar = tqdm(total=N * n_layer if n_layer else None, unit="sample-layer", disable=not progress,
               desc=f"analyzing {N} samples x {n_layer} layers")
    for start in range(0, N, batch_size):
        idx = torch.from_numpy(windows[start:start + batch_size]).to(device)
        for layer, att in enumerate(attention_model.layers(idx)):
            k_star, m_star, sink = layer_metrics(att, tau, eta)  # (B, n_head) each
            entropy, eps = entropy_and_eps(att)
            batch = torch.stack([k_star.double(), m_star.double(), sink, entropy]).sum(1).cpu()
            sums[layer] = sums.get(layer, 0) + batch
            eps_max[layer] = torch.maximum(eps_max.get(layer, eps.amax(0).cpu()), eps.amax(0).cpu())
            bar.update(len(idx))
            bar.set_postfix(samples=f"{start + len(idx)}/{N}", layer=layer)
            del att  # free this layer before the next one is computed
    bar.close()
    return summarize(sums, eps_max, N, near_rank_one, lazy_tolerance)


COLLAPSE_KEYS = ("max_rank", "distance_from_lazy", "mean_rank", "avg_mass", "sink_share", "entropy", "eps")


def collapse_record(model, windows, tau=0.9, eta=0.9, batch_size=10, device="cpu"):
    """What train.py logs every collapse_every iterations: each layer's COLLAPSE_KEYS of analyze() of a plain GPT
    on windows (N, T), with collapse_gradients' grad_q, grad_k, bound_q, bound_k."""
    was_training, threads = model.training, torch.get_num_threads()
    # one thread: squared_singular_values' per-core eig threads would leave OpenMP teams spinning beside training
    torch.set_num_threads(1)
    try:  # GPTAttentions puts the model in eval mode, its layers() runs without gradients
        layers = analyze(GPTAttentions(model, None, "the model in training"), windows, tau, eta,
                         batch_size=batch_size, device=device, progress=False)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    records = [{"layer": rec["layer"], **{k: rec[k] for k in COLLAPSE_KEYS}} for rec in layers]
    for record, grads in zip(records, collapse_gradients(model, windows, device)):
        record |= grads  # its eps is the one the bounds used, of the same attentions analyze measured
    return records


def collapse_gradients(model, windows, device="cpu"):
    """The paper's Thm H.1 (App. H) per layer of a plain GPT on windows (N, T): grad_q, grad_k = ||dL/dW_Q||_F,
    ||dL/dW_K||_F and the bounds 2 eps scale ||X||_2 ||K||_F ||dL/dA||_F (Q for bound_k) summed over heads and
    windows (docs/analysis.md). The model's .grad and train/eval mode are left as they were."""
    was_training = model.training
    model.eval()
    w = torch.as_tensor(windows, dtype=torch.long, device=device)
    blocks = list(model.transformer.h)
    captured = {}  # c_attn -> (X, q k v): the attention's input and c_attn's output

    def capture(module, inputs, output):
        captured[module] = (inputs[0].detach(), output.detach())

    hooks = [b.attn.c_attn.register_forward_hook(capture) for b in blocks]
    try:
        with torch.enable_grad():
            targets = torch.cat([w[:, 1:], torch.full_like(w[:, :1], -1)], 1)  # -1: cross_entropy's ignore_index
            _, loss, atts = model(w, targets, return_attn=True)
            weights = [b.attn.c_attn.weight for b in blocks]
            grads = torch.autograd.grad(loss, weights + atts)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    records = []
    for layer, block in enumerate(blocks):
        attn = block.attn
        dW_q, dW_k, _ = grads[layer].double().split(attn.qkv_sizes)
        dA = grads[len(blocks) + layer].double()  # (N, n_head, T, T)
        X, qkv = (t.double() for t in captured[attn.c_attn])
        q, k, _ = (t.reshape(*X.shape[:2], -1, attn.head_size) for t in qkv.split(attn.qkv_sizes, dim=-1))
        k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=2)  # the key head each query head uses
        eps = entropy_and_eps(atts[layer])[1]  # (N, n_head), the records' eps
        common = 2 * eps * attn.scale * torch.linalg.matrix_norm(X, ord=2)[:, None] * dA.flatten(2).norm(dim=-1)
        records.append({
            "layer": layer,
            "grad_q": dW_q.norm().item(),
            "grad_k": dW_k.norm().item(),
            "bound_q": (common * k.norm(dim=(1, 3))).sum().item(),
            "bound_k": (common * q.norm(dim=(1, 3))).sum().item(),
            "eps": eps.max().item(),
        })
    return records


def build_report(layers, settings, attention_model):
    suggested, paper_default, reason = recommend_depth(layers)
    return dict(
        model=settings["model"],
        data=settings["data"],
        model_kind=attention_model.kind,
        model_fingerprint=model_fingerprint(attention_model.model) if attention_model.kind == "gpt" else None,
        n_layer=len(layers),
        n_head=max(len(rec["heads"]) for rec in layers),
        suggested_n_layer=suggested,
        suggested_n_layer_reason=reason,
        paper_default_n_layer=paper_default,
        lazy_layers=[rec["layer"] for rec in layers if rec["lazy"]],
        near_rank_one_heads=[dict(layer=rec["layer"], head=h["head"], rank=h["rank"])
                             for rec in layers for h in rec["heads"] if h["rank"] < settings["near_rank_one"]],
        depth_by_tolerance=depth_by_tolerance(layers, settings["lazy_tolerance"]),
        settings=settings,
        layers=layers,
    )


def print_table(report):
    print(f"{'layer':>5} {'MaxRank':>8} {'meanRank':>9} {'AvgMass':>8} {'sink':>6} {'toLazy':>7}  lazy  "
          f"near-rank-one heads")
    for rec in report["layers"]:
        near = ",".join(map(str, rec["near_rank_one_heads"])) or "-"
        print(f"{rec['layer']:>5} {rec['max_rank']:>8.2f} {rec['mean_rank']:>9.2f} {rec['avg_mass']:>8.2f} "
              f"{rec['sink_share']:>6.3f} {rec['distance_from_lazy']:>7.2f}  {'yes' if rec['lazy'] else 'no':>4}  "
              f"{near}")
    lazy, tolerance = report["lazy_layers"], report["settings"]["lazy_tolerance"]
    rule = f"MaxRank <= 1 + {tolerance:g}" if tolerance else "MaxRank == 1"
    print(f"lazy layers ({rule}): {lazy if lazy else 'none'}")
    print(f"suggested depth for inherit.py: n_layer={report['suggested_n_layer']} "
          f"({report['suggested_n_layer_reason']}); the paper's default L/2 = {report['paper_default_n_layer']}")
    print("depth by --lazy_tolerance (0: the paper's rule):")
    for row in report["depth_by_tolerance"]:
        print(f"  {row['lazy_tolerance']:>5g}  n_layer={row['suggested_n_layer']:<3} ({row['reason']})"
              f"{'  <- this run' if row['chosen'] else ''}")


def write_outputs(report, out_dir):
    """The CSV tables, the figures and, last, analysis.json (what inherit.py reads) in out_dir, atomically."""
    os.makedirs(out_dir, exist_ok=True)
    tables = {
        "heads.csv": [["layer", "head", "rank", "mass", "sink_share"]]
        + [[rec["layer"], h["head"], h["rank"], h["mass"], h["sink_share"]]
           for rec in report["layers"] for h in rec["heads"]],
        "layers.csv": [["layer", "max_rank", "mean_rank", "avg_mass", "sink_share", "distance_from_lazy", "lazy"]]
        + [[rec["layer"], rec["max_rank"], rec["mean_rank"], rec["avg_mass"], rec["sink_share"],
            rec["distance_from_lazy"], rec["lazy"]] for rec in report["layers"]],
        "settings.csv": [["key", "value"]] + [[k, v] for k, v in report["settings"].items()],
    }
    paths = []
    for name, rows in tables.items():
        paths.append(os.path.join(out_dir, name))
        with atomic_write(paths[-1], "w") as f:
            csv.writer(f).writerows(rows)
    paths += plot(report, out_dir)
    paths.append(os.path.join(out_dir, "analysis.json"))
    with atomic_write(paths[-1], "w") as f:
        json.dump(report, f, indent=1)
    return paths


def save_figure(fig, out_dir, name):
    fig.tight_layout()
    with atomic_write(os.path.join(out_dir, name)) as f:
        fig.savefig(f, format="png", dpi=120)
    return os.path.join(out_dir, name)


def plot(report, out_dir):
    from matplotlib.figure import Figure  # not pyplot's: files only, no display, no figure left open
    from matplotlib.ticker import MaxNLocator

    layers = report["layers"]
    x = [rec["layer"] for rec in layers]

    model_path = os.path.normpath(report["model"])
    name = os.path.basename(os.path.dirname(model_path) if model_path.endswith(".pt") else model_path)
    paths = []

    ax = Figure(figsize=(7, 4)).subplots()
    for lazy, color, label in ((False, "tab:blue", "not lazy"), (True, "tab:red", "lazy")):
        bars = [rec for rec in layers if rec["lazy"] == lazy]
        if bars:  # no empty legend entry
            ax.bar([rec["layer"] for rec in bars], [rec["max_rank"] for rec in bars], color=color, label=label)
    tolerance = report["settings"]["lazy_tolerance"]
    ax.axhline(1 + tolerance, color="k", lw=0.8, ls="--",
               label=f"lazy at or below: MaxRank {f'<= 1 + {tolerance:g}' if tolerance else '= 1 (the paper)'}")
    ax.set(xlabel="layer", ylabel=f"MaxRank (k*, tau={report['settings']['tau']})",
           title=f"{name}\nmax approximate rank of attention per layer", yscale="log",  # MaxRank 1 and 100 both show
           ylim=(0.5, 4 * max([1 + tolerance] + [rec["max_rank"] for rec in layers])))  # the legend above the bars
    ax.legend(fontsize=8, loc="upper right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    paths.append(save_figure(ax.figure, out_dir, "max_rank.png"))

    grid = np.full((len(layers), report["n_head"]), np.nan)
    for i, rec in enumerate(layers):
        for h in rec["heads"]:
            grid[i, h["head"]] = h["rank"]
    ax = Figure(figsize=(max(5, 0.3 * report["n_head"] + 3), max(4, 0.25 * len(layers) + 2))).subplots()
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=1, vmax=max(2, np.nanmax(grid)))
    ax.figure.colorbar(im, ax=ax, label="Rank (mean k*)")
    ax.set(xlabel="head", ylabel="layer",
           title=f"{name}\napproximate rank per head (T={report['settings']['seq_len']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    paths.append(save_figure(ax.figure, out_dir, "rank_heatmap.png"))

    ax = Figure(figsize=(7, 4)).subplots()
    ax.plot(x, [rec["avg_mass"] for rec in layers], "o-", color="tab:blue")
    ax.set(xlabel="layer", ylabel=f"AvgMass (m*, eta={report['settings']['eta']})",
           title=f"{name}\ncolumn mass and sink share")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.plot(x, [rec["sink_share"] for rec in layers], "s--", color="tab:orange")
    ax2.set(ylabel="sink share p_0", ylim=(0, 1.05))
    ax.legend(ax.get_lines() + ax2.get_lines(), ["AvgMass", "sink share"], loc="best")
    paths.append(save_figure(ax.figure, out_dir, "mass_sink.png"))
    return paths


def main(argv=None):
    cfg = configure_or_exit(DEFAULTS, argv)
    try:
        if not os.path.isfile(cfg["data"]):  # before loading what may be a large model
            raise AnalysisError(f"--data={cfg['data']!r}: no such file; pass a .bin of token ids or a .txt file"
                                f"{offline_model_problem(cfg['model'])}")
        if os.path.isfile(cfg["out_dir"]):
            raise AnalysisError(f"--out_dir={cfg['out_dir']} is a file: out_dir is the folder to write")
        device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        check_device(device)
        attention_model = load_attention_model(cfg["model"], device)
        seq_len = choose_seq_len(attention_model, cfg["seq_len"])  # before reading (maybe tokenizing) the data
        settings = dict(cfg, device=device, seq_len=seq_len, boundary_rtol=BOUNDARY_RTOL,
                        windows="non-overlapping, drawn without replacement with seed")
        tokens = read_tokens(cfg["data"], attention_model)
        windows = draw_windows(tokens, cfg["num_samples"], seq_len, cfg["seed"])
        t0 = time.time()
        layers = analyze(attention_model, windows, cfg["tau"], cfg["eta"], cfg["near_rank_one"], cfg["batch_size"],
                         device, lazy_tolerance=cfg["lazy_tolerance"])
        if not layers:
            raise AnalysisError(f"{cfg['model']} returned no attention layers")
        settings["seconds"] = round(time.time() - t0, 2)
    except (AnalysisError, ConfigError, CheckpointError, ModelLoadError, DataError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    report = build_report(layers, settings, attention_model)
    print_table(report)
    paths = write_outputs(report, cfg["out_dir"])
    print(f"wrote {', '.join(paths)}")
    return report


if __name__ == "__main__":
    main()
