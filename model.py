"""
GPT-2 and the Llama family in one file: the model and nothing else.

GPT-2 (the defaults of GPTConfig): pre-LN transformer blocks, learned position embeddings, LayerNorm, GELU
with the tanh approximation (GPT-2's "gelu_new"), tied token embedding / LM head and GPT-2's scaled init.
The Llama family (Llama 2/3, SmolLM, OpenLLaMA, Qwen2, Mistral) is the same model with a few named options
(as litgpt's one config-driven model): norm="rmsnorm", mlp="swiglu" with its own intermediate_size,
pos_emb="rope" (rotary, with Llama 3's rope_scaling), n_kv_head < n_head (grouped-query attention),
tie_embeddings=False, qkv_bias (Qwen2). Parameter names are the same in every family, so blocks can be
copied between models alike: transformer.wte, [transformer.wpe,] transformer.h.{i}.ln_1,
.attn.c_attn (the q, k, v rows stacked: n_head*head_dim, then n_kv_head*head_dim twice), .attn.c_proj,
.ln_2, .mlp.c_fc (SwiGLU's up projection), [.mlp.c_gate (SwiGLU's gate),] .mlp.c_proj, transformer.ln_f, lm_head.

Attention has two paths that compute the same thing:
  - F.scaled_dot_product_attention (flash kernels on GPU), used for training and sampling;
  - an explicit softmax that can hand back the post-softmax attention probabilities of every
    layer, shape (B, n_head, T, T), used by analyze_rank.py.
It imports nothing from the project: inheritune/hf.py and source.py load Hugging Face weights into it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

NORMS, MLPS, POS_EMBS = ("layernorm", "rmsnorm"), ("gelu", "swiglu"), ("learned", "rope")
LLAMA3_ROPE_KEYS = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


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
    # The Llama family differs from GPT-2 in the options below; their defaults are GPT-2's.
    norm: str = "layernorm"  # or "rmsnorm" (no bias, no mean subtraction)
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu": c_proj(gelu_tanh(c_fc x)); "swiglu": c_proj(silu(c_gate x) * c_fc x)
    intermediate_size: int = 0  # the MLP's hidden width; 0: 4 * n_embd
    pos_emb: str = "learned"  # "learned": transformer.wpe; "rope": rotary embeddings of q and k, no wpe
    rope_theta: float = 10000.0
    # None, or Llama 3.1's rescaling: {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    # "high_freq_factor": 4.0, "original_max_position_embeddings": 8192} (plain types: checkpoints load weights_only)
    rope_scaling: dict | None = None
    n_kv_head: int = 0  # key/value heads; 0: n_head; fewer: grouped-query attention (n_head a multiple of it)
    head_dim: int = 0  # 0: n_embd // n_head (Mistral can set it apart)
    tie_embeddings: bool = True  # lm_head shares transformer.wte's weight
    qkv_bias: bool = False  # biases on q, k, v even with bias=False (Qwen2)

    def __post_init__(self):
        for name, choices in (("norm", NORMS), ("mlp", MLPS), ("pos_emb", POS_EMBS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose from {', '.join(choices)}")
        if not self.head_dim and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.kv_heads != 0:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.rope_scaling is not None and (self.rope_scaling.get("rope_type") != "llama3"
                                              or set(self.rope_scaling) != set(LLAMA3_ROPE_KEYS)):
            raise ValueError(f"rope_scaling={self.rope_scaling}: only Llama 3's is implemented, with exactly the "
                             f"keys {', '.join(LLAMA3_ROPE_KEYS)}")

    # the values the 0 = "derived" fields above stand for
    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def head_size(self):
        return self.head_dim or self.n_embd // self.n_head

    @property
    def mlp_width(self):
        return self.intermediate_size or 4 * self.n_embd


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), normalized in float32 and cast back before the weight, as Llama's."""

    def __init__(self, ndim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # Llama's own formula
        return self.weight * h.to(x.dtype)


def norm_layer(config):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def gelu_tanh(x):
    """GPT-2's gelu_new: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)."""
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        # the same function as x * sigmoid(2u): the compiler's CPU exp is faster than its tanh (BENCHMARKS.md)
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")  # PyTorch's fused kernel, the fastest in eager mode


def llama3_inv_freq(inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    """Llama 3.1's RoPE rescaling: wavelengths beyond the original context / low_freq_factor are slowed down
    by factor, those below context / high_freq_factor kept, and the ones between blended smoothly."""
    context = original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low_freq_factor, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high_freq_factor) & (wavelen <= context / low_freq_factor)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(config, T, device):
    """cos and sin (T, head_size) of the rotary embedding of positions 0..T-1, in float32, in Hugging Face's layout
    (dimension j rotates with j + head_size/2); computed per forward, so no buffer depends on block_size or dtype."""
    hd = config.head_size
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    if config.rope_scaling:
        inv_freq = llama3_inv_freq(inv_freq, **{k: v for k, v in config.rope_scaling.items() if k != "rope_type"})
    freqs = torch.outer(torch.arange(T, device=device).float(), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x (B, heads, T, head_size) rotated by position: x cos + rotate_half(x) sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        # q, k, v at once: n_head query heads, then n_kv_head key heads and n_kv_head value heads
        self.qkv_sizes = [self.n_head * self.head_size] + [self.n_kv_head * self.head_size] * 2
        self.c_attn = nn.Linear(config.n_embd, sum(self.qkv_sizes), bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_size, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.scale = 1.0 / math.sqrt(self.head_size)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1

    def flash_attention(self, q, k, v):
        dropout_p = self.dropout if self.training else 0.0
        # enable_gqa: grouped k, v without copies in the flash kernels (other CUDA backends may use the math kernel)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale,
                                              enable_gqa=self.n_kv_head != self.n_head)

    def forward(self, x, rope=None, return_attn=False):
        """rope: (cos, sin) from rope_cos_sin, or None for learned positions."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.qkv_sizes, dim=2)
        q, k, v = (t.view(B, T, -1, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        att = None
        if return_attn:
            # explicit path: softmax(q k^T * scale + causal mask), kept for analysis
            if self.n_kv_head != self.n_head:  # each group of n_head / n_kv_head query heads shares a k, v head
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
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
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_size)  # all heads side by side
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        if self.swiglu:
            self.c_gate = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = F.silu(self.c_gate(x)) * self.c_fc(x) if self.swiglu else gelu_tanh(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, return_attn=False):
        a, att = self.attn(self.ln_1(x), rope, return_attn)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        parts = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **parts,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=norm_layer(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # tied embedding / LM head
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections get std 0.02 / sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the lookup tables that do no matmul (wpe, and wte unless tied to
        the LM head, where it counts once as the head): the N of flops_per_token's 6N."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def embed(self, idx):
        """Token (+ learned position) embeddings of idx (B, T), the input of the first block."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}; "
                             f"crop the input to the last {self.config.block_size} tokens")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(0, T, dtype=torch.long, device=idx.device))
        return self.transformer.drop(x)

    def rope(self, T, device):
        """The (cos, sin) every block rotates q and k by for T positions; None with learned positions."""
        return rope_cos_sin(self.config, T, device) if self.config.pos_emb == "rope" else None

    def forward(self, idx, targets=None, return_attn=False):
        """(logits (B, T, vocab_size), loss or None without targets), and with return_attn=True attentions: one
        (B, n_head, T, T) tensor of softmax probabilities per layer."""
        x = self.embed(idx)
        rope = self.rope(idx.size(1), idx.device)
        attentions = []
        for block in self.transformer.h:
            x, att = block(x, rope, return_attn)
            attentions.append(att)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1),
                                                            ignore_index=-1)
        return (logits, loss, attentions) if return_attn else (logits, loss)

    def iter_attentions(self, idx):
        """Yield each layer's (B, n_head, T, T) attention probabilities in turn, one alive at a time and without the
        final norm and LM head: analyze_rank.py streams through deep models this way."""
        x = self.embed(idx)
        rope = self.rope(idx.size(1), idx.device)
        for block in self.transformer.h:
            x, att = block(x, rope, return_attn=True)
            yield att

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. load GPT-2's 1024 and train at 256)."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # The optimizer's home: nothing else builds one, so swapping it is a change here only (resume keeps working).
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, decay_embeddings=True):
        """AdamW with weight decay on 2-D weights only (matmuls, embeddings), none on biases and LayerNorms;
        decay_embeddings=False: none on the embeddings either (wte, tied to lm_head, and wpe), as the paper's code."""
        # named: checkpoints then key its state by name
        params = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        kept = set() if decay_embeddings else {m.weight for m in self.modules() if isinstance(m, nn.Embedding)}
        decay = [(name, p) for name, p in params if p.dim() >= 2 and p not in kept]
        no_decay = [(name, p) for name, p in params if p.dim() < 2 or p in kept]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # one fused kernel for all parameters (on CPU 3.6x faster than the foreach default, BENCHMARKS.md)
        fused = True if device_type in ("cuda", "cpu") else None  # None: PyTorch's default (foreach) elsewhere
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T; N = get_num_params() (every
        weight a matmul uses, at its real size), H Q = n_head * head_size (the width q k^T and att v run at)."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * T

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
