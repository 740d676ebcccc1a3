"""
Training throughput of model.py against Hugging Face transformers' GPT2LMHeadModel (--arch=gpt2) or
LlamaForCausalLM (--arch=llama: RMSNorm, SwiGLU, rotary embeddings, grouped-query attention, untied head) of the
identical shape.

Both sides run the same training step on the same batches: forward, the same cross-entropy on the same
targets, backward, and the same AdamW set-up (model.configure_optimizers), eager and under torch.compile.
Timings alternate between the models in rounds and keep each model's best round, so a machine that is
busy now and then slows both sides alike.

    python bench.py                  # the CPU setting: 8 layers, 128 wide, T=128, B=32, vocab 96
    python bench.py --quick          # a tiny shape and few steps: checks that it runs
    python bench.py --arch=llama     # the same shape as Llama: 2 key/value heads, SwiGLU width 352
    python bench.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --batch_size=16 \\
        --vocab_size=50304           # GPT-2 124M (bench_gpu.sh runs this and the 350M shape)
"""

import argparse
import importlib.util
import math
import time
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from inheritune import perf
from inheritune.configurator import ConfigError, check_device
from model import GPT, GPTConfig


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--n_layer", type=int, default=8)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--vocab_size", type=int, default=96)
    p.add_argument("--n_kv_head", type=int, default=0, help="llama: key/value heads; 0: n_head // 2")
    p.add_argument("--intermediate_size", type=int, default=0,
                   help="llama: SwiGLU width; 0: 8/3 n_embd rounded up to a multiple of 32 (Llama's rule)")
    p.add_argument("--bias", type=lambda s: s == "True", default=True,
                   help="gpt2: True/False; transformers' GPT-2 always has biases, so only True is like for like")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype; auto: bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--modes", default="eager,compile",
                   help="comma-separated: eager, compile, or a torch.compile mode (max-autotune, ...)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds; each model's best round counts")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU; 0 keeps torch's default")
    p.add_argument("--hf", type=lambda s: s == "True", default=True, help="False: time only model.py")
    p.add_argument("--quick", action="store_true", help="tiny shape, few steps: a smoke test")
    args = p.parse_args()
    if args.quick:
        args.n_layer, args.n_head, args.n_embd, args.block_size, args.batch_size = 2, 2, 64, 64, 8
        args.steps, args.rounds, args.warmup = 3, 2, 2
    try:
        check_device(args.device)
    except ConfigError as e:
        p.exit(1, f"error: {e}\n")
    return args


def ours_forward(model, x, y):
    return model(x, y)[1]


def hf_forward(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))  # the loss model.py computes


def make_hf_model(config):
    """transformers' model of config's shape: hf.py's export config (GPT2LMHeadModel or LlamaForCausalLM)."""
    from transformers import AutoModelForCausalLM

    from inheritune.hf import hf_config_from_gpt

    # scaled_dot_product_attention, as model.py (flash kernels on GPU)
    return AutoModelForCausalLM.from_config(hf_config_from_gpt(config), attn_implementation="sdpa")


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


def main():
    args = parse_args()
    device_type = "cuda" if args.device.startswith("cuda") else "mps" if args.device.startswith("mps") else "cpu"
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if device_type == "cuda" else "float32"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast_ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(args)
    gpu_name, peak_flops = perf.gpu_peak_flops(args.device)
    print(f"shape: {config}, batch {args.batch_size}, {dtype} on {gpu_name or args.device}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    if args.hf and importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: timing model.py alone (pip install transformers to compare)")
        args.hf = False
    if args.hf and args.arch == "gpt2" and not args.bias:
        print("note: bias=False here, but transformers' GPT-2 has biases: the comparison is not like for like")

    # identical data for every model: random tokens from one seeded generator
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(args.vocab_size, (args.batch_size, args.block_size + 1), generator=g)
              for _ in range(args.steps)]
    batches = [(t[:, :-1].contiguous().to(args.device), t[:, 1:].contiguous().to(args.device)) for t in tokens]

    runners = []
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        ours = GPT(config).to(args.device)
        flops_per_token = ours.flops_per_token(args.block_size)
        runners.append(Runner("model.py", mode, ours, ours_forward, device_type, autocast_ctx))
        if args.hf:
            hf_model = make_hf_model(config).to(args.device)
            runners.append(Runner("transformers", mode, hf_model, hf_forward, device_type, autocast_ctx))
    for runner in runners:
        t0 = time.perf_counter()
        for x, y in batches[:args.warmup]:
            runner.step(x, y)
        runner.sync()
        print(f"warmed up {runner.name} {runner.mode} in {time.perf_counter() - t0:.1f}s")
    for _ in range(args.rounds):
        for runner in runners:
            runner.time_round(batches)

    tokens_per_step = args.batch_size * args.block_size
    print(f"\n{'model':<13} {'mode':<8} {'tokens/s':>10} {'ms/step':>9} {'peak mem':>9} {'MFU':>6}")
    for r in runners:
        tokens_per_s = tokens_per_step / r.best_s
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


if __name__ == "__main__":
    main()
