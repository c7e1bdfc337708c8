"""The GPT-style decoder family indexed by N (non-embedding parameters).

Architecture (GPT-2 style): learned token and position embeddings, `n_layers` pre-norm blocks
(LayerNorm → causal multi-head self-attention → residual, LayerNorm → GELU MLP of width
4·d_model → residual), a final LayerNorm and an output head **tied** to the token embedding.
All linear layers carry biases. Tokens are bytes by default (vocab 256).

Non-embedding parameters N count everything except the token and position embeddings:
per block 12·d² + 13·d (qkv 3d²+3d, out-proj d²+d, MLP 8d²+5d, two LayerNorms 4d), plus the
final LayerNorm 2d. Kaplan's approximation is N ≈ 12·L·d².

The shape rule `shape_for(N)` (deterministic, documented in docs/trainer.md). The family is the
set of shapes (L, d) such that
1. the width is admissible: n_heads = ceil(d / 64) divides d, so head_dim = d / n_heads is an
   integer in 16..64 (d ≥ 16);
2. the depth follows the aspect rule L = max(1, round(cbrt(N(L, d) / (12·ASPECT²)))) with
   ASPECT = d_model / n_layers = 64 (GPT-3's ratio at 125M–760M);
and d_ff = 4·d. `shape_for(N)` returns the member whose exact N(L, d) is nearest to the target
in ratio (ties to the smaller). Picking from one fixed sorted set makes the realised N
monotone in the target; members are dense enough that the realised N is within a few percent
of any target from ~3K to ~1e10.

Families (`model.family` in the spec):
- `gpt` (default): the widths of rule 1, dense down to CPU-sized models;
- `gpt-aligned`: widths that are multiples of 64 with head_dim exactly 64, for GPUs — tensor
  cores and flash attention run at full speed only there (on an H100 it doubles MFU:
  `benchmarks.gpu_mfu --aligned`). Members are sparser (one per depth: realised N within ~25 %
  of a target above 1e7) and start at d = 64.
- `llama` / `llama-tied`: Hugging Face `transformers`' LlamaForCausalLM (trainers/llama.py):
  RMSNorm, SwiGLU, rotary position embeddings, no biases; the output head untied (`llama`) or
  tied to the token embedding (`llama-tied`). Widths are multiples of 64 with head_dim 64 below
  d = 2048 and multiples of 128 with head_dim 128 from there; d_ff = Llama's rule, 8d/3 rounded
  up to a multiple of head_dim; the same depth rule. Per block 4d² (q, k, v, o) + 3·d·d_ff
  (gate, up, down) + 2d (two RMSNorms), plus the final RMSNorm d; N excludes the token
  embedding and the (untied) output head. Smallest member: d = 64, L = 1 (N = 53,440).
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ASPECT = 64  # target d_model / n_layers
MAX_HEAD_DIM = 64
MIN_HEAD_DIM = 16
BYTE_VOCAB = 256
MAX_LAYERS = 64  # family covers N up to ~1.3e10
FAMILIES = ("gpt", "gpt-aligned", "llama", "llama-tied")
LLAMA_FAMILIES = ("llama", "llama-tied")
LLAMA_LARGE_WIDTH = 2048  # from this d_model on, llama widths are multiples of 128 with head_dim 128


@dataclass(frozen=True)
class Shape:
    """Decoder shape: width, depth, heads (d_model = n_heads · head_dim), FFN width."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    head_dim: int
    arch: str = "gpt"  # "gpt" (GELU MLP, LayerNorm, learned positions) or "llama" (SwiGLU, RMSNorm, RoPE)
    tied: bool = True  # output head tied to the token embedding

    def to_dict(self) -> dict[str, int | str | bool]:
        """Plain dict for reports and MLflow params."""
        return asdict(self)


@dataclass(frozen=True)
class ParamCount:
    """Non-embedding and total (unique) parameter counts of a shape."""

    non_embedding: int
    total: int


def non_embedding_params(d_model: int, n_layers: int, d_ff: int | None = None, arch: str = "gpt") -> int:
    """Exact non-embedding parameter count of the family at this width and depth.

    >>> non_embedding_params(64, 1, arch="llama")  # 4·64² + 3·64·192 + 2·64, + final norm 64
    53440
    """
    d = d_model
    if arch == "llama":
        f = llama_d_ff(d) if d_ff is None else d_ff
        return n_layers * (4 * d * d + 3 * d * f + 2 * d) + d
    f = 4 * d if d_ff is None else d_ff
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * f + f + d) + 4 * d
    return n_layers * per_layer + 2 * d


