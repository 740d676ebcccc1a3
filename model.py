"""
GPT-2 in one file: the model and nothing else.

Pre-LN transformer blocks, GELU with the tanh approximation (GPT-2's "gelu_new"), tied token
embedding / LM head and GPT-2's scaled init. Attention has two paths that compute the same thing:
  - F.scaled_dot_product_attention (flash kernels on GPU), used for training and sampling;
  - an explicit softmax that can hand back the post-softmax attention probabilities of every
    layer, shape (B, n_head, T, T), used by analyze_rank.py.
Loading Hugging Face weights lives in hf.py; GPT.from_pretrained is a thin entry point to it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2; False is a bit faster
    scale_attn_by_inverse_layer_idx: bool = False  # divide attention logits by layer_idx + 1


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1's nn.LayerNorm(bias=))."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def gelu_tanh(x):
    """GPT-2's gelu_new: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)."""
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        # the same function as x * sigmoid(2u): the compiler's CPU exp is faster than its tanh (BENCHMARKS.md)
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")  # PyTorch's fused kernel, the fastest in eager mode


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.scale = 1.0 / math.sqrt(config.n_embd // config.n_head)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1

    def flash_attention(self, q, k, v):
        dropout_p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale)

    def forward(self, x, return_attn=False):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = None
        if return_attn:
            # explicit path: softmax(q k^T * scale + causal mask), kept for analysis
            scores = (q @ k.transpose(-2, -1)) * self.scale
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
            att = F.softmax(scores.float(), dim=-1).to(v.dtype)
            y = self.attn_dropout(att) @ v
        elif x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # PyTorch's CPU flash attention is several times slower in bf16 than in fp32 (bench.py)
            with torch.autocast("cpu", enabled=False):
                y = self.flash_attention(q.float(), k.float(), v.float())
        else:
            y = self.flash_attention(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, return_attn=False):
        a, att = self.attn(self.ln_1(x), return_attn)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embedding / LM head
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections get std 0.02 / sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; the position embedding is excluded by default (the token one is tied to the head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def embed(self, idx):
        """Token + position embeddings of idx (B, T), the input of the first block."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}; "
                             f"crop the input to the last {self.config.block_size} tokens")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def forward(self, idx, targets=None, return_attn=False):
        """Returns (logits, loss), or (logits, loss, attentions) with return_attn=True.

        logits cover every position, (B, T, vocab_size); loss is None without targets;
        attentions is a list with one (B, n_head, T, T) tensor of softmax probabilities per layer.
        """
        x = self.embed(idx)
        attentions = []
        for block in self.transformer.h:
            x, att = block(x, return_attn)
            attentions.append(att)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        if return_attn:
            return logits, loss, attentions
        return logits, loss

    def iter_attentions(self, idx):
        """Yield each layer's (B, n_head, T, T) attention probabilities in turn (the explicit path).

        Unlike forward(return_attn=True), only one layer's attention is alive at a time, and the final
        LayerNorm and LM head are skipped: analyze_rank.py streams through deep models this way.
        """
        x = self.embed(idx)
        for block in self.transformer.h:
            x, att = block(x, return_attn=True)
            yield att

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """A GPT-2 name (gpt2, gpt2-medium, ..., openai-community/...) or a local Hugging Face GPT-2 folder."""
        from hf import load_gpt2  # hf.py imports this file; import here to keep model.py standalone

        return load_gpt2(name_or_path, override_args)

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. load GPT-2's 1024 and train at 256)."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on 2-D weights only (matmuls, embeddings), none on biases and LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # one fused kernel for all parameters (on CPU 3.6x faster than the foreach default, BENCHMARKS.md)
        fused = True if device_type in ("cuda", "cpu") else None  # None: PyTorch's default (foreach) elsewhere
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample max_new_tokens after idx (B, T); the context is cropped to block_size."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
