"""
Benchmark analyze_rank.py on CPU: a GPT-2-medium-shaped model (24 layers x 16 heads, n_embd 1024, random
weights, a small vocabulary since the LM head is never used) at N = 100 sequences of T = 100 tokens.

    python bench_rank.py            # the full size (a few minutes: the numpy loop is the slow part)
    python bench_rank.py --quick    # small settings, seconds

It times, in one run:
  1. the whole analysis as a user runs it (analyze_rank.analyze: forward passes + batched metrics);
  2. on the same attention matrices, layer by layer: our batched metrics vs a straightforward loop over
     samples and heads with np.linalg.svd per matrix (float64, numpy's default full SVD), checking that
     both give the same k* and m*. np.linalg.svd(compute_uv=False), a stronger baseline, is timed on the
     first batch and reported per matrix as well.
"""

import argparse
import time

import numpy as np
import torch

from analyze_rank import GPTAttentions, analyze, layer_metrics
from model import GPT, GPTConfig


def numpy_loop_metrics(att, tau, eta, compute_uv=True):
    """k*, m* of every (sample, head) matrix of att (B, H, T, T), one np.linalg.svd call each."""
    att = att.numpy().astype(np.float64)
    B, H, T, _ = att.shape
    k_star = np.zeros((B, H), dtype=np.int64)
    m_star = np.zeros((B, H), dtype=np.int64)
    for b in range(B):
        for h in range(H):
            A = att[b, h]
            s = np.linalg.svd(A)[1] if compute_uv else np.linalg.svd(A, compute_uv=False)
            energy = np.cumsum(s ** 2) / np.sum(s ** 2)
            k_star[b, h] = np.argmax(energy >= tau) + 1
            p = np.sort((A ** 2).sum(0))[::-1] / (A ** 2).sum()
            m_star[b, h] = np.argmax(np.cumsum(p) >= eta) + 1
    return k_star, m_star


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 layers x 4 heads, n_embd 128, N=20, T=50")
    parser.add_argument("--batch_size", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        n_layer, n_head, n_embd, N, T = 4, 4, 128, 20, 50
    else:
        n_layer, n_head, n_embd, N, T = 24, 16, 1024, 100, 100
    tau = eta = 0.9
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=512, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    attention_model = GPTAttentions(model, None, "random GPT")
    windows = torch.randint(0, 512, (N, T)).numpy()
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


if __name__ == "__main__":
    main()
