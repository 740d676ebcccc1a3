"""
Peak memory per process of train.py under DDP and under FSDP (--fsdp=True) for the same model, on CPU with gloo:
each torchrun worker's peak resident set size (VmHWM in /proc/PID/status, read until the worker exits), so the
figure is the whole run's peak: start-up, training steps, evaluation and the checkpoint save.

    python bench_memory.py                        # 2 processes; a 12-layer, 768-wide model (85M parameters)
    python bench_memory.py --malloc_mmap_threshold=65536   # glibc: every allocation above 64 KiB mmapped
    python bench_memory.py --nproc=4 --n_layer=24 --fsdp_cpu_offload=True

Linux only (it reads /proc). The expected state per process, fp32: DDP holds weights, gradients, DDP's gradient
buckets and AdamW's two moments, 20 bytes a parameter; FSDP holds 16 bytes a parameter / processes, plus one
block's gathered parameters and gradients at a time. Rank 0 under FSDP also builds the whole model in CPU memory
at start-up (4 bytes a parameter), before sharding it.

glibc's malloc raises its mmap threshold (up to 32 MiB) after large blocks are freed, and then serves FSDP's
per-block gather and gradient buffers, allocated and freed at every block of every step, from its heap, which
fragments and keeps the peak RSS up; --malloc_mmap_threshold sets MALLOC_MMAP_THRESHOLD_ for the workers (a fixed
threshold: freed buffers go back to the system). GPUs have their own caching allocator and no such effect.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--fsdp_cpu_offload", default="False")
    p.add_argument("--malloc_mmap_threshold", type=int, default=0,
                   help="MALLOC_MMAP_THRESHOLD_ for the workers in bytes; 0: glibc's default (a dynamic threshold)")
    p.add_argument("--data_dir", default=os.path.join(REPO, "data", "shakespeare_char"))
    return p.parse_args()


def worker_peaks(parent):
    """{RANK: VmHWM in kB} of the torchrun workers that are children of pid parent."""
    peaks = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{entry}/status") as f:
                hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # gone, or not ours to read
        if b"RANK" in env:
            peaks[int(env[b"RANK"])] = hwm
    return peaks


def run(args, fsdp, out_dir):
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


def main():
    args = parse_args()
    if not os.path.isfile(os.path.join(args.data_dir, "meta.json")):
        sys.exit(f"error: no dataset at {args.data_dir}: run python data/shakespeare/prepare.py first")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("DDP", "FSDP"):
            results[mode], params = run(args, mode == "FSDP", os.path.join(tmp, mode))
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


if __name__ == "__main__":
    main()
