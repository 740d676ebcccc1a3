"""
Model FLOPs utilization (MFU): achieved training FLOP/s over the peak of the GPU actually present.

The peak is the dense (no sparsity) bf16 tensor-core figure from each card's datasheet; MFU is not
reported where it is unknown (CPU, MPS, a card missing from the table).
"""

import torch

# (substring of torch.cuda.get_device_name(), bf16 dense peak FLOP/s); the first match wins, so more
# specific names come before the names they contain ("H100 PCIe" before "H100", "L40S" before "L4").
BF16_DENSE_PEAK_FLOPS = [
    ("B200", 2250e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM; the HBM3 80GB card reports "NVIDIA H100 80GB HBM3"
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),  # AWS's A10 variant: less tensor throughput than the A10
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A6000", 155e12),
    ("A40", 150e12),
    ("RTX 4090", 165e12),  # with fp32 accumulation, which training uses
    ("RTX 3090", 71e12),
]


def gpu_peak_flops(device):
    """(GPU name, bf16 dense peak FLOP/s or None) for a torch device; (None, None) off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in BF16_DENSE_PEAK_FLOPS if key in name), None)


def describe_peak(gpu_name, peak_flops, device_type):
    """The line train.py prints about what MFU is measured against."""
    if peak_flops:
        return f"MFU against {gpu_name}'s bf16 dense peak of {peak_flops / 1e12:.0f} TFLOP/s"
    return f"MFU not reported: no known bf16 peak for {gpu_name or device_type}"


def mfu(flops_per_token, tokens_per_s, peak_flops, n_gpus=1):
    """Fraction of the GPUs' peak that tokens_per_s (all GPUs together) reaches; None if the peak is unknown."""
    return None if peak_flops is None else flops_per_token * tokens_per_s / (peak_flops * n_gpus)
