"""The model reads each review up to its last real token, and the training arithmetic is exact."""

from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import encoded_records, model_config
from zimdb.data import text
from zimdb.data.encoding import Encoding
from zimdb.errors import PipelineError
from zimdb.model.batches import Encoded, batch_indices
from zimdb.model.file import ModelFile
from zimdb.model.lstm import SentimentLSTM
from zimdb.scoring.lstm import LSTMScorer
from zimdb.training.step import Stepper

ARCHITECTURES = [
    dict(),  # the original: one layer, last real token
    dict(num_layers=2),
    dict(num_layers=2, pooling="concat"),  # the last state, and the max and mean up to it
]


def accumulate(model, window):
    """Stepper.backward as the train stage runs it on CPU: fp32, no scaling."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return Stepper(model, optimizer, scheduler, scaler, nullcontext(), 0.0).backward(window)


def make_model(**kw) -> SentimentLSTM:
    """A small model in float64 without dropout, and with PyTorch's own init unless kw say
    otherwise: exact comparisons of outputs and gradients."""
    torch.manual_seed(0)
    shape = {"embedding_dim": 8, "hidden_dim": 6, "dropout": 0.0, "word_dropout": 0.0}
    shape |= {"forget_bias": 0.0} | kw
    return SentimentLSTM(model_config(50, **shape)).double()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_ignore_everything_after_the_last_real_token(arch):
    model = make_model(**arch).eval()
    torch.manual_seed(1)
    lengths = torch.tensor([3, 7, 1, 5])
    ids = torch.randint(2, 50, (4, 7))
    real = torch.arange(7) < lengths[:, None]
    padded = torch.where(real, ids, 0)
    garbage = torch.where(real, ids, torch.randint(2, 50, (4, 7)))
    wider = torch.cat([padded, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        reference = model(padded, lengths)
        for other in (model(garbage, lengths), model(wider, lengths)):
            torch.testing.assert_close(other.verdict, reference.verdict)
            torch.testing.assert_close(other.every[:, :7][real], reference.every[real])
        for i in range(4):  # each review alone, cut to its own length
            alone = model(ids[i : i + 1, : lengths[i]], lengths[i : i + 1])
            torch.testing.assert_close(alone.verdict, reference.verdict[i : i + 1])
            torch.testing.assert_close(alone.every[0], reference.every[i, : lengths[i]])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_verdict_at_each_word_is_the_verdict_on_the_words_up_to_it(arch):
    """What the page's running verdict and the loss at every position rely on, for every
    configuration: the logit at word t is the verdict the model gives words 1..t alone."""
    model = make_model(**arch).eval()
    ids, lengths = torch.randint(2, 50, (4, 9)), torch.tensor([9, 3, 1, 6])
    with torch.no_grad():
        out = model(ids, lengths)
        torch.testing.assert_close(out.every[torch.arange(4), lengths - 1], out.verdict)
        for t in range(1, 10):
            prefix = model(ids[:, :t], torch.full((4,), t))
            torch.testing.assert_close(prefix.verdict, out.every[:, t - 1])


def test_an_empty_review_is_read_as_one_pad():
    cleaned = text.clean(pd.Series(["", "<br /> 42 !"]))
    ids, lengths, _ = Encoding(["<pad>", "<unk>", "a"], 5, "tail").encode(cleaned)
    assert ids.tolist() == [[0] * 5] * 2 and lengths.tolist() == [1, 1]
    model = make_model().eval()
    with torch.no_grad():
        out = model(torch.from_numpy(ids[:, :1]), torch.from_numpy(lengths))
    assert torch.isfinite(out.verdict).all() and out.every.shape == (2, 1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forget_bias_shifts_only_the_forget_gates_of_every_lstm(arch):
    base, shifted = make_model(**arch), make_model(**arch, forget_bias=1.5)
    shifted_weights = dict(shifted.named_parameters())
    shifted_biases = 0
    for name, weight in base.named_parameters():
        diff = shifted_weights[name] - weight
        if "bias_ih_l" in name:  # gates stacked i, f, g, o; hidden_dim 6
            expected = torch.zeros_like(weight)
            expected[6:12] = 1.5
            torch.testing.assert_close(diff, expected)
            shifted_biases += 1
        else:  # forget_bias 0 is PyTorch's init: the same random draws, nothing else moved
            assert torch.equal(diff, torch.zeros_like(weight)), name
    assert shifted_biases == arch.get("num_layers", 1)


def test_word_dropout_zeroes_whole_word_vectors_in_training_only():
    model = make_model(word_dropout=0.5)
    ids, lengths = torch.randint(2, 50, (8, 30)), torch.full((8,), 30)
    seen = []  # what the LSTM reads, captured inside the model's own forward
    model.lstm.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    model.train()(ids, lengths)
    vectors = seen[-1]
    dropped = (vectors == 0).all(dim=-1)
    assert 0.3 < dropped.float().mean() < 0.7  # 240 draws at p = 0.5
    torch.testing.assert_close(vectors[~dropped], 2 * model.embedding(ids)[~dropped])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, lengths), make_model().eval()(ids, lengths))


def _data(n: int) -> Encoded:
    return Encoded.from_records(encoded_records(n, 9, 50), torch.device("cpu"))


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("sizes", [[4, 4, 4], [5, 3, 1]])  # equal micro-batches; a short last one
def test_accumulated_micro_batches_give_the_gradients_of_one_batch(arch, sizes):
    data = _data(sum(sizes))
    model = make_model(**arch).train()
    edges = np.cumsum([0, *sizes])
    micro = data.batches([np.arange(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    micro = [(ids, lengths, labels.double()) for ids, lengths, labels in micro]
    loss, correct = accumulate(model, micro)
    accumulated = _grads(model)
    ((ids, lengths, labels),) = data.batches([np.arange(len(data))])
    whole_loss, whole_correct = accumulate(model, [(ids, lengths, labels.double())])
    whole = _grads(model)
    assert accumulated.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], msg=name)
    torch.testing.assert_close(loss, whole_loss)
    assert correct == whole_correct


def test_last_partial_window_is_weighted_by_its_own_size():
    """A window of 2 samples after windows of 8: its gradient is the mean over those 2 alone."""
    data = _data(2)
    model = make_model().train()
    a, b = data.batches([np.array([0]), np.array([1])])
    accumulate(model, [(i, n, y.double()) for i, n, y in (a, b)])
    partial = _grads(model)
    ((ids, lengths, labels),) = data.batches([np.array([0, 1])])
    accumulate(model, [(ids, lengths, labels.double())])
    for name, grad in _grads(model).items():
        torch.testing.assert_close(partial[name], grad, msg=name)


def saved_bytes(model, ids, lengths) -> int:
    """Bytes the forward pass keeps for backward, through the model's own forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, lengths).verdict.sum().backward()
    return total


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpointing_gives_the_gradients_of_no_checkpointing(arch):
    data = _data(8)
    batch = [(ids, n, y.double()) for ids, n, y in data.batches([np.arange(8)])]
    model = make_model(**arch).train()
    accumulate(model, batch)
    plain = _grads(model)
    model.grad_checkpointing = True
    accumulate(model, batch)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, plain[name], msg=name)


