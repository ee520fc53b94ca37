"""Recurrent encoder-decoders with attention: Bahdanau et al. (2015) and Luong et al. (2015).

The encoder is a (bi)directional GRU/LSTM over packed sequences, so padding never changes a
sentence's states. The decoders step a GRU/LSTM stack by hand so that the work that does not
depend on the previous step is done once, outside the time loop: the key projections of the
attention (once per sentence, kept in :class:`RNNState`), the embedding half of the first
layer's input matmul and the output projection (once per batch in teacher forcing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..attention import AdditiveScore, build_score, softmax_attention
from ..config import ModelConfig, RNNConfig
from .common import (
    Dropout,
    Embeddings,
    EncoderOutput,
    Seq2Seq,
    fit_to,
    select_rows,
    source_width,
)
from .rnn_loop import bahdanau_gru_loop, gru_forward, luong_gru_loop


class RNNEncoder(nn.Module):
    """Embeddings and a (bi)directional GRU/LSTM stack that padding never changes.

    A GRU runs each direction of each layer over the padded batch, the backward direction on
    every sentence reversed within its length (padding left in place, after the real tokens),
    and reads its final states at the last real token: torch's packed sequences give the same
    states, but their backward pass adds one zero-filled gradient of every position's input
    gates per time step (``narrow``), which made the encoder about 1.6 times slower on the
    CPU. An LSTM, whose final cell state is not among its outputs, runs packed.
    ``section`` is ``model.rnn``; ``dropout`` the shared ``model.dropout``.
    """

    def __init__(self, section: RNNConfig, dropout: float, embed: Embeddings) -> None:
        super().__init__()
        self.embed = embed
        self.dropout = Dropout(dropout)
        directions = 2 if section.bidirectional else 1
        rnn_class = nn.LSTM if section.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            section.embedding_size,
            section.hidden_size // directions,
            num_layers=section.encoder_layers,
            batch_first=True,
            bidirectional=section.bidirectional,
            dropout=dropout if section.encoder_layers > 1 else 0.0,
        )
        self.between_layers = Dropout(dropout)
        self.directions = directions
        self.lstm = section.cell == "lstm"

    def forward(self, src: Tensor, src_mask: Tensor) -> EncoderOutput:
        """``src`` ``(B, S)`` -> states ``(B, S, hidden)`` (0 at padding), final
        ``(B, hidden [*2 for LSTM])``.

        Every sentence needs at least one real token.
        """
        embedded = self.dropout(self.embed(src))  # (B, S, E)
        if self.lstm:
            states, summary = self._packed(embedded, src_mask)
        else:
            states, summary = self._padded_gru(embedded, src_mask)
        return EncoderOutput(states=self.dropout(states), mask=src_mask, final=summary)

    def _padded_gru(self, embedded: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """States ``(B, S, H)`` and the top layer's final states ``(B, H)`` of the GRU, every
        direction of every layer run over the padded batch (see the class docstring)."""
        lengths = src_mask.sum(dim=1)  # (B,)
        positions = torch.arange(src_mask.size(1), device=src_mask.device)  # (S,)
        # (B, S): position t of a sentence reversed within its length; padding stays put
        backwards = torch.where(src_mask, lengths[:, None] - 1 - positions, positions)
        last = torch.arange(len(lengths), device=src_mask.device), lengths - 1
        layer_input = embedded
        for layer in range(self.rnn.num_layers):
            if layer > 0:
                layer_input = self.between_layers(layer_input)
            forward_states = self._gru_direction(layer_input, layer, reverse=False)
            finals, outputs = [forward_states[last]], [forward_states]  # (B, Hd), (B, S, Hd)
            if self.directions == 2:
                reversed_states = self._gru_direction(
                    gather_positions(layer_input, backwards), layer, reverse=True
                )
                finals.append(reversed_states[last])
                outputs.append(gather_positions(reversed_states, backwards))
            layer_input = torch.cat(outputs, dim=-1)  # (B, S, H)
        states = layer_input.masked_fill(~src_mask.unsqueeze(-1), 0.0)
        return states, torch.cat(finals, dim=-1)

    def _gru_direction(self, inputs: Tensor, layer: int, reverse: bool) -> Tensor:
        """One direction of one GRU layer over ``inputs`` ``(B, S, I)`` from a zero state, with
        the module's own weights: states ``(B, S, Hd)``."""
        suffix = f"l{layer}_reverse" if reverse else f"l{layer}"
        weights = [
            getattr(self.rnn, f"{name}_{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]  # fmt: skip
        first = inputs.new_zeros(1, inputs.size(0), self.rnn.hidden_size)
        # nn.GRU's own kernel for one layer and direction (batch-first, no inner dropout)
        states, _ = torch._VF.gru(inputs, first, weights, True, 1, 0.0, self.training, False, True)
        return states

    def _packed(self, embedded: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """States ``(B, S, H)`` and the top layer's final ``[h; c]`` ``(B, 2H)`` of the LSTM
        over packed sequences."""
        lengths = src_mask.sum(dim=1).cpu()  # (B,)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        outputs, final = self.rnn(packed)
        states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src_mask.size(1))
        return states, torch.cat([self._top_layer(f) for f in final], dim=-1)

    def _top_layer(self, final: Tensor) -> Tensor:
        """``(layers * directions, B, Hd)`` -> top layer, directions side by side, ``(B, H)``."""
        top = final[-self.directions :]  # (directions, B, Hd)
        return top.transpose(0, 1).reshape(top.size(1), -1)  # (B, directions * Hd)


def gather_positions(batch: Tensor, positions: Tensor) -> Tensor:
    """``batch`` ``(B, S, D)`` with its rows' positions taken as ``positions`` ``(B, S)`` says
    (``out[b, t] = batch[b, positions[b, t]]``)."""
    return batch.gather(1, positions.unsqueeze(-1).expand(-1, -1, batch.size(-1)))


class DecoderRNN(nn.Module):
    """A GRU/LSTM stack stepped one position at a time.

    The first layer's input is ``[ahead; step]``: ``ahead`` (the embedding) is known for every
    step in advance, so its matmul (:attr:`ahead_proj`, with the input bias) can run for all
    positions at once; ``step`` (a context or the input-feeding vector) is known only at the
    step. The gate maths is PyTorch's ``GRUCell`` / ``LSTMCell``. ``section`` is ``model.rnn``;
    ``dropout`` (the shared ``model.dropout``) applies between layers.
    """

    def __init__(self, section: RNNConfig, dropout: float, ahead_size: int, step_size: int) -> None:
        super().__init__()
        gates, hidden = section.num_gates * section.hidden_size, section.hidden_size
        self.lstm = section.cell == "lstm"
        self.ahead_proj = nn.Linear(ahead_size, gates)
        self.step_proj = nn.Linear(step_size, gates, bias=False)
        self.input_projs = nn.ModuleList(
            nn.Linear(hidden, gates) for _ in range(section.decoder_layers - 1)
        )
        self.hidden_projs = nn.ModuleList(
            nn.Linear(hidden, gates) for _ in range(section.decoder_layers)
        )
        self.dropout = Dropout(dropout)

    def forward(
        self, ahead_gates: Tensor, step_input: Tensor, hidden: Tensor, cell: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """One step: ``ahead_gates`` ``(B, G)`` from :attr:`ahead_proj`, ``step_input``
        ``(B, X)``, ``hidden``/``cell`` ``(B, L, H)`` -> new ``(hidden, cell)``."""
        input_gates = ahead_gates + self.step_proj(step_input)  # (B, G)
        new_hidden, new_cell = [], []
        for layer, hidden_proj in enumerate(self.hidden_projs):
            if layer > 0:
                below = self.dropout(new_hidden[-1])  # (B, H)
                input_gates = self.input_projs[layer - 1](below)
            hidden_gates = hidden_proj(hidden[:, layer])  # (B, G)
            if self.lstm:
                h, c = lstm_gates(input_gates, hidden_gates, cell[:, layer])
                new_cell.append(c)
            else:
                h, _ = gru_forward(input_gates, hidden_gates, hidden[:, layer])
            new_hidden.append(h)
        return torch.stack(new_hidden, 1), torch.stack(new_cell, 1) if self.lstm else None


def lstm_gates(input_gates: Tensor, hidden_gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update from ``W_i x + b_i`` and ``W_h h + b_h`` (both ``(B, 4H)``) -> ``(h, c)``."""
    i, f, g, o = (input_gates + hidden_gates).chunk(4, dim=-1)
    new_cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(new_cell), new_cell


@dataclass
class RNNState:
    """Decoder state between steps; every tensor is batch-first."""

    memory: Tensor  # (B, S, H) encoder states: the attention values
    keys: Tensor  # (B, S, K) the attention score's projected keys
    src_mask: Tensor  # (B, S) True at real source tokens
    hidden: Tensor  # (B, L, H)
    cell: Tensor | None  # (B, L, H), LSTM only
    feed: Tensor | None  # (B, H) Luong's previous attentional state; None for Bahdanau

    def select(self, batch_indices: Tensor, beams: int | None = None) -> RNNState:
        """A new state holding rows ``batch_indices`` of every tensor (every row has its own
        copy of everything, so ``beams`` changes nothing)."""
        return RNNState(
            memory=self.memory.index_select(0, batch_indices),
            keys=self.keys.index_select(0, batch_indices),
            src_mask=self.src_mask.index_select(0, batch_indices),
            hidden=self.hidden.index_select(0, batch_indices),
            cell=select_rows(self.cell, batch_indices),
            feed=select_rows(self.feed, batch_indices),
        )

    def join(self, other: RNNState) -> RNNState:
        """The rows of ``self`` then those of ``other`` (see ``DecoderState.join``): sources
        padded (masked) or cut to the longest real one, so that the width does not outlive the
        sentences that needed it."""
        width = source_width(self.src_mask, other.src_mask)

        def sources(name: str) -> Tensor:  # (B, S, ...) of both, `width` positions
            return torch.cat([fit_to(getattr(state, name), 1, width) for state in (self, other)])

        def rows(name: str) -> Tensor | None:
            first, second = getattr(self, name), getattr(other, name)
            return None if first is None else torch.cat([first, second])

        return RNNState(
            memory=sources("memory"),
            keys=sources("keys"),
            src_mask=sources("src_mask"),
            hidden=torch.cat([self.hidden, other.hidden]),
            cell=rows("cell"),
            feed=rows("feed"),
        )


class AttentionDecoder(nn.Module, ABC):
    """What both attentional decoders share: bridge, attention over the memory, time loop.

    Subclasses define :meth:`_step` (one position, from the embedding's precomputed gates to the
    features that predict the next token), :meth:`_readout` (features -> output vector) and
    :meth:`_fused_loop` (every teacher-forced position at once, where :mod:`.rnn_loop` has the
    configuration: one GRU layer). ``section`` is ``model.rnn``; ``dropout`` the shared
    ``model.dropout``. Set :attr:`fused` to False to step through autograd instead.
    """

    fused: bool = True
    """Teacher forcing through :meth:`_fused_loop` where it applies (the results are the same)."""

    def __init__(
        self, section: RNNConfig, dropout: float, embed: Embeddings, score: str, step_size: int
    ) -> None:
        super().__init__()
        self.num_layers, self.hidden_size = section.decoder_layers, section.hidden_size
        self.embed = embed
        self.dropout = Dropout(dropout)
        hidden = section.hidden_size
        num_states = 2 if section.cell == "lstm" else 1
        self.bridge = nn.Linear(num_states * hidden, num_states * section.decoder_layers * hidden)
        self.attention = build_score(score, hidden, hidden, section.attention_size)
        self.rnn = DecoderRNN(section, dropout, section.embedding_size, step_size)
        self.one_gru_layer = section.cell == "gru" and section.decoder_layers == 1

    def init_state(self, encoder_output: EncoderOutput) -> RNNState:
        """Bridge ``tanh(W final + b)`` to the first decoder state; project the keys once."""
        if encoder_output.final is None:
            raise ValueError("the RNN decoder needs the encoder's final states (final=None)")
        layers, hidden = self.num_layers, self.hidden_size
        bridged = torch.tanh(self.bridge(encoder_output.final))  # (B, states * L * H)
        bridged = bridged.view(encoder_output.batch_size, -1, layers, hidden)  # (B, states, L, H)
        return RNNState(
            memory=encoder_output.states,
            keys=self.attention.project_keys(encoder_output.states),
            src_mask=encoder_output.mask,
            hidden=bridged[:, 0],
            cell=bridged[:, 1] if self.rnn.lstm else None,
            feed=None,
        )

    def attend(self, query: Tensor, state: RNNState) -> tuple[Tensor, Tensor]:
        """``query`` ``(B, H)`` -> ``(context (B, H), weights (B, S))`` over the memory."""
        scores = self.attention.score(query.unsqueeze(1), state.keys)  # (B, 1, S)
        context, weights = softmax_attention(scores, state.memory, state.src_mask.unsqueeze(1))
        return context.squeeze(1), weights.squeeze(1)

    def step(self, prev_tokens: Tensor, state: RNNState) -> tuple[Tensor, RNNState, Tensor]:
        """``prev_tokens`` ``(B,)`` -> ``(output vectors (B, O), new state, weights (B, S))``."""
        embedded = self.dropout(self.embed(prev_tokens))  # (B, E)
        features, state, weights = self._step(self.rnn.ahead_proj(embedded), state)
        return self._readout(features, embedded), state, weights

    def forward(self, tgt_in: Tensor, state: RNNState) -> tuple[Tensor, Tensor]:
        """Teacher forcing on ``tgt_in`` ``(B, T)``: ``(outputs (B, T, O), weights (B, T, S))``."""
        embedded = self.dropout(self.embed(tgt_in))  # (B, T, E)
        ahead = self.rnn.ahead_proj(embedded)  # (B, T, G): one matmul for every step
        if self.fused and self._fusable():
            features, weights = self._fused_loop(ahead, state)  # (B, T, F), (B, T, S)
            return self._readout(features, embedded), weights
        features, weights = [], []
        # unbind, not ahead[:, t]: its backward is one stack, not T zero-filled (B, T, G) grads
        for ahead_gates in ahead.unbind(dim=1):  # T x (B, G)
            step_features, state, step_weights = self._step(ahead_gates, state)
            features.append(step_features)
            weights.append(step_weights)
        outputs = self._readout(torch.stack(features, dim=1), embedded)  # (B, T, O)
        return outputs, torch.stack(weights, dim=1)

    def _fusable(self) -> bool:
        """Whether :meth:`_fused_loop` can run: one GRU layer, a score it knows, and plain
        linear layers (not int8 ones, which keep no weight matrices)."""
        linears = self._fused_linears()
        if not self.one_gru_layer or linears is None:
            return False
        return all(
            type(m) is nn.Linear for m in [self.rnn.step_proj, self.rnn.hidden_projs[0], *linears]
        )

    @abstractmethod
    def _step(self, ahead_gates: Tensor, state: RNNState) -> tuple[Tensor, RNNState, Tensor]:
        """One position: ``(features (B, F), new state, weights (B, S))``."""

    @abstractmethod
    def _readout(self, features: Tensor, embedded: Tensor) -> Tensor:
        """``features`` ``(..., F)`` and the input embeddings ``(..., E)`` -> ``(..., O)``."""

    @abstractmethod
    def _fused_linears(self) -> list[nn.Module] | None:
        """The layers besides the RNN's that :meth:`_fused_loop` reads the weights of (it needs
        them to be ``nn.Linear``), or ``None`` where it does not apply."""

    @abstractmethod
    def _fused_loop(self, ahead: Tensor, state: RNNState) -> tuple[Tensor, Tensor]:
        """Every position of ``ahead`` ``(B, T, G)``: ``(features (B, T, F), weights (B, T, S))``,
        as :meth:`_step` in a loop would give them."""


class BahdanauDecoder(AttentionDecoder):
    """Bahdanau et al. (2015): attend from the previous state ``s_{t-1}`` (additive score), feed
    ``[E y_{t-1}; c_t]`` to the RNN, read out ``tanh(W_o [s_t; c_t; E y_{t-1}])``."""

    def __init__(self, section: RNNConfig, dropout: float, embed: Embeddings) -> None:
        super().__init__(section, dropout, embed, "additive", step_size=section.hidden_size)
        readout_inputs = 2 * section.hidden_size + section.embedding_size
        self.readout = nn.Linear(readout_inputs, section.hidden_size)

    def _step(self, ahead_gates: Tensor, state: RNNState) -> tuple[Tensor, RNNState, Tensor]:
        """Attention, then the RNN step; features ``[s_t; c_t]`` ``(B, 2H)``."""
        context, weights = self.attend(state.hidden[:, -1], state)  # from s_{t-1}
        hidden, cell = self.rnn(ahead_gates, context, state.hidden, state.cell)
        features = torch.cat([hidden[:, -1], context], dim=-1)  # (B, 2H)
        return features, replace(state, hidden=hidden, cell=cell), weights

    def _fused_linears(self) -> list[nn.Module] | None:
        """The additive score's query projection and energy vector."""
        return [self.attention.query_proj, self.attention.energy]

    def _fused_loop(self, ahead: Tensor, state: RNNState) -> tuple[Tensor, Tensor]:
        """:func:`~.rnn_loop.bahdanau_gru_loop`; features ``[s_t; c_t]`` ``(B, T, 2H)``."""
        score, rnn = self.attention, self.rnn
        hiddens, contexts, weights = bahdanau_gru_loop(
            ahead, state.hidden[:, 0], state.keys, state.memory, state.src_mask,
            score.query_proj.weight, score.energy.weight, rnn.step_proj.weight,
            rnn.hidden_projs[0].weight, rnn.hidden_projs[0].bias,
        )  # fmt: skip
        return torch.cat([hiddens, contexts], dim=-1), weights

    def _readout(self, features: Tensor, embedded: Tensor) -> Tensor:
        """``tanh(W_o [s_t; c_t; E y_{t-1}])`` with dropout, ``(..., H)``."""
        return self.dropout(torch.tanh(self.readout(torch.cat([features, embedded], dim=-1))))


class LuongDecoder(AttentionDecoder):
    """Luong et al. (2015): RNN step on ``[E y_{t-1}; h~_{t-1}]`` (input feeding), attend from
    ``h_t``, attentional state ``h~_t = tanh(W_c [c_t; h_t])``."""

    def __init__(self, section: RNNConfig, dropout: float, embed: Embeddings) -> None:
        super().__init__(section, dropout, embed, section.luong_score, section.hidden_size)
        self.combine = nn.Linear(2 * section.hidden_size, section.hidden_size, bias=False)

    def init_state(self, encoder_output: EncoderOutput) -> RNNState:
        """The bridged state, with a zero input-feeding vector ``h~_0``."""
        state = super().init_state(encoder_output)
        return replace(state, feed=state.hidden.new_zeros(state.hidden[:, -1].shape))

    def _step(self, ahead_gates: Tensor, state: RNNState) -> tuple[Tensor, RNNState, Tensor]:
        """RNN step, then attention; features ``h~_t`` ``(B, H)``."""
        hidden, cell = self.rnn(ahead_gates, state.feed, state.hidden, state.cell)
        context, weights = self.attend(hidden[:, -1], state)  # from h_t
        attentional = torch.tanh(self.combine(torch.cat([context, hidden[:, -1]], dim=-1)))
        return attentional, replace(state, hidden=hidden, cell=cell, feed=attentional), weights

    def _fused_linears(self) -> list[nn.Module] | None:
        """The combination layer, for a dot or general score (an additive one is not fused)."""
        return None if isinstance(self.attention, AdditiveScore) else [self.combine]

    def _fused_loop(self, ahead: Tensor, state: RNNState) -> tuple[Tensor, Tensor]:
        """:func:`~.rnn_loop.luong_gru_loop`; features ``h~_t`` ``(B, T, H)``."""
        rnn = self.rnn
        return luong_gru_loop(
            ahead, state.hidden[:, 0], state.keys, state.memory, state.src_mask,
            rnn.step_proj.weight, rnn.hidden_projs[0].weight, rnn.hidden_projs[0].bias,
            self.combine.weight,
        )  # fmt: skip

    def _readout(self, features: Tensor, embedded: Tensor) -> Tensor:
        """``h~_t`` with dropout, ``(..., H)``."""
        return self.dropout(features)


def weights_of(module: nn.Module | None) -> int:
    """Multiply-adds per row of input of ``module`` if it is an ``nn.Linear`` (its weight's
    size), else 0."""
    return module.weight.numel() if isinstance(module, nn.Linear) else 0


class RNNSeq2Seq(Seq2Seq):
    """Bi-GRU/LSTM encoder and a Bahdanau or Luong attentional decoder.

    Built from the ``model`` section: its ``rnn`` sub-section and the shared ``dropout`` (the
    ``family`` key is :func:`build_model`'s business; ``max_positions`` binds Transformers only).
    """

    def __init__(
        self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint: bool
    ) -> None:
        super().__init__()
        self.config = config
        section, dropout = config.rnn, config.dropout
        tgt_embed = Embeddings(tgt_vocab_size, section.embedding_size)
        src_embed = tgt_embed if joint else Embeddings(src_vocab_size, section.embedding_size)
        self.encoder = RNNEncoder(section, dropout, src_embed)
        decoder_class = LuongDecoder if section.decoder == "luong" else BahdanauDecoder
        self.decoder = decoder_class(section, dropout, tgt_embed)
        self.output = nn.Linear(section.hidden_size, tgt_vocab_size)

    def encode(self, src: Tensor, src_mask: Tensor) -> EncoderOutput:
        """``src`` ``(B, S)`` -> states ``(B, S, H)`` and the final states."""
        return self.encoder(src, src_mask)

    def init_state(self, encoder_output: EncoderOutput, beams: int = 1) -> RNNState:
        """Bridged first decoder state and the projected keys, ``beams`` rows per sentence."""
        if beams > 1:
            encoder_output = encoder_output.repeat_interleave(beams)
        return self.decoder.init_state(encoder_output)

    def decode_step(
        self, prev_tokens: Tensor, state: RNNState, need_attention: bool = False
    ) -> tuple[Tensor, RNNState, Tensor]:
        """One step; see :meth:`Seq2Seq.decode_step`. Attention ``(B, S)`` (computed anyway:
        the decoder needs it)."""
        outputs, state, weights = self.decoder.step(prev_tokens, state)
        return self.output(outputs), state, weights

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` (the decoder loops over time)."""
        outputs, _ = self.decoder(tgt_in, self.init_state(self.encode(src, src_mask)))
        return self.output(outputs)

    def linear_flops_per_token(self) -> tuple[int, int]:
        """Forward FLOPs of the products with weight matrices per source token (the encoder
        RNN, the attention's key projection) and per target token (the decoder RNN, an additive
        score's query projection, Bahdanau's readout or Luong's combination, the output
        projection). Left out: the bridge (once per sentence) and the attention's products with
        the source states (``v^T tanh(..)``, dot products, weighted sums), which grow with the
        source length. A training step costs about three times the forward pass."""
        attention, decoder = self.decoder.attention, self.decoder
        per_source = sum(
            weight.numel()
            for name, weight in self.encoder.rnn.named_parameters()
            if name.startswith("weight_")
        )  # fmt: skip
        per_source += weights_of(getattr(attention, "key_proj", None))
        per_target = sum(weights_of(module) for module in decoder.rnn.modules())
        per_target += weights_of(getattr(attention, "query_proj", None))
        per_target += sum(
            weights_of(module) for module in decoder.children() if module is not decoder.bridge
        )  # fmt: skip
        per_target += weights_of(self.output)
        return 2 * per_source, 2 * per_target

    def attention_maps(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced attention weights ``(B, 1, 1, T, S)``."""
        _, weights = self.decoder(tgt_in, self.init_state(self.encode(src, src_mask)))
        return weights[:, None, None]
