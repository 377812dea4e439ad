"""The int8 sampling path (steppers.Int8Stepper): close to the fp32 step, deterministic, the same
arithmetic whatever the batch's other rows, and a perplexity within a hair of fp32's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import runner

from poetgen.cli import app
from poetgen.model import LanguageModel, ModelConfig
from poetgen.steppers import Int8LanguageModel, Int8Stepper, Stepper, int8_available

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no fbgemm int8 kernels")


def _model(emb: int = 24, hidden: int = 48) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=60, emb_size=emb, hidden_size=hidden, num_layers=2))
    with torch.no_grad():  # weights of a trained model's scale, not the near-zero init
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("emb,hidden", [(24, 48), (48, 48)])  # with and without the projection
def test_int8_step_is_close_to_the_fp32_step_for_many_steps(emb, hidden):
    model = _model(emb, hidden)
    fp32, int8 = Stepper(model), Int8Stepper(model)
    ids = torch.randint(4, 60, (3, 30))
    _, s32 = fp32.prefill(ids[:, :1])
    _, s8 = int8.prefill(ids[:, :1])
    worst = 0.0
    for t in range(1, ids.size(1)):
        a, s32 = fp32.step(ids[:, t], s32)
        b, s8 = int8.step(ids[:, t], s8)
        worst = max(worst, float((a.log_softmax(-1) - b.log_softmax(-1)).abs().max()))
    assert 0 < worst < 0.15  # quantized (not the fp32 numbers), and close after 30 steps of carried state


def test_int8_step_is_deterministic_and_a_row_does_not_depend_on_the_others():
    """Bit for bit: a row's logits and state are the same alone, among 40 others of any values, in any
    order (dynamic quantization's one scale per batch broke this: a poem changed with --num)."""
    model = _model()
    int8 = Int8Stepper(model)
    torch.manual_seed(1)
    ids = torch.randint(4, 60, (40,))
    state = [(torch.rand(40, 48) * 2 - 1, torch.randn(40, 48)) for _ in range(2)]
    state[0][0][7] *= 0.01  # rows of very different scales side by side
    a, sa = int8.step(ids, state)
    b, _ = Int8Stepper(model).step(ids, state)
    assert torch.equal(a, b)
    for rows in ([7], [7, 3], list(range(39, -1, -1))):
        pick = torch.tensor(rows)
        c, sc = int8.step(ids[pick], [(h[pick], cs[pick]) for h, cs in state])
        assert torch.equal(c, a[pick]) and all(torch.equal(x[0], y[0][pick]) for x, y in zip(sc, sa, strict=True))


def test_the_input_table_is_filled_once_per_character_with_the_first_layer_input():
    model = _model()
    int8 = Int8Stepper(model)
    int8.step(torch.tensor([5, 7, 5]), int8.zero_state(3))
    assert int8.filled.nonzero().flatten().tolist() == [5, 7]
    row7 = int8.table0[7].clone()
    int8.step(torch.tensor([9, 7]), int8.zero_state(2))
    assert torch.equal(int8.table0[7], row7)  # filled once: whatever is filled beside it later
    fresh = Int8Stepper(model)
    fresh.step(torch.tensor([7]), fresh.zero_state(1))
    assert torch.equal(fresh.table0[7], row7)  # and the same alone as among others
    rnn = model.rnn
    with torch.no_grad():
        exact = model.embed.weight[7] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0
    H = model.config.hidden_size
    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    assert torch.allclose(row7, exact[order], atol=0.02 * float(exact.abs().max()))  # int8: close, not exact


def test_int8_language_model_carries_state_like_the_module_and_keeps_the_loss():
    model = _model()
    q = Int8LanguageModel(model)
    x = torch.randint(4, 60, (2, 40))
    whole, _ = q(x)
    first, state = q(x[:, :25])
    second, _ = q(x[:, 25:], state)
    assert torch.equal(whole, torch.cat([first, second], 1))
    with torch.no_grad():
        ref, _ = model(x)
    loss = lambda logits: float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 60), x[:, 1:].reshape(-1)))  # noqa: E731
    assert math.isclose(loss(whole), loss(ref), rel_tol=0.01)


def test_sample_int8_through_the_cli_is_repeatable_and_keeps_the_form(tiny_checkpoint):
    args = ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "4", "--num", "2"]  # int8 by default
    first, again = runner.invoke(app, args), runner.invoke(app, args)
    full = runner.invoke(app, [*args, "--fp32"])
    assert first.exit_code == 0 and full.exit_code == 0, first.output + full.output
    assert first.stdout == again.stdout
    bodies = [p for p in first.stdout.split("\n\n") if p.strip()]
    assert len(bodies) == 2
    assert all(len([line for line in p.splitlines() if not line.startswith("《")]) == 4 for p in bodies)


def test_eval_int8_through_the_cli_is_close_to_fp32(tiny_checkpoint, tmp_path):
    poems = tmp_path / "poems.txt"
    text = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "1",
                               "--num", "3", "--format", "jsonl"]).stdout
    poems.write_text("\n".join(json.loads(line)["text"] for line in text.splitlines()) + "\n", encoding="utf-8")
    runs = {}
    for flag in ([], ["--int8"]):
        r = runner.invoke(app, ["eval", "-c", str(tiny_checkpoint), "--file", str(poems), "--json", "-q", *flag])
        assert r.exit_code == 0, r.output
        runs[bool(flag)] = json.loads(r.stdout)
    assert runs[True]["path"] == "int8" and runs[False]["path"] == "fp32"
    assert math.isclose(runs[True]["body"]["perplexity"], runs[False]["body"]["perplexity"], rel_tol=0.05)
