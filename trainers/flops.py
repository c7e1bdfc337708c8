"""Training FLOPs per token.

Default (DESIGN.md): C = 6·N per token, N the non-embedding parameters.
Exact (`exact_flops`): Chinchilla's count (Hoffmann et al. 2022, appendix F) — forward FLOPs
per sequence of length S, with d = d_model, H·h = d (heads · head_dim), F = d_ff, V = vocab:
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

from trainers.model import BYTE_VOCAB, Shape, count_params


def flops_per_token(shape: Shape, seq_len: int, vocab_size: int = BYTE_VOCAB, exact: bool = False) -> float:
    """Training FLOPs (forward + backward) per token.

    >>> from trainers.model import shape_for
    >>> flops_per_token(shape_for(53_440, "llama"), 128)  # 6·N
    320640.0
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
    """Training FLOPs for `tokens` tokens."""
    return flops_per_token(shape, seq_len, vocab_size, exact) * float(tokens)
