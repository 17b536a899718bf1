"""Example models for the torch-compile engine: `model: warmer.agent.examples:tiny_transformer`.

Nothing is downloaded, so a job with this model runs in any image that has torch. torch is
imported when a model is built, not when this module is imported (the agent stays stdlib-only).
"""

from __future__ import annotations

import functools
from typing import Any


def tiny_transformer(layers: int = 4, dim: int = 256, heads: int = 4, mlp_ratio: int = 4) -> Any:
    """A stack of pre-norm transformer blocks; input and output are float [batch, seq, dim]."""
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    return _transformer_class()(layers, dim, heads, mlp_ratio)


@functools.lru_cache(maxsize=1)
def _transformer_class() -> type:
    """The nn.Module class, defined once torch is wanted."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Block(nn.Module):
        """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x)); causal multi-head attention."""

        def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
            super().__init__()
            self.heads = heads
            self.attention_norm = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.projection = nn.Linear(dim, dim)
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(
                nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, seq, dim = x.shape
            qkv = self.qkv(self.attention_norm(x))
            q, k, v = qkv.view(batch, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.projection(attended.transpose(1, 2).reshape(batch, seq, dim))
            return x + self.mlp(self.mlp_norm(x))

    class TinyTransformer(nn.Module):
        def __init__(self, layers: int, dim: int, heads: int, mlp_ratio: int) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(layers)))
            self.norm = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.blocks(x))

    return TinyTransformer
