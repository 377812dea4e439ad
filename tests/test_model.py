"""The language model itself (poetgen.model): the recurrence over windows and the batches it reads,
tied weights, dropout and the AWD-LSTM regularizers, weight shapes, bf16 autocast and the sampled softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import SMALL

from poetgen.data import batchify, get_batch, num_windows
from poetgen.errors import UsageError
from poetgen.model import LanguageModel, ModelConfig, NegativeSampler
from poetgen.vocab import Vocab


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_loss_with_carried_state_equals_whole_sequence(cell):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=50, cell=cell, **SMALL)).eval()
    seq = torch.randint(0, 50, (3, 241))
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
        whole = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), seq[:, 1:].reshape(-1), reduction="sum")
        total, state = 0.0, None
        for i in range(num_windows(seq, 37)):
            x, y = get_batch(seq, i, 37)
            out, state = model(x, state)
            total += torch.nn.functional.cross_entropy(out.reshape(-1, 50), y.reshape(-1), reduction="sum").item()
    assert total == pytest.approx(whole.item(), rel=1e-5)


def test_batchify_rows_are_contiguous():
    data = np.arange(103)
    b = batchify(data, 4)
    assert b.shape == (4, 25)
    assert b[1, 0].item() == 25 and b[3, -1].item() == 99
    x, y = get_batch(b, num_windows(b, 10) - 1, 10)
    assert torch.equal(y, x + 1) and x.shape[1] == 4  # the last window is shorter


def test_weight_tying_shares_one_matrix_and_projection_when_sizes_differ():
    tied = LanguageModel(ModelConfig(vocab_size=30, emb_size=16, hidden_size=32))
    assert tied.head.weight is tied.embed.weight and tied.proj is not None
    same = LanguageModel(ModelConfig(vocab_size=30, emb_size=32, hidden_size=32))
    assert same.proj is None
    untied = LanguageModel(ModelConfig(vocab_size=30, emb_size=16, hidden_size=32, tie_weights=False))
    assert untied.head.weight is not untied.embed.weight


def test_dropout_only_in_training_mode():
    model = LanguageModel(ModelConfig(vocab_size=30, **SMALL))
    x = torch.randint(0, 30, (2, 10))
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(num_layers=-1), dict(dropout=1.0), dict(cell="lstmx")])
def test_impossible_model_shapes_are_refused(bad):
    with pytest.raises(UsageError):
        ModelConfig(vocab_size=10, **bad).validate()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("emb", "hidden", "tie"), [(24, 32, True), (32, 32, True), (24, 32, False)])
def test_weight_shapes_are_the_modules_own(cell, emb, hidden, tie):
    config = ModelConfig(vocab_size=40, emb_size=emb, hidden_size=hidden, num_layers=3, cell=cell, tie_weights=tie)
    real = {k: tuple(v.shape) for k, v in LanguageModel(config).state_dict().items()}
    assert LanguageModel.weight_shapes(config) == real


def test_bf16_autocast_on_a_cpu_without_a_bf16_lstm_runs_the_recurrence_in_fp32(monkeypatch):
    import poetgen.model

    model = LanguageModel(ModelConfig(10, **SMALL)).train()
    x = torch.randint(0, 10, (2, 5))
    monkeypatch.setattr(poetgen.model, "cpu_lstm_has_bf16", lambda: False)
    seen = []
    model.rnn.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (h, c) = model(x)
    assert seen == [(torch.float32, torch.float32)] and h.dtype == torch.float32
    assert logits.dtype == torch.bfloat16  # the output layer still in bf16
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


def test_negative_sampler_keeps_every_target_and_corrects_only_the_negatives():
    torch.manual_seed(0)
    counts = torch.randint(0, 1000, (60,))
    sampler = NegativeSampler(counts, 25)
    targets = torch.tensor([3, 3, 7, 11, 59, 0])
    columns, correction, index = sampler.draw(targets)
    assert torch.equal(columns, torch.unique(columns)) and len(columns) > len(set(targets.tolist()))
    assert torch.equal(columns[index], targets)
    is_target = torch.isin(columns, targets)
    assert torch.all(correction[is_target] == 0) and torch.all(correction[~is_target] < 0)
    # a negative's correction is log(1 - (1 - q)^k), q from the counts + 1 to the power 0.75
    q = (counts.double() + 1) ** 0.75
    q /= q.sum()
    expected = torch.log(1 - (1 - q[columns[~is_target]]) ** 25)
    assert torch.allclose(correction[~is_target].double(), expected, atol=1e-5)


def test_sampled_softmax_over_every_column_is_the_full_softmax(prepared):
    """When the draws hold the whole vocabulary, each column is certain to be in the set: no
    correction, and the loss and its gradients are the full softmax's."""
    vocab = Vocab.load(prepared / "vocab.json")
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(len(vocab), **{**SMALL, "dropout": 0.0, "emb_dropout": 0.0})).train()
    x = torch.randint(0, len(vocab), (4, 12))
    y = torch.randint(0, len(vocab), (4, 12))
    full, _ = model.loss(x, y)
    full.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    sampled, _ = model.loss(x, y, negatives=NegativeSampler(torch.ones(len(vocab)), 200_000))
    sampled.backward()
    assert sampled.item() == pytest.approx(full.item(), abs=1e-5)
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[k], atol=1e-6), k
    # with few negatives the set is smaller than the vocabulary and the loss differs; evaluation ignores it
    small = NegativeSampler(torch.ones(len(vocab)), 3)
    assert len(small.draw(y.reshape(-1))[0]) < len(vocab)
    model.eval()
    assert model.loss(x, y, negatives=small)[0].item() == pytest.approx(full.item(), abs=1e-5)


