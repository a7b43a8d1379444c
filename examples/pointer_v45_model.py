"""PointerV45: a Transformer pointer-generator for next-location prediction (design section 5).

Inputs are batch-first and right-padded (see ``geolife_data.splits_to_tensors``):
``x`` [B, L] location ids (0 = padding) and ``x_dict`` with ``time`` (0..95), ``weekday``
(0..6), ``diff`` (days before the target, 0..7), ``duration`` (30-min buckets, 0..95), all
[B, L], plus ``user`` [B] and ``len`` [B] (valid positions, ``1 <= len <= L``).

The forward pass has no host syncs, Python loops over the batch or data-dependent shapes,
so it can be captured in a CUDA graph; softmaxes and the mixture run in float32 under
autocast.

Table lookups are ``index_select``s (:func:`lookup`), not ``nn.Embedding`` calls: the same
parameters and values, but the backward is one ``index_add`` per table where torch's
embedding backward sorts the 6,144 ids of a GeoLife batch (about 10 kernels per table), and
where ``position_bias[from_end]`` took a 257 us serialised indexing kernel per step on an
H200 (docs/performance.md, "What the step's kernels are").
"""

from __future__ import annotations

import math

import torch
from torch import nn

X_DICT_KEYS = ("time", "weekday", "diff", "duration", "user", "len")
# Embedding table sizes of the per-position features (inputs are clamped into range).
NUM_TIME, NUM_WEEKDAY, NUM_DIFF, NUM_DURATION = 96, 7, 8, 96
_MASKED = -1e9  # finite, so an (invalid) all-padding row cannot produce NaN


def lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Return ``table[ids]`` ([*ids.shape, dim], or ids.shape for a 1-D table) by ``index_select``."""
    rows = table.index_select(0, ids.reshape(-1))
    return rows.view(*ids.shape, *table.shape[1:])


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Return the [length, dim] sinusoidal position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class PointerV45(nn.Module):
    """Transformer encoder + pointer over the history + generation head, mixed by a gate.

    Args:
        num_locations: Vocabulary size, padding 0 and unseen 1 included.
        num_users: User table size (ids 0..num_users-1; 0 is padding/unused).
        d_model: Model width (divisible by 4 and by ``nhead``).
        nhead: Attention heads.
        num_layers: Encoder layers.
        dim_feedforward: Feed-forward width.
        dropout: Dropout probability.
        max_len: Longest history the model accepts.

    Raises:
        ValueError: a size is not positive, ``d_model`` not divisible by 4 and ``nhead``,
            or ``dropout`` outside [0, 1).
    """

    def __init__(
        self,
        num_locations: int,
        num_users: int,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.15,
        max_len: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_locations", num_locations),
            ("num_users", num_users),
            ("d_model", d_model),
            ("nhead", nhead),
            ("num_layers", num_layers),
            ("dim_feedforward", dim_feedforward),
            ("max_len", max_len),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if d_model % 4 or d_model % nhead:
            raise ValueError(f"d_model must be divisible by 4 and by nhead={nhead}, got {d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_locations, self.max_len, self.d_model = num_locations, max_len, d_model
        small = d_model // 4

        self.loc_emb = nn.Embedding(num_locations, d_model, padding_idx=0)
        self.user_emb = nn.Embedding(num_users, d_model)
        self.time_emb = nn.Embedding(NUM_TIME, small)
        self.weekday_emb = nn.Embedding(NUM_WEEKDAY, small)
        self.recency_emb = nn.Embedding(NUM_DIFF, small)
        self.duration_emb = nn.Embedding(NUM_DURATION, small)
        self.pos_from_end_emb = nn.Embedding(max_len, small)
        self.input_proj = nn.Linear(2 * d_model + 5 * small, d_model)
        self.input_norm = nn.LayerNorm(d_model)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)

        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

        self.pointer_query = nn.Linear(d_model, d_model)
        self.pointer_key = nn.Linear(d_model, d_model)
        self.position_bias = nn.Parameter(torch.zeros(max_len))  # per position-from-end
        self.gen_head = nn.Linear(d_model, num_locations)
        self.gate = nn.Sequential(
            nn.Linear(d_model, d_model // 2), nn.GELU(), nn.Linear(d_model // 2, 1)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform every matrix; keep the location padding row at zero."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        with torch.no_grad():
            self.loc_emb.weight[0].zero_()

    def count_parameters(self) -> int:
        """Return the number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, x: torch.Tensor, x_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return log-probabilities over locations, [B, num_locations], float32.

        Raises:
            ValueError: ``x`` not 2-D, longer than ``max_len``, or a key of ``x_dict`` missing.
        """
        return self.components(x, x_dict)["log_probs"]

    def components(
        self, x: torch.Tensor, x_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Run the model and return every part of the mixture (all float32).

        Returns:
            ``pointer`` [B, V] (copy distribution), ``generation`` [B, V], ``gate`` [B, 1],
            ``attention`` [B, L] (pointer weights over positions), ``log_probs`` [B, V] =
            ``log(gate*pointer + (1-gate)*generation + 1e-10)``.

        Raises:
            ValueError: as ``forward``.
        """
        if x.dim() != 2:
            raise ValueError(f"x must be [batch, seq], got shape {tuple(x.shape)}")
        missing = [key for key in X_DICT_KEYS if key not in x_dict]
        if missing:
            raise ValueError(f"x_dict lacks key(s) {', '.join(missing)}")
        batch, length = x.shape
        if length > self.max_len:
            raise ValueError(f"history length {length} exceeds max_len={self.max_len}")

        lengths = x_dict["len"].to(x.device).long().view(batch, 1)
        index = torch.arange(length, device=x.device).view(1, length)
        padding = index >= lengths  # [B, L], True on padded positions
        from_end = (lengths - 1 - index).clamp(0, self.max_len - 1)  # 0 = most recent

        # the padding row gets no gradient, as with nn.Embedding(padding_idx=0); it stays zero
        locations = lookup(self.loc_emb.weight, x) * (x != 0).unsqueeze(-1)
        features = torch.cat(
            [
                locations,
                lookup(self.user_emb.weight, x_dict["user"])
                .unsqueeze(1)
                .expand(batch, length, self.d_model),
                lookup(self.time_emb.weight, x_dict["time"].clamp(0, NUM_TIME - 1)),
                lookup(self.weekday_emb.weight, x_dict["weekday"].clamp(0, NUM_WEEKDAY - 1)),
                lookup(self.recency_emb.weight, x_dict["diff"].clamp(0, NUM_DIFF - 1)),
                lookup(self.duration_emb.weight, x_dict["duration"].clamp(0, NUM_DURATION - 1)),
                lookup(self.pos_from_end_emb.weight, from_end),
            ],
            dim=-1,
        )
        hidden = self.input_norm(self.input_proj(features)) + self.positions[:length]
        hidden = self.encoder(hidden, src_key_padding_mask=padding)

        # context = state at the last valid position (right padding: index len-1)
        last = (lengths - 1).clamp(0, length - 1).view(batch, 1, 1).expand(batch, 1, self.d_model)
        context = hidden.gather(1, last).squeeze(1)  # [B, d]

        query = self.pointer_query(context).float()
        keys = self.pointer_key(hidden).float()
        scores = torch.einsum("bld,bd->bl", keys, query) / math.sqrt(self.d_model)
        scores = (scores + lookup(self.position_bias, from_end).float()).masked_fill(
            padding, _MASKED
        )
        attention = torch.softmax(scores, dim=-1)
        pointer = torch.zeros(batch, self.num_locations, device=x.device, dtype=torch.float32)
        pointer = pointer.scatter_add(1, x, attention)

        generation = torch.softmax(self.gen_head(context).float(), dim=-1)
        gate = torch.sigmoid(self.gate(context).float())
        mixture = gate * pointer + (1.0 - gate) * generation
        return {
            "pointer": pointer,
            "generation": generation,
            "gate": gate,
            "attention": attention,
            "log_probs": torch.log(mixture + 1e-10),
        }