def test_checkpointing_keeps_a_fraction_of_the_activations_for_backward():
    model = SentimentLSTM(model_config(50, embedding_dim=16, hidden_dim=64)).train()
    ids, lengths = torch.randint(2, 50, (16, 250)), torch.full((16,), 250)
    plain = saved_bytes(model, ids, lengths)
    model.grad_checkpointing = True
    kept = saved_bytes(model, ids, lengths)
    # Forward keeps only chunk inputs and (h, c) at chunk edges, not 250 steps of gates.
    assert kept < plain / 4, (kept, plain)


def test_bucketed_batches_cover_every_row_once_and_group_lengths():
    lengths = np.random.default_rng(0).integers(1, 250, 1000)
    batches = batch_indices(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 0.6 * 1000 * 250  # far less padding than cutting every row to max_len
    again = batch_indices(lengths, 16, np.random.default_rng(1))
    assert all((x == y).all() for x, y in zip(batches, again, strict=True))


def test_batches_dealt_together_have_about_the_same_width():
    lengths = np.random.default_rng(0).integers(1, 250, 2000)
    for together in (2, 3):
        batches = batch_indices(lengths, 16, np.random.default_rng(1), together)
        assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
        widths = np.array([lengths[b].max() for b in batches])
        steps = widths[: len(widths) - len(widths) % together].reshape(-1, together)
        apart = batch_indices(lengths, 16, np.random.default_rng(1))
        free = np.array([lengths[b].max() for b in apart])[: steps.size].reshape(-1, together)
        # A step waits for its widest batch: dealt together, it waits a tenth as long.
        spread, free_spread = np.ptp(steps, axis=1).mean(), np.ptp(free, axis=1).mean()
        assert spread < free_spread / 5, (spread, free_spread)


VOCAB = ["<pad>", "<unk>"] + [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(48)]


def test_saved_model_rebuilds_with_the_same_outputs_and_settings(tmp_path):
    model = make_model(num_layers=2, pooling="concat").float().eval()
    ModelFile(model, Encoding(VOCAB, 7, "head"), "bf16").save(tmp_path / "m.pt")
    loaded = ModelFile.load(tmp_path / "m.pt")
    assert (loaded.encoding, loaded.precision) == (Encoding(VOCAB, 7, "head"), "bf16")
    assert loaded.model.config == model.config
    ids, lengths = torch.randint(2, 50, (3, 5)), torch.tensor([5, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids, lengths), model(ids, lengths))


def test_model_file_alone_scores_raw_text_with_its_own_vocab_and_max_len(tmp_path):
    ModelFile(make_model().float(), Encoding(VOCAB, 3, "head"), "fp32").save(tmp_path / "m.pt")
    trained = LSTMScorer.load(tmp_path / "m.pt")
    encoded = trained.encode(pd.Series(["waa <b>WAB</b> nope wac wad", ""]))
    assert encoded.ids.tolist() == [[2, 3, 1], [0, 0, 0]]  # cut to 3, unknown -> 1, tags gone
    assert encoded.lengths.tolist() == [3, 1]  # the empty review: one PAD
    ids, lengths, _ = encoded.batch(np.arange(len(encoded)))
    direct = trained.file.model(ids, lengths).verdict
    direct = torch.sigmoid(direct).detach().numpy()
    np.testing.assert_allclose(
        trained.probabilities(pd.Series(["waa wab nope wac wad", ""])), direct
    )


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    file = ModelFile(make_model(), Encoding(VOCAB, 7, "tail"), "fp32")
    file.save(tmp_path / "a.pt")
    file.save(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_a_model_file_without_its_encoding_is_named(tmp_path):
    model = make_model()
    torch.save(
        {"config": vars(model.config), "state_dict": model.state_dict()}, tmp_path / "old.pt"
    )
    with pytest.raises(
        PipelineError, match=r"old.pt: cannot rebuild the model \(KeyError: 'encoding'\)"
    ):
        LSTMScorer.load(tmp_path / "old.pt")


def test_step_clips_the_unscaled_gradients_and_advances_the_schedule():
    data = _data(8)
    model = make_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    stepper = Stepper(model, optimizer, schedule, scaler, nullcontext(), 1e-3)
    before = torch.cat([w.detach().flatten().clone() for w in model.parameters()])
    window = [(ids, n, y.double()) for ids, n, y in data.batches([np.arange(8)])]
    stepper.step(window)
    after = torch.cat([w.detach().flatten() for w in model.parameters()])
    # SGD at lr 1 moves the weights by the clipped gradient: its norm is at most grad_clip.
    assert 0 < torch.linalg.vector_norm(after - before) <= 1e-3 * (1 + 1e-6)
    assert optimizer.param_groups[0]["lr"] == 0.5  # the schedule's second step
    assert all(w.grad is None for w in model.parameters())  # ready for the next window


@pytest.mark.parametrize("pooling", ["last", "concat"])
def test_position_loss_adds_the_label_at_every_real_position(pooling):
    data = _data(6)
    window = [(ids, n, y.double()) for ids, n, y in data.batches([np.arange(6)])]
    ((ids, lengths, labels),) = window
    model = make_model(pooling=pooling).train()
    weight = 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stepper = Stepper(model, optimizer, schedule, scaler, nullcontext(), 0.0, weight)
    loss, _ = stepper.backward(window)
    got = _grads(model)
    # By hand: the last token's loss, plus each review's mean over its real positions of the
    # head's logit on what it reads there.
    out = model(ids, lengths)
    every = model.head(model.features(model.states(ids))).squeeze(-1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    by_hand = bce(out.verdict, labels, reduction="sum")
    for row in range(len(ids)):
        n = int(lengths[row])
        each = bce(every[row, :n], labels[row].expand(n), reduction="none")
        by_hand = by_hand + weight * each.mean()
    (by_hand / len(ids)).backward()
    expected = _grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    # The loss reported (train/loss) stays the verdict's, comparable with runs without it.
    torch.testing.assert_close(loss, bce(out.verdict, labels, reduction="sum").detach().float())


def test_concat_pooling_reads_the_state_and_the_max_and_mean_of_the_states_so_far():
    model = make_model(pooling="concat").eval()
    ids, lengths = torch.randint(2, 50, (3, 9)), torch.tensor([9, 4, 1])
    with torch.no_grad():
        h = model.states(ids)
        verdict = model(ids, lengths).verdict
    for row, n in enumerate(lengths.tolist()):
        seen = h[row, :n]
        features = torch.cat([seen[-1], seen.amax(dim=0), seen.mean(dim=0)])
        torch.testing.assert_close(verdict[row], model.head(features)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_drops_at_its_rate_and_keeps_the_expectation(dtype):
    from zimdb.model.lstm import Dropout

    dropout = Dropout(0.3)
    x = torch.ones(64, 230, 128, dtype=dtype, requires_grad=True)
    state = torch.get_rng_state()
    y = dropout(x)
    assert y.dtype == dtype
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.002  # 1.9 million draws
    # Survivors scaled so that the mean is kept: exactly, for p rounded to 1/65536.
    kept = y[~dropped].unique()
    assert kept.numel() == 1 and kept.item() == pytest.approx(1 / (1 - 0.3), rel=1e-3)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # no gradient through a dropped element
    torch.set_rng_state(state)  # what a resumed run restores: the same masks again
    assert torch.equal(dropout(x), y)
    assert torch.equal(dropout.eval()(x), x)
