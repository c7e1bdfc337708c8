"""The llama families' model: Hugging Face `transformers`' LlamaForCausalLM behind our interface.

`Llama(shape, vocab_size, max_seq_len)` builds `LlamaForCausalLM` from a `LlamaConfig` that the
shape fixes (trainers/model.py, `shape_for(N, "llama")`): RMSNorm (ε 1e-6), SwiGLU MLP of width
`d_ff`, rotary position embeddings (θ = 10,000), multi-head attention with as many key/value
heads as query heads, no biases, attention through PyTorch SDPA (`attn_implementation="sdpa"`:
the fused flash / memory-efficient kernels on CUDA), the output head tied to the token
embedding only for `llama-tied`. Weights are Hugging Face's own initialisation (normal, std
0.02; norms 1), drawn from torch's global generator, so `build_model` seeds it.

The wrapper gives it the interface of our GPT: `forward(idx)` returns the logits and
`forward(idx, targets)` the mean cross-entropy, computed exactly as for gpt (fp32 logits), so
the DeepSpeed trainer, the plain loop, evaluation and downstream tasks use it unchanged. No KV
cache is built (`use_cache=False`) and no attention mask is passed: every sequence is a full
causal window, so SDPA runs with `is_causal`.

>>> from trainers.model import shape_for
>>> m = Llama(shape_for(53_440, "llama"), vocab_size=256, max_seq_len=32)
>>> m(torch.zeros(2, 32, dtype=torch.long)).shape
torch.Size([2, 32, 256])
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.core.family import BYTE_VOCAB, Shape

ROPE_THETA = 10_000.0
RMS_EPS = 1e-6
INIT_STD = 0.02


def llama_config(shape: Shape, vocab_size: int = BYTE_VOCAB, max_seq_len: int = 128):
    """The `transformers.LlamaConfig` of a llama-family shape."""
    from transformers import LlamaConfig

    if shape.arch != "llama":
        raise ValueError(f"not a llama shape: {shape}")
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads, head_dim=shape.head_dim, hidden_act="silu",
        max_position_embeddings=max_seq_len, initializer_range=INIT_STD, rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=shape.tied, attention_bias=False, mlp_bias=False, use_cache=False,
        # token ids are whatever the data are (bytes by default): no special tokens
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="sdpa")


class Llama(nn.Module):
    """LlamaForCausalLM with our model interface; `self.hf` is the Hugging Face model."""

    def __init__(self, shape: Shape, vocab_size: int = BYTE_VOCAB, max_seq_len: int = 128) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.shape, self.vocab_size, self.max_seq_len = shape, vocab_size, max_seq_len
        self.hf = LlamaForCausalLM(llama_config(shape, vocab_size, max_seq_len))

    def embedding_params(self) -> list[nn.Parameter]:
        """The token embedding and, untied, the output head: what N leaves out."""
        emb, head = self.hf.model.embed_tokens.weight, self.hf.lm_head.weight
        return [emb] if head is emb else [emb, head]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.hf(input_ids=idx, use_cache=False).logits
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
