"""One validation protocol, used to pick best.pt during training and by `poetgen eval`.

The protocol: the split's records form one stream; the model reads it as a single row in windows
of EVAL_BPTT tokens, its state carried across windows and records, so every token after the first
is predicted with everything before it as context (the same number whatever the training batch
shape). Two figures come out of the one pass: over whole records (title, <sep>, body, <eos>), and
over poem text alone (body and <eos>, given the title), the figure the literature reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, corpus
from .config import check_eval_source
from .corpus import load_split
from .data import batchify, body_targets, encode_records, file_records, get_batch, num_windows
from .device import autocast, pick_device
from .errors import CorpusError, UsageError
from .model import LanguageModel
from .steppers import Int8LanguageModel, int8_available
from .text import read_text_file
from .vocab import Vocab

EVAL_BPTT = 256
LN2 = math.log(2)


def metrics_from_loss(nats: float) -> dict:
    """nats/char → {nats_per_char, bits_per_char, perplexity}."""
    return {"nats_per_char": nats, "bits_per_char": nats / LN2, "perplexity": perplexity(nats)}


def perplexity(nats: float) -> float:
    """exp(nats), capped at exp(50) (a diverged run's loss overflows exp; NaN stays NaN)."""
    return math.exp(min(nats, 50.0)) if not math.isnan(nats) else nats




@torch.inference_mode()
def evaluate_stream(model: LanguageModel, stream: np.ndarray, vocab: Vocab, device: torch.device | None = None,
                    precision: str = "auto", progress: Callable[[int, int], None] | None = None) -> dict:
    """Record and body losses of `model` on a token stream under the protocol above.

    Returns {"record": metrics, "body": metrics, "chars": predicted tokens, "body_chars": ...}."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    body = torch.as_tensor(body_targets(stream, vocab))
    batched = batchify(stream, 1).to(device)
    body = body[: batched.size(1)].view(1, -1).to(device)
    windows = num_windows(batched, EVAL_BPTT)
    try:
        total, body_total, count, body_count = _windows(model, batched, body, windows, device, precision, progress)
    finally:
        model.train(was_training)
    return {"record": metrics_from_loss(total / count), "body": metrics_from_loss(body_total / max(body_count, 1)),
            "chars": count, "body_chars": body_count}


def _windows(model, batched, body, windows, device, precision, progress) -> tuple[float, float, int, int]:
    total, body_total, count, body_count, state = 0.0, 0.0, 0, 0, None
    for i in range(windows):
        x, y = get_batch(batched, i, EVAL_BPTT)
        _, in_body = get_batch(body, i, EVAL_BPTT)
        with autocast(device, precision):
            logits, state = model(x, state)
        losses = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                   reduction="none")
        total += float(losses.sum())
        body_total += float(losses[in_body.reshape(-1)].sum())
        count += y.numel()
        body_count += int(in_body.sum())
        if progress:
            progress(i + 1, windows)
    return total, body_total, count, body_count


def run(checkpoint_path: Path | None, split: str | None = None, file: Path | None = None,
        data_dir: Path | None = None, device: str = "cpu",
        progress: Callable[[int, int], None] | None = None, int8: bool = False) -> dict:
    """Evaluate a checkpoint on a split of the prepared corpus or on a text file of poems (one per line,
    `title<TAB>body` or a body). Returns the figures of evaluate_stream plus source, unknown, checkpoint.
    `int8` evaluates the CPU sampling path (steppers.Int8Stepper, token by token) instead of the fp32 module."""
    check_eval_source(split, file)
    if file is not None:
        records = file_records(read_text_file(file), file)
        if not records:
            raise UsageError(f"--file {file} holds no poem: write one poem per line")
    path = checkpoint_path or checkpoint.default_checkpoint()
    loaded = checkpoint.load(path, "cpu" if int8 else pick_device(device))
    model = loaded.model
    if int8:
        if model.config.cell != "lstm" or not int8_available():
            raise UsageError("--int8 needs an LSTM model and a torch build with quantized kernels: drop --int8")
        model = Int8LanguageModel(model)
    vocab = loaded.vocab
    if split is not None:
        stream = load_split(data_dir, split).astype(np.int64)
        source = f"{split} split"
        if vocab.tokens != Vocab.load(data_dir / "vocab.json").tokens:  # e.g. a model from before a rebuild
            script = corpus.load_meta(data_dir).get("script")
            if script != loaded.meta.script:
                raise CorpusError(f"{path} writes {loaded.meta.script} script and the corpus in {data_dir} is "
                                  f"{script}: prepare it with --script {loaded.meta.script}")
            poems = [(p.title, p.body) for p in corpus.iter_poems(data_dir, split)]
            stream, _ = encode_records(poems, vocab, None)  # the split's text, the model's own vocabulary
            source += " (its text in the model's vocabulary)"
        unknown = int((stream == vocab.unk_id).sum())
    else:
        stream, unknown = encode_records(records, vocab, loaded.meta.script)
        source = str(file)
    result = evaluate_stream(model, stream, vocab, device=torch.device("cpu") if int8 else None, progress=progress)
    result.update(source=source, unknown=unknown, checkpoint=str(path), path="int8" if int8 else "fp32")
    return result
