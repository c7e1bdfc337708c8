"""The GPT-style decoder family indexed by N (non-embedding parameters), as torch modules.

Architecture (GPT-2 style): learned token and position embeddings, `n_layers` pre-norm blocks
(LayerNorm → causal multi-head self-attention → residual, LayerNorm → GELU MLP of width
4·d_model → residual), a final LayerNorm and an output head **tied** to the token embedding.
All linear layers carry biases. Tokens are bytes by default (vocab 256).

The arithmetic of every family (the shape rule `shape_for(N)`, parameter and FLOP counts, the
families `gpt`, `gpt-aligned`, `llama`, `llama-tied`) is torch-free in `orchestrator.core.family`
and re-exported here; this module builds the model a shape describes (`build_model`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The family's arithmetic, torch-free in the core; re-exported for the trainers and their callers.
from orchestrator.core.family import (ASPECT, BYTE_VOCAB, FAMILIES, LLAMA_FAMILIES,  # noqa: F401
                                      LLAMA_LARGE_WIDTH, MAX_HEAD_DIM, MAX_LAYERS, MIN_HEAD_DIM,
                                      ParamCount, Shape, count_params, family_sizes, llama_d_ff,
                                      llama_head_dim, non_embedding_params, shape_for)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through PyTorch's fused SDPA kernel."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.n_heads, self.head_dim = shape.n_heads, shape.head_dim
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model)
        self.proj = nn.Linear(shape.d_model, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Position-wise GELU feed-forward block."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.fc = nn.Linear(shape.d_model, shape.d_ff)
        self.proj = nn.Linear(shape.d_ff, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(shape.d_model)
        self.attn = CausalSelfAttention(shape)
        self.ln2 = nn.LayerNorm(shape.d_model)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only language model; `forward(idx, targets)` returns the mean cross-entropy."""

    def __init__(self, shape: Shape, vocab_size: int = BYTE_VOCAB, max_seq_len: int = 128) -> None:
        super().__init__()
        self.shape, self.vocab_size, self.max_seq_len = shape, vocab_size, max_seq_len
        self.wte = nn.Embedding(vocab_size, shape.d_model)
        self.wpe = nn.Embedding(max_seq_len, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.ln_f = nn.LayerNorm(shape.d_model)
        # The head is its own module sharing the embedding weight (as in GPT-2) so that ZeRO-3's
        # per-module parameter gathering sees the tied weight where it is used.
        self.head = nn.Linear(shape.d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight
        self.apply(self._init)
        # GPT-2: scale residual output projections by 1/sqrt(2L) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * shape.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(n_params: int, seq_len: int, vocab_size: int = BYTE_VOCAB, seed: int = 0,
                family: str = "gpt") -> nn.Module:
    """The family member for target N, initialised deterministically from `seed`.

    Every family's model maps `forward(idx)` to logits and `forward(idx, targets)` to the mean
    cross-entropy, and carries its `shape`.
    """
    shape = shape_for(n_params, family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if shape.arch == "llama":
            from trainers.llama import Llama  # deferred: importing transformers takes seconds

            return Llama(shape, vocab_size=vocab_size, max_seq_len=seq_len)
        return GPT(shape, vocab_size=vocab_size, max_seq_len=seq_len)