def llama_head_dim(d_model: int) -> int:
    """head_dim of the llama families: 64 below d = 2048, 128 from there (as Llama 2/3 at 7B+).

    >>> llama_head_dim(1024), llama_head_dim(4096)
    (64, 128)
    """
    return 2 * MAX_HEAD_DIM if d_model >= LLAMA_LARGE_WIDTH else MAX_HEAD_DIM


def llama_d_ff(d_model: int) -> int:
    """SwiGLU width: Llama's rule int(8d/3) rounded up to a multiple of head_dim (64 or 128).

    >>> llama_d_ff(64), llama_d_ff(1024), llama_d_ff(4096)
    (192, 2752, 11008)
    """
    m = llama_head_dim(d_model)
    return m * -(-(8 * d_model // 3) // m)


def _admissible_width(d: int, family: str = "gpt") -> bool:
    """gpt: d_model splits into ceil(d/64) heads of an integer head_dim in 16..64;
    gpt-aligned: d_model is a multiple of 64 (heads of exactly 64);
    llama: a multiple of its head_dim (64 below d = 2048, 128 from there)."""
    if family == "gpt-aligned":
        return d >= MAX_HEAD_DIM and d % MAX_HEAD_DIM == 0
    if family in LLAMA_FAMILIES:
        return d >= MAX_HEAD_DIM and d % llama_head_dim(d) == 0
    h = -(-d // MAX_HEAD_DIM)
    return d >= MIN_HEAD_DIM and d % h == 0


def _layers_rule(n: float) -> int:
    return max(1, round((n / (12.0 * ASPECT**2)) ** (1.0 / 3.0)))


@functools.lru_cache(maxsize=len(FAMILIES))
def _family(family: str = "gpt") -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """All family members (N, (L, d)) sorted by N: admissible widths whose depth obeys the rule."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    arch = "llama" if family in LLAMA_FAMILIES else "gpt"
    members = []
    for n_layers in range(1, MAX_LAYERS + 1):
        lo = 0.0 if n_layers == 1 else 12.0 * ASPECT**2 * (n_layers - 0.5) ** 3
        hi = 12.0 * ASPECT**2 * (n_layers + 0.5) ** 3
        # N ≥ 12·L·d² in both architectures and ≤ 13·L·d² + O(d) (llama's d_ff rounding): search
        # every width whose count can fall in [lo, hi)
        d_lo = max(MIN_HEAD_DIM, int(math.sqrt(lo / (14.0 * n_layers))) - 2)
        d_hi = int(math.sqrt(hi / (12.0 * n_layers))) + 2
        for d in range(d_lo, d_hi + 1):
            n = non_embedding_params(d, n_layers, arch=arch)
            if _admissible_width(d, family) and _layers_rule(n) == n_layers:
                members.append((n, (n_layers, d)))
    members.sort()
    return tuple(m[0] for m in members), tuple(m[1] for m in members)


def family_sizes(family: str = "gpt") -> tuple[int, ...]:
    """Non-embedding parameter counts of every member of `family`, ascending.

    >>> family_sizes("gpt")[0]
    3312
    """
    return _family(family)[0]


def shape_for(n_params: int, family: str = "gpt") -> Shape:
    """The family member whose non-embedding parameter count is nearest (in ratio) to `n_params`."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    counts, shapes = _family(family)
    if n_params > counts[-1] * 1.1:
        raise ValueError(f"n_params={n_params} is beyond the family's largest member ({counts[-1]})")
    i = bisect.bisect_left(counts, n_params)
    if i == len(counts) or (i > 0 and n_params / counts[i - 1] <= counts[i] / n_params):
        i -= 1
    n_layers, d_model = shapes[i]
    if family in LLAMA_FAMILIES:
        h = llama_head_dim(d_model)
        return Shape(d_model=d_model, n_layers=n_layers, n_heads=d_model // h, d_ff=llama_d_ff(d_model),
                     head_dim=h, arch="llama", tied=family == "llama-tied")
    n_heads = -(-d_model // MAX_HEAD_DIM)
    return Shape(d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=4 * d_model,
                 head_dim=d_model // n_heads)


def count_params(shape: Shape, vocab_size: int = BYTE_VOCAB, max_seq_len: int = 128) -> ParamCount:
    """Non-embedding and total (unique) parameters.

    gpt: the token and position embeddings (the head is tied to the token embedding);
    llama: the token embedding and, untied, the output head (rotary positions have none).

    >>> count_params(shape_for(53_440, "llama"), vocab_size=256)
    ParamCount(non_embedding=53440, total=86208)
    """
    n = non_embedding_params(shape.d_model, shape.n_layers, shape.d_ff, shape.arch)
    if shape.arch == "llama":
        emb = vocab_size * shape.d_model * (1 if shape.tied else 2)
    else:
        emb = vocab_size * shape.d_model + max_seq_len * shape.d_model
    return ParamCount(non_embedding=n, total=n + emb)


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
