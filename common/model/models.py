"""Next-item models: LSTM, GRU4Rec-style GRU and SASRec-style causal Transformer.

One interface: `encode(items) -> hidden` takes a batch-first LongTensor (B, T) of item indices
(0 = padding, left-padded) and returns (B, T, emb_dim); `score(hidden)` returns logits over
items 1..num_items (index j of the last axis is item j + 1). Scores are dot products with the
item embedding table (weight tying), through `TiedItemScorer`, which has its own Opacus
per-sample-gradient rule (`common.privacy.grad_samplers`) so that DP-SGD sees both uses of the
shared table.

Optional item side features (genres, release year, a category): each item's vector is its own
embedding plus the sum of its features' embeddings, at the input and in the tied scorer alike, so
an item with few interactions borrows what its genre-mates learned. Which features each item has is
a fixed buffer (`feature_index`, public catalogue metadata, never user data): it is not among the
weights a client sends (`arrays()`), only the feature embeddings are.

Every model passes `ModuleValidator.validate(model, strict=True)`: RNNs use Opacus' DP layers,
attention is built from `nn.Linear` + `scaled_dot_product_attention`. Dropout is keyed per batch
row when the cohort engine asks (`common.model.keyed_dropout`): one user's masks never depend on who else
is in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.model import onednn_linear
from common.model.keyed_dropout import KeyedDropout, attention


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
    # SASRec position ids: "recency" counts back from the newest item (it always sits at max_len - 1);
    # "absolute" counts forward from the window's first item, as a right-padded SASRec does
    # (Klenitskiy & Vasilev 2023): a position then also says how far into the history it is.
    positions: str = "recency"
    # SASRec block: "pre-ln" (GPT-2 style, 4x GELU feed-forward) or "original" (Kang & McAuley's,
    # as the SASRec+ code has it: see OriginalBlock).
    block: str = "pre-ln"
    num_features: int = 0  # side-feature vocabulary size V (ids 1..V, 0 = none); 0 = no side features
    feature_slots: int = 0  # most features one item has (columns of the feature_index buffer)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.positions not in ("recency", "absolute"):
            raise ValueError(f"positions must be recency or absolute, got {self.positions!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if not 0 <= self.item_rank < self.emb_dim:
            raise ValueError(f"item_rank must be 0 or in 1..{self.emb_dim - 1}, got {self.item_rank}")
        if self.emb_dim % self.num_heads:
            raise ValueError(f"emb_dim {self.emb_dim} must be divisible by num_heads {self.num_heads}")
        if (self.num_features > 0) != (self.feature_slots > 0):
            raise ValueError(
                f"num_features {self.num_features} and feature_slots {self.feature_slots}: both or neither"
            )


class ItemEmbedding(nn.Embedding):
    """nn.Embedding whose Opacus per-sample gradient respects `padding_idx` (Opacus' own does not)."""


class TiedItemScorer(nn.Module):
    """Logits against the item embedding table (padding row excluded)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight  # the same Parameter: tied, not copied

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return onednn_linear.linear(hidden, self.weight[1:])  # (..., D) -> (..., N)


class FeaturedTiedScorer(nn.Module):
    """Logits against item vectors = item embedding + sum of the item's feature embeddings.

    `feature_index` (N + 1, S) comes in as an input, not a buffer of this module, so that the
    per-sample gradient rule below sees it among the activations; it comes first because Opacus
    reads the batch size from the last input."""

    def __init__(self, embedding: nn.Embedding, feature_embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight  # tied, not copied
        self.feature_weight = feature_embedding.weight  # tied to the input's feature table

    def forward(self, feature_index: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        table = self.weight[1:] + feature_table(self.feature_weight, feature_index[1:])  # (N, D)
        return onednn_linear.linear(hidden, table)  # (..., D) -> (..., N)


def feature_counts(index: torch.Tensor, num_features: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, S) feature ids -> (N, V + 1) how often each feature id is in each row; column 0 ("no
    feature") is zeroed."""
    counts = torch.zeros(index.shape[0], num_features, dtype=dtype, device=index.device)
    counts.scatter_add_(1, index, torch.ones(index.shape, dtype=dtype, device=index.device))
    counts[:, 0] = 0.0
    return counts


def feature_table(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`feature_sum` of a whole catalogue, (N, S) -> (N, D), as one (N, V + 1) @ (V + 1, D) product.

    Same values; but its backward is a matmul, where the gather's is an (N, S, D) scatter, and with
    per-user gradients (the cohort engine's vmap) that scatter ran once per user: 3x the round time
    of a featureless model on ML-1M. A vocabulary too large for the count matrix keeps the gather."""
    if not count_matrix_fits(index.shape[0], weight.shape[0]):
        return feature_sum(weight, index)
    return feature_counts(index, weight.shape[0], weight.dtype) @ weight


def count_matrix_fits(num_items: int, num_features: int) -> bool:
    """Whether an (items, features) count matrix is small: 2^24 entries, 64 MB of float32."""
    return num_items * num_features <= 1 << 24


def feature_sum(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(..., S) feature ids -> (..., D) sum of their embeddings; id 0 ("no feature") adds nothing,
    whatever row 0 holds (DP noise reaches every row)."""
    vectors = F.embedding(index, weight)  # (..., S, D)
    return (vectors * (index > 0).unsqueeze(-1).to(vectors.dtype)).sum(-2)  # (..., D)


class SequenceRecommender(nn.Module):
    """Shared parts: item embedding, tied scorer, weight (de)serialisation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        width = config.item_rank or config.emb_dim  # the item table's width ("table space")
        self.item_emb = ItemEmbedding(config.num_items + 1, width, padding_idx=0)
        # Factorised table: item i's vector is item_up(item_emb[i]); the scorer uses the same product.
        self.item_up = nn.Linear(config.item_rank, config.emb_dim, bias=False) if config.item_rank else None
        if config.num_features:
            # Feature embeddings live in table space too: an item's row is item_emb[i] + its features'.
            self.feature_emb = ItemEmbedding(config.num_features + 1, width, padding_idx=0)
            # Not persistent: no state_dict / arrays() entry, so federation never sends or averages it.
            self.register_buffer(
                "feature_index",
                torch.zeros(config.num_items + 1, config.feature_slots, dtype=torch.long),
                persistent=False,
            )
            self.scorer = FeaturedTiedScorer(self.item_emb, self.feature_emb)
        else:
            self.scorer = TiedItemScorer(self.item_emb)

    @property
    def has_features(self) -> bool:
        return self.config.num_features > 0

    def set_item_features(self, feature_index: torch.Tensor) -> None:
        """Install the (N + 1, S) feature ids of every item index (row 0 = padding, all zero)."""
        expected = (self.config.num_items + 1, self.config.feature_slots)
        if not self.has_features or tuple(feature_index.shape) != expected:
            raise ValueError(f"feature_index of shape {tuple(feature_index.shape)} does not fit this model {expected}")
        if int(feature_index.min()) < 0 or int(feature_index.max()) > self.config.num_features:
            raise ValueError(f"feature ids must lie in 0..{self.config.num_features}")
        if feature_index[0].any():
            raise ValueError("row 0 of feature_index is padding and must be all zero")
        self.feature_index.copy_(feature_index)

    def output_table(self) -> torch.Tensor:
        """(N + 1, r) the table-space rows scores are dot products with (row 0 = padding)."""
        table = self.item_emb.weight
        if self.has_features:
            table = table + feature_table(self.feature_emb.weight, self.feature_index)
        return table

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) item indices -> (B, T, emb_dim) item vectors: the item's own row (+ its features')."""
        vectors = self.item_emb(items)  # (B, T, r)
        if self.has_features:
            ids = self.feature_index[items]  # (B, T, S)
            features = self.feature_emb(ids)  # (B, T, S, r): through the module, so Opacus sees it
            vectors = vectors + (features * (ids > 0).unsqueeze(-1).to(features.dtype)).sum(-2)
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
            if self.has_features:
                self.feature_emb.weight[0].zero_()

    def to_table_space(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., emb_dim) states -> the item table's width: h . (P e_i) = (P^T h) . e_i."""
        return hidden if self.item_up is None else hidden @ self.item_up.weight  # (..., D) @ (D, r)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        table_space = self.to_table_space(hidden)
        if self.has_features:
            return self.scorer(self.feature_index, table_space)
        return self.scorer(table_space)

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
        from opacus.layers import DPGRU, DPLSTM  # here, not at the top: SASRec never needs Opacus

        from common.logs import drop_opacus_root_handler

        drop_opacus_root_handler(load=False)
        rnn = DPLSTM if config.arch == "lstm" else DPGRU
        self.dropout = KeyedDropout(config.dropout)
        self.rnn = rnn(
            config.emb_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        if self.rnn.dropout_layer is not None:  # Opacus' dropout between layers, keyed per row too
            self.rnn.dropout_layer = KeyedDropout(config.dropout)
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
        y = attention(q, k, v, mask, self.dropout, self.training)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.down = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.dropout = KeyedDropout(config.dropout)

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
        self.dropout = KeyedDropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), mask))
        return x + self.ff(self.ln_ff(x))


class OriginalBlock(nn.Module):
    """The original SASRec block (Kang & McAuley 2018, as the SASRec+ code of Klenitskiy & Vasilev
    2023 has it): queries from the layer-normed stream, keys and values from the stream itself, the
    residual from the normed queries; then the stream is normed again and a ReLU feed-forward of
    width D adds to it. Every block thus hands on a freshly normed stream (post-LN-like)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.emb_dim
        self.num_heads, self.attn_dropout = config.num_heads, config.dropout
        self.ln_attn = nn.LayerNorm(D, eps=1e-8)
        self.q, self.kv, self.proj = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)
        self.ln_ff = nn.LayerNorm(D, eps=1e-8)
        self.up, self.down = nn.Linear(D, D), nn.Linear(D, D)
        self.dropout = KeyedDropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        nh, hs = self.num_heads, D // self.num_heads
        h = self.ln_attn(x)  # (B, T, D)
        q = self.q(h).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (part.view(B, T, nh, hs).transpose(1, 2) for part in self.kv(x).split(D, dim=2))
        y = attention(q, k, v, mask, self.attn_dropout, self.training)  # (B, nh, T, hs)
        x = self.ln_ff(h + self.proj(y.transpose(1, 2).reshape(B, T, D)))  # (B, T, D)
        return x + self.dropout(self.down(self.dropout(F.relu(self.up(x)))))


BLOCKS = {"pre-ln": Block, "original": OriginalBlock}


class SASRec(SequenceRecommender):
    """Causal self-attention over items with learned positions (Kang & McAuley 2018)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.pos_emb = nn.Embedding(config.max_len, config.emb_dim)
        self.dropout = KeyedDropout(config.dropout)
        self.blocks = nn.ModuleList(BLOCKS[config.block](config) for _ in range(config.num_layers))
        self.ln_out = nn.LayerNorm(config.emb_dim)
        self._init_weights()

    def position_ids(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded items -> (B, T) rows of the position table."""
        B, T = items.shape
        if self.config.positions == "absolute":
            # 0 at the window's first item, counting on through masked (0) items inside it.
            started = (items > 0).long().cumsum(1) > 0  # (B, T)
            return (started.long().cumsum(1) - 1).clamp(min=0)
        # Right-aligned positions: the most recent item always sits at max_len - 1.
        positions = torch.arange(self.config.max_len - T, self.config.max_len, device=items.device)
        return positions.unsqueeze(0).repeat(B, 1)  # a real tensor, as Opacus needs

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        B, T = items.shape
        if T > self.config.max_len:
            raise ValueError(f"input length {T} exceeds max_len {self.config.max_len}; keep the last items")
        items = items.contiguous()
        valid = items > 0  # (B, T)
        x = self.embed_items(items) * math.sqrt(self.config.emb_dim) + self.pos_emb(self.position_ids(items))
        x = self.dropout(x)
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
