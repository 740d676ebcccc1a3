"""
Benchmarks, one measurement per --what; every flag is --key=value (python bench.py --help lists them):

    python bench.py                  # throughput, the CPU setting: 8 layers, 128 wide, T=128, B=32, vocab 96
    python bench.py --quick=True     # a tiny shape and few steps (any --what): checks that it runs
    python bench.py --arch=llama     # the same shape as Llama: 2 key/value heads, SwiGLU width 352
    python bench.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --batch_size=16 \\
        --vocab_size=50304           # GPT-2 124M (bench_gpu.sh runs this and the 350M shape)
    python bench.py --what=memory    # 2 processes; a 12-layer, 768-wide model (85M parameters)
    python bench.py --what=memory --malloc_mmap_threshold=65536   # glibc: every allocation above 64 KiB mmapped
    python bench.py --what=memory --nproc=4 --n_layer=24 --fsdp_cpu_offload=True
    python bench.py --what=rank      # the full size (a few minutes: the numpy loop is the slow part)

throughput: training steps of model.py against transformers' model of the identical shape (GPT-2 or Llama), eager
and compiled, in alternating rounds; memory: each torchrun worker's peak RSS (VmHWM), DDP vs FSDP on CPU; rank:
analyze_rank.py's batched metrics vs an np.linalg.svd loop. What each measures and why: docs/benchmarks.md.
"""

import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import psutil
import torch
from torch.nn import functional as F

from analyze_rank import GPTAttentions, analyze, layer_metrics
from inheritune import perf
from inheritune.configurator import check_device, overrides_or_exit
from inheritune.hf import hf_config_from_gpt
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = dict(
    what="throughput",  # throughput: model.py vs transformers | memory: train.py, DDP vs FSDP | rank: analyze_rank.py
    quick=False,  # a tiny shape and few steps: checks that it runs
    n_layer=8,  # [1, inf): throughput's shape; memory: 12 x 12 heads, 768 wide, T=256, B=2; rank: 24 x 16, 1024
    n_head=4,  # [1, inf)
    n_embd=128,  # [1, inf)
    block_size=128,  # [1, inf): T; rank: the tokens of each sequence
    batch_size=32,  # [1, inf): B; rank: sequences per forward pass (10)
    vocab_size=96,  # [1, inf): throughput and rank (512); memory: the dataset's
    steps=10,  # [1, inf): throughput: timed steps per round; memory: train.py's iterations (3)
    arch="gpt2",  # throughput: gpt2 | llama
    n_kv_head=0,  # [0, inf): llama: key/value heads; 0: n_head // 2
    intermediate_size=0,  # [0, inf): llama: SwiGLU width; 0: 8/3 n_embd rounded up to a multiple of 32 (Llama's rule)
    bias=True,  # gpt2: transformers' GPT-2 always has biases, so only True is like for like
    device="cuda" if torch.cuda.is_available() else "cpu",  # throughput (memory and rank run on the CPU)
    dtype="auto",  # throughput's autocast dtype: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16
    modes="eager,compile",  # throughput, comma-separated: eager, compile, or a torch.compile mode (max-autotune, ...)
    rounds=5,  # [1, inf): throughput: timing rounds; each model's best round counts
    warmup=3,  # [0, inf): throughput: untimed steps first (compilation happens here)
    threads=0,  # [0, 1024]: throughput: torch.set_num_threads on CPU; 0 keeps torch's default
    hf=True,  # throughput: False times only model.py
    nproc=2,  # [1, inf): memory: torchrun processes
    fsdp_cpu_offload=False,  # memory: train.py's --fsdp_cpu_offload under FSDP
    malloc_mmap_threshold=0,  # [0, 33554432]: memory: the workers' MALLOC_MMAP_THRESHOLD_ in bytes; 0: glibc's own
    data_dir=os.path.join(REPO, "data", "shakespeare_char"),  # memory: the dataset train.py trains on
    num_samples=100,  # [1, inf): rank: N, the sequences analyzed
)
MODE_DEFAULTS = {  # each measurement's own defaults over DEFAULTS, then what --quick=True changes
    "throughput": ({}, dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, steps=3, rounds=2, warmup=2)),
    "memory": (dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=2, steps=3),
               dict(n_layer=1, n_head=1, n_embd=64)),
    "rank": (dict(n_layer=24, n_head=16, n_embd=1024, block_size=100, batch_size=10, vocab_size=512),
             dict(n_layer=4, n_head=4, n_embd=128, block_size=50, num_samples=20)),
}
CHOICES = dict(what=tuple(MODE_DEFAULTS), arch=("gpt2", "llama"), dtype=("auto", "float32", "bfloat16", "float16"))


