"""SentimentLSTM and the config it is built from."""

from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zimdb.params import Train

# Time steps per checkpointed chunk: at max_len 250, about a tenth of a layer's activations is
# alive at once in backward, for one extra forward pass.
CHECKPOINT_STEPS = 25


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a SentimentLSTM; model.pt stores it to rebuild the model.

    No defaults: params.yaml's train section is the one place they are set (from_params).
    """

    vocab_size: int
    embedding_dim: int
    hidden_dim: int
    num_layers: int
    bidirectional: bool
    pooling: str  # last, max or concat (train.pooling)
    dropout: float
    word_dropout: float
    forget_bias: float  # shapes the initial weights only

    @classmethod
    def from_params(cls, p: Train, vocab_size: int) -> "ModelConfig":
        """The config of train params `p`, each field taken from the key of its name."""
        shape = {f.name: getattr(p, f.name) for f in fields(cls) if f.name != "vocab_size"}
        return cls(vocab_size=vocab_size, **shape)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` steps in reverse order, padding left in place."""
    steps = torch.arange(x.shape[1], device=x.device)
    idx = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return x.gather(1, idx[:, :, None].expand_as(x)) if x.dim() == 3 else x.gather(1, idx)


class LSTMLayer(nn.Module):
    """One LSTM layer over right-padded batches whose outputs never see the padding.

    The forward direction is causal, so its state at a review's last real token ignores what
    follows. A backward direction would read the padding first; it runs instead on each review
    reversed within its own length, which is exact without pack_padded_sequence (13x slower
    on CPU).
    """

    def __init__(self, input_dim: int, hidden_dim: int, bidirectional: bool, forget_bias: float):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.backward_lstm = (
            nn.LSTM(input_dim, hidden_dim, batch_first=True) if bidirectional else None
        )
        # A forget gate that starts near sigmoid(0) = 0.5 halves the state at every step, so
        # early in training nothing from the start of a review reaches its last token. Shifting
        # its bias up (Jozefowicz et al., 2015) keeps the state by default. An addition to
        # PyTorch's init, not a replacement: 0 leaves the weights exactly as they were.
        with torch.no_grad():
            for lstm in (self.forward_lstm, self.backward_lstm):
                if lstm is not None:
                    lstm.bias_ih_l0[hidden_dim : 2 * hidden_dim] += forget_bias  # gates i, f, g, o

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Outputs at every position; `chunk` > 0 checkpoints every `chunk` time steps."""
        out = run_lstm(self.forward_lstm, x, chunk)
        if self.backward_lstm is None:
            return out
        back = run_lstm(self.backward_lstm, reverse_within_length(x, lengths), chunk)
        return torch.cat([out, reverse_within_length(back, lengths)], dim=-1)


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """`lstm` over x; with `chunk`, a checkpointed run per `chunk` steps, (h, c) carried over.

    Checkpointing the whole layer stores almost nothing in forward but recomputes all of it at
    once in backward, so the peak stays where it was. Chunks of the time axis are recomputed one
    at a time: only one chunk's activations are alive at once.
    """
    if not chunk:
        return call_lstm(lstm, x)[0]
    outs, state = [], None
    for piece in x.split(chunk, dim=1):
        out, state = checkpoint(call_lstm, lstm, piece, state, use_reentrant=False)
        outs.append(out)
    return torch.cat(outs, dim=1)


def call_lstm(lstm: nn.LSTM, x: torch.Tensor, state=None):
    """`lstm(x, state)`, or under CPU bf16 autocast where oneDNN has no bf16 LSTM (a CPU without
    AVX-512), aten's own LSTM on bf16 weights: oneDNN would refuse the call ("could not create a
    primitive descriptor"), and autocast would leave aten's LSTM in fp32. Correct, and slow."""
    emulate = (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if not emulate:
        return lstm(x, state)
    weights = {name: w.to(torch.bfloat16) for name, w in lstm.named_parameters()}
    state = state and tuple(s.to(torch.bfloat16) for s in state)
    off = {"enabled": False, "deterministic": None, "allow_tf32": None, "fp32_precision": None}
    with torch.backends.mkldnn.flags(**off):
        return torch.func.functional_call(lstm, weights, (x.to(torch.bfloat16), state))


class SentimentLSTM(nn.Module):
    """Embedding -> LSTM layer(s) -> one logit, read at each review's last real token.

    With pooling "last", one layer and one direction this is the original architecture;
    "concat" reads beside the last state the maximum and mean of the states up to it, "max"
    the maximum over the real tokens alone.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dirs = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.layers = nn.ModuleList(
            LSTMLayer(
                config.embedding_dim if i == 0 else config.hidden_dim * dirs,
                config.hidden_dim,
                config.bidirectional,
                config.forget_bias,
            )
            for i in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        # Zeroes whole word vectors ([batch, time, dim] read as Dropout1d's [N, C, L]), so the
        # model learns to judge a review with some of its words missing ("word dropout", Iyyer et
        # al., 2015) rather than with a little noise on each.
        self.word_dropout = nn.Dropout1d(config.word_dropout)
        if config.pooling == "concat" and config.bidirectional:
            raise ValueError("concat pooling reads the states up to each word: one direction only")
        features = 3 if config.pooling == "concat" else dirs  # see running() and forward()
        self.head = nn.Linear(config.hidden_dim * features, 1)
        self.grad_checkpointing = False

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, every_position: bool = False):
        """Logits [batch] for token ids [batch, time] with `lengths` real tokens per row; with
        `every_position`, also the head's logit at every position [batch, time]: the verdict
        had the review ended there (for one direction pooling "last" or "concat")."""
        lengths = lengths.clamp(min=1)  # an empty review is read as its single PAD
        h = self.states(ids, lengths)
        features = self.running(h)
        if self.config.pooling == "max":
            real = torch.arange(h.shape[1], device=h.device) < lengths[:, None]
            pooled = h.masked_fill(~real[:, :, None], float("-inf")).amax(dim=1)
        else:
            pooled = features[torch.arange(h.shape[0], device=h.device), lengths - 1]
            if self.config.bidirectional:
                # The backward direction has read the whole review when it reaches position 0.
                hidden = self.config.hidden_dim
                pooled = torch.cat([pooled[:, :hidden], h[:, 0, hidden:]], dim=-1)
        logits = self.head(self.dropout(pooled)).squeeze(-1)
        if not every_position:
            return logits
        return logits, self.head(features).squeeze(-1)

    def running(self, h: torch.Tensor) -> torch.Tensor:
        """What the head reads at each position t of states `h` [batch, time, dim]: the state,
        and with pooling "concat" beside it the maximum and the mean of the states up to t.

        That is ULMFiT's concat pooling (Howard and Ruder, 2018) taken at every position, so
        the verdict at t still reads words 1..t only, as the loss at every position and the
        page's running verdict need. The scans run with time as the last, contiguous axis: on
        a CPU the scans alone run 4x faster there (the running max of [64, 250, 256] bf16
        states: 6.2 ms against 26.7 on a 2-core AMD EPYC). These features lie outside the
        checkpointed LSTM chunks: with concat, backward keeps [batch, time, 3 x dim] of them
        and the max's int64 indices."""
        if self.config.pooling != "concat":
            return h
        along = h.transpose(1, 2).contiguous()  # [batch, dim, time]
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=torch.float32)
        mean = along.cumsum(dim=-1) / steps
        features = [along, along.cummax(dim=-1).values, mean.to(h.dtype)]
        return torch.cat(features, dim=1).transpose(1, 2)

    def states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The last layer's outputs [batch, time, directions x hidden_dim] at every position."""
        h = self.word_dropout(self.embedding(ids))
        for layer in self.layers:
            h = self.dropout(h)
            h = layer(
                h, lengths, CHECKPOINT_STEPS if self.grad_checkpointing and self.training else 0
            )
        return h

    def flops_per_token(self) -> int:
        """Multiply-adds x2 of one token's forward pass through the LSTM layers (the rest is
        negligible beside them)."""
        dirs = 2 if self.config.bidirectional else 1
        total = 0
        for layer in self.layers:
            lstm = layer.forward_lstm
            total += dirs * 2 * 4 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size)
        return total
