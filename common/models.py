"""Next-item models: LSTM, GRU4Rec-style GRU and SASRec-style causal Transformer.

One interface: `encode(items) -> hidden` takes a batch-first LongTensor (B, T) of item indices
(0 = padding, left-padded) and returns (B, T, emb_dim); `score(hidden)` returns logits over
items 1..num_items (index j of the last axis is item j + 1). Scores are dot products with the
item embedding table (weight tying), through `TiedItemScorer`, which has its own Opacus
per-sample-gradient rule so that DP-SGD sees both uses of the shared table.

Every model passes `ModuleValidator.validate(model, strict=True)`: RNNs use Opacus' DP layers,
attention is built from `nn.Linear` + `scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.embedding import compute_embedding_grad_sample
from opacus.layers import DPGRU, DPLSTM


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "sasrec" | "gru" | "lstm"
    num_items: int  # catalogue size N; indices 1..N, 0 = padding
    max_len: int = 50  # longest input the model accepts (SASRec position table size)
    emb_dim: int = 64  # item embedding size; SASRec model width
    item_rank: int = 0  # > 0: item table = (N + 1) x item_rank rows times a shared item_rank x emb_dim map
    hidden_dim: int = 128  # RNN state size
    num_layers: int = 2  # Transformer blocks / stacked RNN layers
    num_heads: int = 1
    dropout: float = 0.2

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if not 0 <= self.item_rank < self.emb_dim:
            raise ValueError(f"item_rank must be 0 or in 1..{self.emb_dim - 1}, got {self.item_rank}")
        if self.emb_dim % self.num_heads:
            raise ValueError(f"emb_dim {self.emb_dim} must be divisible by num_heads {self.num_heads}")


class ItemEmbedding(nn.Embedding):
    """nn.Embedding whose Opacus per-sample gradient respects `padding_idx` (Opacus' own does not)."""


@register_grad_sampler(ItemEmbedding)
def _item_embedding_grad_sample(layer: ItemEmbedding, activations, backprops: torch.Tensor):
    grads = compute_embedding_grad_sample(layer, activations, backprops)
    if layer.padding_idx is not None and layer.weight in grads:
        grads[layer.weight][:, layer.padding_idx] = 0.0  # (B, N + 1, D): padding row never learns
    return grads


class TiedItemScorer(nn.Module):
    """Logits against the item embedding table (padding row excluded)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight  # the same Parameter: tied, not copied

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight[1:])  # (..., D) -> (..., N)


@register_grad_sampler(TiedItemScorer)
def _tied_scorer_grad_sample(layer: TiedItemScorer, activations, backprops: torch.Tensor):
    hidden = activations[0]  # (B, ..., D)
    per_sample = torch.einsum("b...n,b...d->bnd", backprops, hidden)  # (B, N, D)
    return {layer.weight: F.pad(per_sample, (0, 0, 1, 0))}  # (B, N + 1, D): padding row gets 0


class SequenceRecommender(nn.Module):
    """Shared parts: item embedding, tied scorer, weight (de)serialisation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item_emb = ItemEmbedding(config.num_items + 1, config.item_rank or config.emb_dim, padding_idx=0)
        # Factorised table: item i's vector is item_up(item_emb[i]); the scorer uses the same product.
        self.item_up = nn.Linear(config.item_rank, config.emb_dim, bias=False) if config.item_rank else None
        self.scorer = TiedItemScorer(self.item_emb)

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) item indices -> (B, T, emb_dim) item vectors."""
        vectors = self.item_emb(items)
        return vectors if self.item_up is None else self.item_up(vectors)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _init_weights(self) -> None:
        """Small normal init (GPT-2 style): keeps initial tied logits near zero, losses near log N."""
        recurrent = set(self.rnn.modules()) if hasattr(self, "rnn") else set()  # keep PyTorch's RNN init
        for module in self.modules():
            if module in recurrent:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.item_up is not None:  # unit-variance map: item vectors keep the full table's 0.02 scale
            nn.init.normal_(self.item_up.weight, std=self.config.item_rank**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def to_table_space(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., emb_dim) states -> the item table's width: h . (P e_i) = (P^T h) . e_i."""
        return hidden if self.item_up is None else hidden @ self.item_up.weight  # (..., D) @ (D, r)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.to_table_space(hidden))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(items))

    def arrays(self) -> dict[str, torch.Tensor]:
        """Weights to send or save, each tensor once: the state dict holds aliases (the tied
        `scorer.weight`, Opacus' DP-RNN names) that would double payloads and DP sensitivity."""
        out, seen = {}, set()
        for key, value in self.state_dict().items():
            if value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                out[key] = value
        return out

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        expected = self.arrays()
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        wrong = [
            f"{k} {tuple(arrays[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)
        ]
        if missing or unexpected or wrong:
            raise ValueError(
                f"weights do not fit this {self.config.arch} model: missing {missing}, "
                f"unexpected {unexpected}, wrong shapes {wrong}"
            )
        with torch.no_grad():
            for key, value in expected.items():
                value.copy_(arrays[key])


class RNNRecommender(SequenceRecommender):
    """LSTM (the seed model) or GRU4Rec-style GRU over item embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        rnn = DPLSTM if config.arch == "lstm" else DPGRU
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = rnn(
            config.emb_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.project = nn.Linear(config.hidden_dim, config.emb_dim)
        self._init_weights()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embed_items(items))  # (B, T, E)
        states, _ = self.rnn(x)  # (B, T, H)
        return self.project(self.dropout(states))  # (B, T, E)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        hs = D // self.num_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.num_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.num_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.down = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.emb_dim)
        self.attn = CausalSelfAttention(config)
        self.ln_ff = nn.LayerNorm(config.emb_dim)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), mask))
        return x + self.ff(self.ln_ff(x))


class SASRec(SequenceRecommender):
    """Causal self-attention over items with learned positions (Kang & McAuley 2018)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.pos_emb = nn.Embedding(config.max_len, config.emb_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_out = nn.LayerNorm(config.emb_dim)
        self._init_weights()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        B, T = items.shape
        if T > self.config.max_len:
            raise ValueError(f"input length {T} exceeds max_len {self.config.max_len}; keep the last items")
        items = items.contiguous()
        # Right-aligned positions: the most recent item always sits at max_len - 1.
        positions = torch.arange(self.config.max_len - T, self.config.max_len, device=items.device)
        positions = positions.unsqueeze(0).repeat(B, 1)  # (B, T): a real tensor, as Opacus needs
        x = self.embed_items(items) * math.sqrt(self.config.emb_dim) + self.pos_emb(positions)  # (B, T, D)
        x = self.dropout(x)
        valid = items > 0  # (B, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()  # (T, T)
        eye = torch.eye(T, dtype=torch.bool, device=items.device)
        # Attend to earlier real items; every position also sees itself so no row is empty.
        mask = (causal & valid[:, None, :]) | eye  # (B, T, T)
        mask = mask.unsqueeze(1)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)  # (B, T, D)


ARCHITECTURES = {"sasrec": SASRec, "gru": RNNRecommender, "lstm": RNNRecommender}


def build_model(config: ModelConfig) -> SequenceRecommender:
    return ARCHITECTURES[config.arch](config)