# ----------------------------------------------------------------------------------------------------------
# --what=throughput


def ours_forward(model, x, y):
    return model(x, y)[1]


def hf_forward(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))  # the loss model.py computes


def make_config(args):
    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                 vocab_size=args.vocab_size, dropout=0.0)
    if args.arch == "gpt2":
        return GPTConfig(**shape, bias=args.bias)
    width = args.intermediate_size or math.ceil(8 * args.n_embd / 3 / 32) * 32
    return GPTConfig(**shape, bias=False, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", intermediate_size=width,
                     pos_emb="rope", n_kv_head=args.n_kv_head or max(1, args.n_head // 2), tie_embeddings=False)


class Runner:
    """One model in one mode: its training step, and its best time per step."""

    def __init__(self, name, mode, model, forward, device_type, autocast_ctx):
        self.name, self.mode, self.forward = name, mode, forward
        self.model = model if mode == "eager" else torch.compile(model, mode=None if mode == "compile" else mode)
        # the same AdamW set-up for both sides (configure_optimizers only needs .parameters())
        self.optimizer = GPT.configure_optimizers(model, 0.1, 6e-4, (0.9, 0.95), device_type)
        self.device_type, self.autocast_ctx = device_type, autocast_ctx
        self.best_s, self.peak_mem = float("inf"), None

    def step(self, x, y):
        with self.autocast_ctx:
            loss = self.forward(self.model, x, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self):
        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def state_bytes(self):
        """Memory this model holds between steps: weights and optimizer state (gradients are freed)."""
        tensors = list(self.optimizer.param_groups[0]["params"]) + list(self.optimizer.param_groups[1]["params"])
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def time_round(self, batches):
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            others = torch.cuda.memory_allocated() - self.state_bytes()  # the other models, the batches
        self.sync()
        t0 = time.perf_counter()
        for x, y in batches:
            self.step(x, y)
        self.sync()
        self.best_s = min(self.best_s, (time.perf_counter() - t0) / len(batches))
        if self.device_type == "cuda":
            self.peak_mem = torch.cuda.max_memory_allocated() - others


def throughput(args):
    device_type = torch.device(args.device).type
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if device_type == "cuda" else "float32"
    autocast_ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(args)
    gpu_name, peak_flops = perf.gpu_peak_flops(args.device)
    print(f"shape: {config}, batch {args.batch_size}, {dtype} on {gpu_name or args.device}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    if args.hf and args.arch == "gpt2" and not args.bias:
        print("note: bias=False here, but transformers' GPT-2 has biases: the comparison is not like for like")

    # identical data for every model: random tokens from one seeded generator
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(args.vocab_size, (args.batch_size, args.block_size + 1), generator=g)
              for _ in range(args.steps)]
    batches = [(t[:, :-1].contiguous().to(args.device), t[:, 1:].contiguous().to(args.device)) for t in tokens]

    from transformers import AutoModelForCausalLM  # here: a few seconds of import that the other measurements skip
    runners = []
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        ours = GPT(config).to(args.device)
        flops_per_token = ours.flops_per_token(args.block_size)
        runners.append(Runner("model.py", mode, ours, ours_forward, device_type, autocast_ctx))
        if args.hf:
            # hf.py's export config of the same shape; scaled_dot_product_attention, as model.py
            hf_model = AutoModelForCausalLM.from_config(hf_config_from_gpt(config), attn_implementation="sdpa")
            runners.append(Runner("transformers", mode, hf_model.to(args.device), hf_forward, device_type,
                                  autocast_ctx))
    for runner in runners:
        t0 = time.perf_counter()
        for x, y in batches[:args.warmup]:
            runner.step(x, y)
        runner.sync()
        print(f"warmed up {runner.name} {runner.mode} in {time.perf_counter() - t0:.1f}s")
    for _ in range(args.rounds):
        for runner in runners:
            runner.time_round(batches)

    print(f"\n{'model':<13} {'mode':<8} {'tokens/s':>10} {'ms/step':>9} {'peak mem':>9} {'MFU':>6}")
    for r in runners:
        tokens_per_s = args.batch_size * args.block_size / r.best_s
        mem = f"{r.peak_mem / 2**30:.2f}GiB" if r.peak_mem is not None else "n/a"
        util = perf.mfu(flops_per_token, tokens_per_s, peak_flops)
        print(f"{r.name:<13} {r.mode:<8} {tokens_per_s:>10,.0f} {r.best_s * 1000:>9.1f} {mem:>9} "
              f"{f'{util:.1%}' if util is not None else 'n/a':>6}")
    by_key = {(r.name, r.mode): r.best_s for r in runners}
    print()
    for mode in args.modes.split(","):
        if ("transformers", mode) in by_key:
            print(f"ours / transformers, {mode}: {by_key[('transformers', mode)] / by_key[('model.py', mode)]:.2f}x")
    if ("transformers", "eager") in by_key:
        best_mode = min(args.modes.split(","), key=lambda m: by_key[("model.py", m)])
        print(f"ours at best ({best_mode}) / transformers eager: "
              f"{by_key[('transformers', 'eager')] / by_key[('model.py', best_mode)]:.2f}x")


# ----------------------------------------------------------------------------------------------------------
# --what=memory


def worker_peaks(parent):
    """{RANK: VmHWM in kB} of the torchrun workers that are children of pid parent."""
    peaks = {}
    for worker in psutil.Process(parent).children():
        try:
            rank = int(worker.environ()["RANK"])
            with open(f"/proc/{worker.pid}/status") as f:  # the peak RSS, which psutil does not read
                peaks[rank] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (psutil.Error, OSError, KeyError, StopIteration):
            continue  # gone, or not a worker
    return peaks


def train_peaks(args, fsdp, out_dir):
    """Peak RSS in MiB of each rank of one train.py run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "train.py",
           f"--data_dir={args.data_dir}", f"--out_dir={out_dir}", "--device=cpu", "--compile=False",
           f"--n_layer={args.n_layer}", f"--n_head={args.n_head}", f"--n_embd={args.n_embd}",
           f"--block_size={args.block_size}", f"--batch_size={args.batch_size}", f"--max_iters={args.steps}",
           f"--eval_interval={args.steps}", "--eval_iters=1", "--warmup_iters=1", f"--lr_decay_iters={args.steps + 1}",
           f"--gradient_accumulation_steps={args.nproc}", f"--fsdp={fsdp}",
           f"--fsdp_cpu_offload={args.fsdp_cpu_offload}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peaks = {}
    while proc.poll() is None:
        for rank, hwm in worker_peaks(proc.pid).items():
            peaks[rank] = max(peaks.get(rank, 0), hwm)
        time.sleep(0.05)
    output = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"error: train.py failed:\n{output[-3000:]}")
    params = next(line for line in output.splitlines() if line.startswith("model: ")).rsplit(", ", 1)[1]
    return {rank: kb / 1024 for rank, kb in sorted(peaks.items())}, params


def memory(args):
    if not os.path.isfile(os.path.join(args.data_dir, "meta.json")):
        sys.exit(f"error: no dataset at {args.data_dir}: run python data/shakespeare/prepare.py first")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("DDP", "FSDP"):
            results[mode], params = train_peaks(args, mode == "FSDP", os.path.join(tmp, mode))
    malloc = (f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if args.malloc_mmap_threshold
              else "glibc's default malloc")
    print(f"train.py, {args.nproc} processes on CPU (gloo), {params}, {args.steps} steps, {malloc}; peak RSS per "
          f"process:")
    print(f"{'mode':<6} {'rank':>4} {'peak RSS MiB':>13}")
    for mode, peaks in results.items():
        for rank, mib in peaks.items():
            print(f"{mode:<6} {rank:>4} {mib:>13,.0f}")
    for rank in results["DDP"]:
        print(f"rank {rank}: FSDP / DDP = {results['FSDP'][rank] / results['DDP'][rank]:.2f}")


# ----------------------------------------------------------------------------------------------------------
# --what=rank


def numpy_loop_metrics(att, tau, eta, compute_uv=True):
    """k*, m* of every (sample, head) matrix of att (B, H, T, T), one np.linalg.svd call each."""
    att = att.numpy().astype(np.float64)
    B, H, T, _ = att.shape
    k_star, m_star = np.zeros((2, B, H), dtype=np.int64)
    for b in range(B):
        for h in range(H):
            A = att[b, h]
            s = np.linalg.svd(A)[1] if compute_uv else np.linalg.svd(A, compute_uv=False)
            energy = np.cumsum(s ** 2) / np.sum(s ** 2)
            k_star[b, h] = np.argmax(energy >= tau) + 1
            p = np.sort((A ** 2).sum(0))[::-1] / (A ** 2).sum()
            m_star[b, h] = np.argmax(np.cumsum(p) >= eta) + 1
    return k_star, m_star


def rank(args):
    n_layer, n_head, n_embd, N, T = args.n_layer, args.n_head, args.n_embd, args.num_samples, args.block_size
    tau = eta = 0.9
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=args.vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    attention_model = GPTAttentions(model, None, "random GPT")
    windows = torch.randint(0, args.vocab_size, (N, T)).numpy()
    n_matrices = n_layer * n_head * N
    print(f"model: {n_layer} layers x {n_head} heads, n_embd {n_embd}, random weights; N={N}, T={T}; "
          f"{n_matrices} attention matrices; torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    analyze(attention_model, windows, tau, eta, batch_size=args.batch_size)
    t_analysis = time.perf_counter() - t0
    print(f"whole analysis (forward + metrics): {t_analysis:.1f} s")

    t_forward = t_ours = t_numpy = 0.0
    mismatches = 0
    per_matrix_values_only = None
    for start in range(0, N, args.batch_size):
        idx = torch.from_numpy(windows[start:start + args.batch_size])
        layers = attention_model.layers(idx)
        while True:
            t0 = time.perf_counter()
            att = next(layers, None)
            t_forward += time.perf_counter() - t0
            if att is None:
                break
            t0 = time.perf_counter()
            k_star, m_star, _ = layer_metrics(att, tau, eta)
            t_ours += time.perf_counter() - t0
            t0 = time.perf_counter()
            k_ref, m_ref = numpy_loop_metrics(att, tau, eta)
            t_numpy += time.perf_counter() - t0
            mismatches += int((k_star.numpy() != k_ref).sum() + (m_star.numpy() != m_ref).sum())
            if per_matrix_values_only is None:
                t0 = time.perf_counter()
                numpy_loop_metrics(att, tau, eta, compute_uv=False)
                per_matrix_values_only = (time.perf_counter() - t0) / att[..., 0, 0].numel()
    print(f"forward passes alone:                {t_forward:.1f} s")
    print(f"batched metrics (ours):              {t_ours:.2f} s  ({t_ours / n_matrices * 1e3:.3f} ms per matrix)")
    print(f"numpy loop, np.linalg.svd per matrix: {t_numpy:.1f} s  ({t_numpy / n_matrices * 1e3:.3f} ms per matrix)")
    print(f"  np.linalg.svd(compute_uv=False) loop, first layer of the first batch: "
          f"{per_matrix_values_only * 1e3:.3f} ms per matrix")
    print(f"speed-up on the metrics (numpy loop / ours):   {t_numpy / t_ours:.1f}x")
    print(f"speed-up end to end ((forward + numpy loop) / whole analysis): {(t_forward + t_numpy) / t_analysis:.1f}x")
    print(f"k*/m* disagreements between the two: {mismatches} of {2 * n_matrices}")


def main(argv=None):
    given = overrides_or_exit(DEFAULTS, argv)
    chosen = DEFAULTS | given
    for key, choices in CHOICES.items():
        if chosen[key] not in choices:
            sys.exit(f"error: {key}={chosen[key]!r}: use one of {', '.join(choices)}")
    own, quick = MODE_DEFAULTS[chosen["what"]]  # the flags given win over both
    args = SimpleNamespace(**(DEFAULTS | own | (quick if chosen["quick"] else {}) | given))
    try:
        make_config(args)  # a shape that GPTConfig refuses (n_embd not divisible by n_head, ...): before any work
        check_device(args.device)
    except ValueError as e:  # GPTConfig's, or check_device's ConfigError
        sys.exit(f"error: {e}")
    {"throughput": throughput, "memory": memory, "rank": rank}[args.what](args)


if __name__ == "__main__":
    main()
