"""The model families indexed by N (non-embedding parameters): shape from N, parameter and FLOP
counts. Arithmetic only (no torch): the planner, the memory model and the spec use it; the torch
modules that realise a shape live in `trainers.model` (GPT) and `trainers.llama`.

**gpt** (GPT-2 style): learned token and position embeddings, `n_layers` pre-norm blocks
(LayerNorm, causal multi-head self-attention, LayerNorm, GELU MLP of width 4·d_model), a final
LayerNorm and an output head tied to the token embedding; all linear layers carry biases. Tokens
are bytes by default (vocab 256). Non-embedding parameters N count everything except the token
and position embeddings: per block 12·d² + 13·d (qkv 3d²+3d, out-proj d²+d, MLP 8d²+5d, two
LayerNorms 4d), plus the final LayerNorm 2d. Kaplan's approximation is N ≈ 12·L·d².

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

**FLOPs.** Default (DESIGN.md): C = 6·N per token. Exact (`exact=True`): Chinchilla's count
(Hoffmann et al. 2022, appendix F) — forward FLOPs per sequence of length S, with d = d_model,
H·h = d (heads · head_dim), F = d_ff, V = vocab:
  embeddings        2·S·V·d
  per layer:  qkv   2·3·S·d·d       scores  2·S·S·d     softmax  3·H·S·S
              mix   2·S·S·d         out     2·S·d·d     MLP      2·S·(2·d·F)
  logits            2·S·d·V
and backward = 2 × forward; divided by S for a per-token figure. Like Chinchilla, attention
is counted over the full S×S matrix (no causal halving); biases and LayerNorms are ignored.
The llama families' SwiGLU MLP has three d×F matrices (gate, up, down): MLP 2·S·(3·d·F);
RMSNorms, the SiLU·up product and the rotary embedding are ignored like LayerNorms (O(S·d)).
For a tied or untied head alike, the embedding and logits terms are as above.
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import asdict, dataclass

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
        """Plain dict for reports and MLflow params.

        >>> Shape(64, 1, 1, 192, 64, "llama", False).to_dict()["arch"]
        'llama'
        """
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
    """The family member whose non-embedding parameter count is nearest (in ratio) to `n_params`.

    >>> s = shape_for(1_000_000)
    >>> (s.d_model, s.n_layers, s.n_heads, s.d_ff), count_params(s).non_embedding
    ((165, 3, 3, 660), 986865)
    """
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


def flops_per_token(shape: Shape, seq_len: int, vocab_size: int = BYTE_VOCAB, exact: bool = False) -> float:
    """Training FLOPs (forward + backward) per token.

    >>> flops_per_token(shape_for(53_440, "llama"), 128)  # 6·N
    320640.0
    >>> round(flops_per_token(shape_for(53_440, "llama"), 128, exact=True))  # + attention and logits
    615552
    """
    if not exact:
        return 6.0 * count_params(shape, vocab_size, seq_len).non_embedding
    s, d, f, v, h = float(seq_len), float(shape.d_model), float(shape.d_ff), float(vocab_size), float(shape.n_heads)
    attention = 2 * 3 * s * d * d + 2 * s * s * d + 3 * h * s * s + 2 * s * s * d + 2 * s * d * d
    mlp_matrices = 3 if shape.arch == "llama" else 2  # SwiGLU: gate, up, down; GELU MLP: fc, proj
    dense = 2 * s * mlp_matrices * d * f
    forward = 2 * s * v * d + shape.n_layers * (attention + dense) + 2 * s * d * v
    return 3.0 * forward / s


def training_flops(shape: Shape, seq_len: int, tokens: int, vocab_size: int = BYTE_VOCAB,
                   exact: bool = False) -> float:
    """Training FLOPs for `tokens` tokens.

    >>> training_flops(shape_for(53_440, "llama"), 128, tokens=1_000)  # 6·N·D
    320640000.0
    """
    return flops_per_token(shape, seq_len, vocab_size, exact) * float(tokens)
