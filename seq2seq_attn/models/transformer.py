"""The Transformer (Vaswani et al., 2017) on the project's :class:`MultiHeadAttention`.

Pre-norm residual blocks by default (``x + f(norm(x))``, with a final layer norm on each stack);
post-norm (``norm(x + f(x))``) as in the paper on request. Incremental decoding keeps a growing
self-attention cache and a static cross-attention cache per layer, so a step costs ``O(T)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import KVCache, MultiHeadAttention, causal_mask
from ..config import ModelConfig, TransformerConfig
from .common import (
    Dropout,
    Embeddings,
    EncoderOutput,
    PositionalEncoding,
    SelfAttentionMaps,
    Seq2Seq,
    fit_to,
    pad_to,
    source_width,
)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """Position-wise feed-forward block ``W_2 act(W_1 x)``, ``(B, T, D) -> (B, T, D)``."""

    def __init__(self, section: TransformerConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(section.d_model, section.ff_size)
        self.linear2 = nn.Linear(section.ff_size, section.d_model)
        self.activation = ACTIVATIONS[section.activation]
        self.dropout = Dropout(section.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class Residual(nn.Module):
    """A residual connection with layer norm before (pre-norm) or after (post-norm) it."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """``x + dropout(sublayer(norm(x)))`` or ``norm(x + dropout(sublayer(x)))``."""
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a :class:`Residual`.

    ``section`` is ``model.transformer``; ``dropout`` the shared ``model.dropout``.
    """

    def __init__(self, section: TransformerConfig, dropout: float) -> None:
        super().__init__()
        d_model, heads = section.d_model, section.num_heads
        self.self_attn = MultiHeadAttention(d_model, heads, section.attention_dropout)
        self.feed_forward = FeedForward(section)
        self.attn_block = Residual(d_model, dropout, section.pre_norm)
        self.ff_block = Residual(d_model, dropout, section.pre_norm)

    def forward(
        self, x: Tensor, mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, S, D)``, ``mask`` ``(B, 1, S)`` (True = real key) -> (``(B, S, D)``,
        self-attention weights ``(B, H, S, S)`` when ``need_weights``, else ``None``)."""
        weights = None

        def attend(h: Tensor) -> Tensor:
            nonlocal weights
            out, weights = self.self_attn(h, h, h, mask, need_weights=need_weights)
            return out

        x = self.attn_block(x, attend)
        return self.ff_block(x, self.feed_forward), weights


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, feed-forward.

    ``section`` is ``model.transformer``; ``dropout`` the shared ``model.dropout``.
    """

    def __init__(self, section: TransformerConfig, dropout: float) -> None:
        super().__init__()
        d_model, heads = section.d_model, section.num_heads
        self.self_attn = MultiHeadAttention(d_model, heads, section.attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, section.attention_dropout)
        self.feed_forward = FeedForward(section)
        self.self_block = Residual(d_model, dropout, section.pre_norm)
        self.cross_block = Residual(d_model, dropout, section.pre_norm)
        self.ff_block = Residual(d_model, dropout, section.pre_norm)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        caches: tuple[KVCache, KVCache] | None = None,
        need_weights: bool = False,
        beams: int = 1,
        need_self_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One decoder layer.

        Args:
            x: ``(B, T, D)`` target states.
            memory: ``(B, S, D)`` encoder states; ``None`` when ``caches`` hold their projections.
            self_mask: ``(T, T_cached + T)`` causal mask, ``(B, 1, T_cached + 1)`` for one new
                step of rows that skip some cached slots, or ``None`` (one new step sees all).
            cross_mask: ``(B, 1, S)``, True at real source tokens.
            caches: ``(self-attention cache, cross-attention cache)`` for incremental decoding.
            need_weights: also return the cross-attention weights.
            beams: rows of ``x`` per sentence: ``memory``, ``cross_mask`` and the
                cross-attention cache hold one row per sentence (``B / beams``), and each
                sentence's beams attend to it as that many more query positions.
            need_self_weights: also return the self-attention weights.

        Returns:
            ``(x (B, T, D), cross-attention weights (B, H, T, S) or None, self-attention
            weights (B, H, T, T_cached + T) or None)``.
        """
        self_cache, cross_cache = (None, None) if caches is None else caches
        weights = self_weights = None

        def attend(h: Tensor) -> Tensor:
            nonlocal self_weights
            out, self_weights = self.self_attn(
                h, h, h, self_mask, need_weights=need_self_weights, cache=self_cache
            )
            return out

        x = self.self_block(x, attend)

        def cross(h: Tensor) -> Tensor:
            nonlocal weights
            rows, length, dim = h.shape
            grouped = h.reshape(rows // beams, beams * length, dim)  # (B / beams, beams * T, D)
            out, weights = self.cross_attn(
                grouped, memory, memory, cross_mask, need_weights=need_weights, cache=cross_cache
            )
            if weights is not None:  # (B / beams, H, beams * T, S) -> (B, H, T, S)
                sentences, heads, _, src_len = weights.shape
                weights = weights.view(sentences, heads, beams, length, src_len).transpose(1, 2)
                weights = weights.reshape(rows, heads, length, src_len)
            return out.reshape(rows, length, dim)

        x = self.cross_block(x, cross)
        return self.ff_block(x, self.feed_forward), weights, self_weights


@dataclass
class TransformerState:
    """Incremental decoding state: per-layer caches, the source mask and the step count.

    ``B`` rows hold ``B / beams`` sentences; what every beam of a sentence shares (the encoder
    projections and the source mask) is kept once per sentence.
    """

    self_caches: list[KVCache]  # growing, each (B, H, t, Dh)
    cross_caches: list[KVCache]  # static encoder projections, each (B / beams, H, S, Dh)
    src_mask: Tensor  # (B / beams, S)
    position: int = 0  # cached target positions t (the tokens decoded so far)
    beams: int = 1  # rows per sentence
    # (B,) leading cache slots each row must not see (it joined after them), or None: none.
    # A row's own position is `position - offsets[row]`.
    offsets: Tensor | None = None

    @property
    def rows(self) -> int:
        """Number of decoder rows ``B``."""
        return self.src_mask.size(0) * self.beams

    def select(self, batch_indices: Tensor, beams: int | None = None) -> TransformerState:
        """A new state holding rows ``batch_indices`` ``(B',)``: each group of ``beams`` rows
        (default: this state's ``beams``) taken from one sentence's rows (see
        :meth:`Transformer.init_state`). The per-sentence tensors are re-indexed only when the
        sentences change (some finished)."""
        beams = self.beams if beams is None else beams
        if batch_indices.numel() % beams:
            raise ValueError(
                f"select: {batch_indices.numel()} rows is not a whole number of groups of "
                f"{beams} beams"
            )
        groups = batch_indices.view(-1, beams) // self.beams  # (B' / beams, beams)
        sentences = groups[:, 0]  # (B' / beams,) the sentence of each group
        cross_caches, src_mask = self.cross_caches, self.src_mask
        same_sentences = torch.arange(sentences.numel(), device=sentences.device)
        grouped, unchanged = torch.stack(
            [(groups == sentences.unsqueeze(1)).all(), (sentences == same_sentences).all()]
        ).tolist()  # one host sync for both checks
        if not grouped:
            raise ValueError(
                "select: each group of beams must come from one sentence's rows (beam search's "
                "selections do); build the state with beams=1 to select rows freely"
            )
        if not (unchanged and sentences.numel() == src_mask.size(0)):
            cross_caches = [select_cache(c, sentences) for c in cross_caches]
            src_mask = src_mask.index_select(0, sentences)
        return TransformerState(
            self_caches=[select_cache(c, batch_indices) for c in self.self_caches],
            cross_caches=cross_caches,
            src_mask=src_mask,
            position=self.position,
            beams=beams,
            offsets=None if self.offsets is None else self.offsets.index_select(0, batch_indices),
        )

    def join(self, other: TransformerState) -> TransformerState:
        """The rows of ``self`` then those of ``other`` in one state (see
        ``DecoderState.join``): the shorter history is padded in front with cache slots its
        rows never see (``offsets``), the sources padded (masked) or cut to the longest real
        one; slots no row sees any more are then dropped."""
        if other.beams != self.beams:
            raise ValueError(f"join: {self.beams} and {other.beams} beams per sentence")
        position = max(self.position, other.position)
        width = source_width(self.src_mask, other.src_mask)  # padding does not outlive its use
        offsets = torch.cat([state.row_offsets(position) for state in (self, other)])  # (B,)
        skip = int(offsets.min())  # slots that every row skips
        rows = [self.rows, other.rows]

        def sources(first: Tensor, second: Tensor, dim: int) -> Tensor:  # `width` positions
            return torch.cat([fit_to(first, dim, width), fit_to(second, dim, width)])

        return TransformerState(
            self_caches=[
                join_caches([mine, theirs], rows, position, skip)
                for mine, theirs in zip(self.self_caches, other.self_caches, strict=True)
            ],
            cross_caches=[
                KVCache(
                    static=True,
                    key=sources(mine.key, theirs.key, 2),
                    value=sources(mine.value, theirs.value, 2),
                )
                for mine, theirs in zip(self.cross_caches, other.cross_caches, strict=True)
            ],
            src_mask=sources(self.src_mask, other.src_mask, 1),
            position=position - skip,
            beams=self.beams,
            offsets=None if bool((offsets == skip).all()) else offsets - skip,
        )

    def row_offsets(self, position: int) -> Tensor:
        """``(B,)`` the slots each row skips once the cache is padded in front to
        ``position`` slots."""
        padding = position - self.position
        if self.offsets is None:
            return torch.full((self.rows,), padding, device=self.src_mask.device)
        return self.offsets + padding


def join_caches(caches: list[KVCache], rows: list[int], length: int, skip: int) -> KVCache:
    """Self-attention ``caches`` (of ``rows`` rows each; an empty one: nothing decoded yet) as
    one cache of ``length - skip`` slots: each padded in front with zeros to ``length`` slots
    (slots its rows never see), the batches concatenated, and the first ``skip`` slots (seen by
    no row) dropped."""
    filled = [cache.key for cache in caches if cache.key is not None]
    if length == skip or not filled:
        return KVCache(static=False)
    heads, head_dim = filled[0].size(1), filled[0].size(3)

    def padded(tensor: Tensor | None, count: int) -> Tensor:  # -> (count, H, length, Dh)
        if tensor is None:
            return filled[0].new_zeros((count, heads, length, head_dim))
        return pad_to(tensor, 2, length, front=True)

    key = torch.cat([padded(cache.key, n) for cache, n in zip(caches, rows, strict=True)])
    value = torch.cat([padded(cache.value, n) for cache, n in zip(caches, rows, strict=True)])
    return KVCache(static=False, key=key[:, :, skip:], value=value[:, :, skip:])


def select_cache(cache: KVCache, batch_indices: Tensor) -> KVCache:
    """A new cache with rows ``batch_indices`` (the original is left untouched)."""
    selected = KVCache(static=cache.static, key=cache.key, value=cache.value)
    selected.select(batch_indices)
    return selected


class Transformer(Seq2Seq):
    """Encoder-decoder Transformer with tied embeddings and an incremental decoder.

    Built from the ``model`` section: its ``transformer`` sub-section and the shared
    ``dropout`` and ``max_positions`` (the ``family`` key is :func:`build_model`'s business).
    """

    def __init__(
        self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint: bool
    ) -> None:
        super().__init__()
        self.config = config
        section, dropout = config.transformer, config.dropout
        self.max_positions = config.max_positions
        d_model, learned = section.d_model, section.learned_positions
        self.tgt_embed = Embeddings(tgt_vocab_size, d_model, scale=True)
        self.src_embed = self.tgt_embed if joint else Embeddings(src_vocab_size, d_model, True)
        self.src_positions = PositionalEncoding(d_model, config.max_positions, learned)
        self.tgt_positions = PositionalEncoding(d_model, config.max_positions, learned)
        self.dropout = Dropout(dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(section, dropout) for _ in range(section.encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(section, dropout) for _ in range(section.decoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(d_model) if section.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if section.pre_norm else nn.Identity()
        self.output = nn.Linear(d_model, tgt_vocab_size, bias=False)
        self._init_weights()
        if section.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        """Xavier-uniform linear layers; embedding tables (tokens, learned positions)
        ``N(0, d^-1/2)``, so that scaled token embeddings start with norm near ``sqrt(d)``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.transformer.d_model**-0.5)

    def _embed(
        self, embed: Embeddings, positions: PositionalEncoding, tokens: Tensor, offset: int = 0
    ) -> Tensor:
        """Scaled embeddings plus positions, with dropout: ``(B, T) -> (B, T, D)``."""
        embedded = embed(tokens) + positions(tokens.size(1), offset)  # (B, T, D)
        return self.dropout(embedded)

    def encode(self, src: Tensor, src_mask: Tensor) -> EncoderOutput:
        """``src`` ``(B, S)`` -> states ``(B, S, D)``."""
        return self._encode(src, src_mask, need_weights=False)[0]

    def _encode(
        self, src: Tensor, src_mask: Tensor, need_weights: bool
    ) -> tuple[EncoderOutput, list[Tensor | None]]:
        """The encoder and, when ``need_weights``, each layer's self-attention weights
        ``(B, H, S, S)`` (else ``None`` per layer)."""
        x = self._embed(self.src_embed, self.src_positions, src)  # (B, S, D)
        key_mask = src_mask.unsqueeze(1)  # (B, 1, S)
        all_weights = []
        for layer in self.encoder_layers:
            x, weights = layer(x, key_mask, need_weights)
            all_weights.append(weights)
        return EncoderOutput(states=self.encoder_norm(x), mask=src_mask), all_weights

    def _decode(
        self,
        tgt_in: Tensor,
        encoder_output: EncoderOutput,
        need_weights: bool,
        need_self_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor | None], list[Tensor | None]]:
        """Teacher-forced decoder: ``(B, T)`` -> (states ``(B, T, D)``, per-layer
        cross-attention weights ``(B, H, T, S)``, per-layer self-attention weights
        ``(B, H, T, T)``; each ``None`` per layer unless asked for)."""
        x = self._embed(self.tgt_embed, self.tgt_positions, tgt_in)  # (B, T, D)
        self_mask = causal_mask(tgt_in.size(1), device=tgt_in.device)  # (T, T)
        cross_mask = encoder_output.mask.unsqueeze(1)  # (B, 1, S)
        memory = encoder_output.states  # (B, S, D)
        all_weights, all_self_weights = [], []
        for layer in self.decoder_layers:
            x, weights, self_weights = layer(
                x, memory, self_mask, cross_mask, None, need_weights,
                need_self_weights=need_self_weights,
            )  # fmt: skip
            all_weights.append(weights)
            all_self_weights.append(self_weights)
        return self.decoder_norm(x), all_weights, all_self_weights

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)``; all target positions in parallel."""
        states, _, _ = self._decode(tgt_in, self.encode(src, src_mask), need_weights=False)
        return self.output(states)

    def linear_flops_per_token(self) -> tuple[int, int]:
        """Forward FLOPs of the linear layers per source token (encoder layers, and every
        decoder layer's cross-attention keys/values) and per target token (decoder layers, output
        projection). Attention's own products (``q . k``, weights times values) grow with the
        sentence length and are not counted: about 1% at Multi30k's lengths. A training step
        costs about three times the forward pass."""
        section = self.config.transformer
        d_model, ff_size = section.d_model, section.ff_size
        encoder_layer = 4 * d_model * d_model + 2 * d_model * ff_size  # q, k, v, out; FFN
        decoder_layer = 6 * d_model * d_model + 2 * d_model * ff_size  # + cross q, out
        per_source = section.encoder_layers * encoder_layer
        per_source += section.decoder_layers * 2 * d_model * d_model  # cross k, v
        per_target = section.decoder_layers * decoder_layer + d_model * self.output.out_features
        return 2 * per_source, 2 * per_target

    def attention_maps(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Cross-attention weights of every decoder layer and head, ``(B, L, H, T, S)``."""
        _, weights, _ = self._decode(tgt_in, self.encode(src, src_mask), need_weights=True)
        return torch.stack([w for w in weights if w is not None], dim=1)

    def self_attention_maps(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor
    ) -> SelfAttentionMaps:
        """Encoder self-attention ``(B, L_enc, H, S, S)`` (padded source keys get 0) and causal
        decoder self-attention ``(B, L_dec, H, T, T)`` of every layer and head, teacher-forced."""
        encoder_output, encoder_weights = self._encode(src, src_mask, need_weights=True)
        _, _, decoder_weights = self._decode(
            tgt_in, encoder_output, need_weights=False, need_self_weights=True
        )
        return SelfAttentionMaps(
            encoder=torch.stack([w for w in encoder_weights if w is not None], dim=1),
            decoder=torch.stack([w for w in decoder_weights if w is not None], dim=1),
        )

    def init_state(self, encoder_output: EncoderOutput, beams: int = 1) -> TransformerState:
        """Project the encoder states once into every layer's static cross-attention cache,
        one row per sentence whatever ``beams`` (the rows of the decoder per sentence)."""
        memory = encoder_output.states  # (B, S, D)
        return TransformerState(
            self_caches=[KVCache(static=False) for _ in self.decoder_layers],
            cross_caches=[layer.cross_attn.memory_cache(memory) for layer in self.decoder_layers],
            src_mask=encoder_output.mask,
            beams=beams,
        )

    def decode_step(
        self, prev_tokens: Tensor, state: TransformerState, need_attention: bool = False
    ) -> tuple[Tensor, TransformerState, Tensor | None]:
        """Decode one position for every row; see :meth:`Seq2Seq.decode_step`."""
        tokens = prev_tokens.unsqueeze(1)  # (B, 1)
        self_mask = None  # one new step may see every cached one...
        if state.offsets is None:
            x = self._embed(self.tgt_embed, self.tgt_positions, tokens, state.position)
        else:  # ...but rows that joined later skip the slots before them
            positions = state.position - state.offsets  # (B,) each row's own position
            x = self.dropout(self.tgt_embed(tokens) + self.tgt_positions.at(positions)[:, None])
            slots = torch.arange(state.position + 1, device=positions.device)  # (t + 1,)
            self_mask = (slots >= state.offsets.unsqueeze(1)).unsqueeze(1)  # (B, 1, t + 1)
        cross_mask = state.src_mask.unsqueeze(1)  # (B / beams, 1, S)
        last = len(self.decoder_layers) - 1
        for index, layer in enumerate(self.decoder_layers):
            caches = (state.self_caches[index], state.cross_caches[index])
            wanted = need_attention and index == last
            x, weights, _ = layer(x, None, self_mask, cross_mask, caches, wanted, state.beams)
        logits = self.output(self.decoder_norm(x)).squeeze(1)  # (B, V)
        state.position += 1
        if weights is None:
            return logits, state, None
        return logits, state, weights.mean(dim=1).squeeze(1)  # (B, H, 1, S) -> (B, S)
