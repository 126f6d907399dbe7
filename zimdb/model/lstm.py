"""SentimentLSTM and the config it is built from: the one module that knows the network.

The rest of the project sees `Logits`: each review's verdict, and the verdict had the review
ended at each of its words. Every configuration gives both: the LSTM reads forwards only and
every pooling reads the states up to a word, so the logit at word t has seen words 1..t alone.
A new pooling is a value of `train.pooling` (zimdb/params.py) and a branch of `features` here.
"""

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zimdb.params import Train

# Time steps per checkpointed chunk: at max_len 250, about a tenth of the activations is alive
# at once in backward, for one extra forward pass.
CHECKPOINT_STEPS = 25


class Logits(NamedTuple):
    verdict: torch.Tensor  # [batch]: each review's logit, read at its last real token
    every: torch.Tensor  # [batch, time]: the logit had the review ended at each position


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a SentimentLSTM; model.pt stores it to rebuild the model.

    No defaults: params.yaml's train section is the one place they are set (from_params).
    """

    vocab_size: int
    embedding_dim: int
    hidden_dim: int
    num_layers: int
    pooling: str  # last or concat (train.pooling)
    dropout: float
    word_dropout: float
    forget_bias: float  # shapes the initial weights only

    @classmethod
    def from_params(cls, p: Train, vocab_size: int) -> "ModelConfig":
        """The config of train params `p`, each field taken from the key of its name."""
        shape = {f.name: getattr(p, f.name) for f in fields(cls) if f.name != "vocab_size"}
        return cls(vocab_size=vocab_size, **shape)


class SentimentLSTM(nn.Module):
    """Embedding -> LSTM -> one logit, read at each review's last real token.

    With pooling "last" and one layer this is the original architecture; "concat" reads beside
    the last state the maximum and mean of the states up to it.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        # A forget gate that starts near sigmoid(0) = 0.5 halves the state at every step, so
        # early in training nothing from the start of a review reaches its last token. Shifting
        # its bias up (Jozefowicz et al., 2015) keeps the state by default. An addition to
        # PyTorch's init, not a replacement: 0 leaves the weights exactly as they were.
        with torch.no_grad():
            hidden = config.hidden_dim
            for layer in range(config.num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[hidden : 2 * hidden] += config.forget_bias
        self.dropout = Dropout(config.dropout)
        # Zeroes whole word vectors ([batch, time, dim] read as Dropout1d's [N, C, L]), so the
        # model learns to judge a review with some of its words missing ("word dropout", Iyyer et
        # al., 2015) rather than with a little noise on each.
        self.word_dropout = nn.Dropout1d(config.word_dropout)
        width = 3 if config.pooling == "concat" else 1  # see features()
        self.head = nn.Linear(config.hidden_dim * width, 1)
        self.grad_checkpointing = False

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> Logits:
        """Logits for token ids [batch, time] with `lengths` (>= 1) real tokens per row: an empty
        review is encoded as one PAD (zimdb.data.encoding)."""
        features = self.features(self.states(ids))
        last = features[torch.arange(len(ids), device=ids.device), lengths - 1]
        # Dropout before the head on the verdict only, as every run in docs/experiments.md
        # trained it; the loss at every position reads the features undropped.
        return Logits(self.head(self.dropout(last)).squeeze(-1), self.head(features).squeeze(-1))

    def states(self, ids: torch.Tensor) -> torch.Tensor:
        """The LSTM's outputs [batch, time, hidden_dim] at every position."""
        x = self.dropout(self.word_dropout(self.embedding(ids)))
        chunk = CHECKPOINT_STEPS if self.grad_checkpointing and self.training else 0
        return run_lstm(self.lstm, x, chunk)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """What the head reads at each position t of states `h` [batch, time, dim]: the state,
        and with pooling "concat" beside it the maximum and the mean of the states up to t.

        That is ULMFiT's concat pooling (Howard and Ruder, 2018) taken at every position, so the
        verdict at t still reads words 1..t only. The scans run with time as the last,
        contiguous axis: on a CPU the scans alone run 4x faster there (the running max of
        [64, 250, 256] bf16 states: 6.2 ms against 26.7 on a 2-core AMD EPYC). These features
        lie outside the checkpointed LSTM chunks: with concat, backward keeps [batch, time,
        3 x dim] of them and the max's int64 indices."""
        if self.config.pooling == "last":
            return h
        along = h.transpose(1, 2).contiguous()  # [batch, dim, time]
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=torch.float32)
        mean = along.cumsum(dim=-1) / steps
        features = [along, along.cummax(dim=-1).values, mean.to(h.dtype)]
        return torch.cat(features, dim=1).transpose(1, 2)

    def flops_per_token(self) -> int:
        """Multiply-adds x2 of one token's forward pass through the LSTM's matrices (the rest is
        negligible beside them)."""
        return 2 * sum(w.numel() for n, w in self.lstm.named_parameters() if n.startswith("weight"))


class Dropout(nn.Dropout):
    """nn.Dropout, with a CPU's masks cut from random 64-bit words, four 16-bit draws each.

    torch draws one random number per element (serially on an AMD CPU, where it skips MKL),
    which made the embeddings' mask a tenth of a training step: [64, 230, 128] took 36-39 ms on
    an Intel Xeon, 8-11 ms so. The rate is p rounded to 1/65536, and the survivors are scaled by
    its exact inverse, so the expectation is unchanged. The words come from torch's generator,
    which a resumed run restores. GPUs keep torch's own fused dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p or x.device.type != "cpu":
            return super().forward(x)
        drop = round(self.p * 65536)  # of the 65536 values an int16 takes: the lowest `drop`
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= drop - 32768
        return x * keep * (65536 / (65536 - drop))


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """`lstm` over x; with `chunk`, a checkpointed run per `chunk` steps, (h, c) carried over.

    Checkpointing the whole sequence stores almost nothing in forward but recomputes all of it
    at once in backward, so the peak stays where it was. Chunks of the time axis are recomputed
    one at a time: only one chunk's activations are alive at once.
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