# --- AWD-LSTM regularizers ------------------------------------------------------------------------

AWD = dict(locked_dropout=True, char_dropout=0.2, weight_drop=0.5, emb_dropout=0.3, dropout=0.4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_locked_layer_by_layer_path_equals_the_module_and_chunks_equal_the_whole(cell):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, cell=cell, **{**SMALL, "num_layers": 3, "emb_dropout": 0.0, "dropout": 0.0})
    model = LanguageModel(config)
    seq = torch.randint(0, 50, (3, 121))
    with torch.no_grad():
        plain, _ = model.eval()(seq)
        config.locked_dropout = True  # rates 0: the layer-by-layer path computes the same function
        model.train()
        whole, _ = model(seq)
        pieces, state = [], None
        for start in range(0, 121, 29):
            out, state = model(seq[:, start:start + 29], state)
            pieces.append(out)
    assert torch.allclose(whole, plain, atol=1e-5)
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-5)


def test_locked_masks_are_constant_across_time_within_a_window():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=40, **{**SMALL, **AWD, "num_layers": 3, "char_dropout": 0.0})).train()
    masks = []
    drop = model._drop

    def spy(x, p):
        y = drop(x, p)
        masks.append((y != 0).float() * (x != 0).float())
        return y

    model._drop = spy
    model(torch.randint(0, 40, (4, 25)))
    assert len(masks) == 4  # embeddings, two between layers, the output
    for m in masks:
        assert torch.equal(m, m[:, :1].expand_as(m))  # every step of a row has its first step's mask
        assert 0 < float(m.mean()) < 1
        assert not torch.equal(m[0], m[1])  # rows differ


def test_char_dropout_drops_every_occurrence_of_a_character():
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(vocab_size=12, **{**SMALL, **AWD})).train()
    x = torch.randint(0, 12, (6, 30))
    zero = (model._embed(x) == 0).all(-1)
    for ch in range(12):
        at = zero[x == ch]
        assert bool(at.all()) or not bool(at.any())  # all occurrences dropped, or none
    assert 0 < float(zero.float().mean()) < 1
    model.eval()
    assert not bool((model._embed(x) == 0).all(-1).any())


def test_regularized_model_evaluates_deterministically_and_trains_its_raw_weights():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=30, **{**SMALL, **AWD}))
    x = torch.randint(0, 30, (3, 20))
    model.eval()
    a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)
    plain = LanguageModel(ModelConfig(vocab_size=30, **SMALL))
    plain.load_state_dict(model.state_dict())  # the same keys: the regularizers add no weights
    assert torch.allclose(plain.eval()(x)[0], a, atol=1e-6)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    loss, _ = model.loss(x, x)
    loss.backward()
    assert float(model.rnn.weight_hh_l0.grad.abs().sum()) > 0


def test_fast_step_matches_a_regularized_model_at_inference():
    from poetgen.steppers import Stepper

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=30, **{**SMALL, **AWD}))
    ids = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        full, _ = model.eval()(ids)
    stepper = Stepper(model)
    logits, state = stepper.prefill(ids[:, :1])
    for t in range(1, 7):
        logits, state = stepper.step(ids[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-5)
