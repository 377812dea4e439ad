"""The parts a run is set up with: checked streams, a warm start's weights, the optimizer, a sampled
softmax's sampler."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .. import checkpoint
from ..checkpoint import Checkpoint
from ..config import TrainConfig
from ..errors import UsageError
from ..model import LanguageModel, NegativeSampler
from ..vocab import Vocab


def check_streams(train_stream: np.ndarray, val_stream: np.ndarray, batch_size: int) -> None:
    """UsageError when the splits are too small to train on or to validate."""
    if len(train_stream) < 2 * batch_size + 2:
        raise UsageError(f"train split of {len(train_stream)} tokens is too small for --batch-size {batch_size}: "
                         "lower it")
    if len(val_stream) < 4:
        raise UsageError("validation split is empty: prepare a larger corpus")


def warm_start(model: LanguageModel, ckpt: Checkpoint, vocab: Vocab, script: str | None) -> str | None:
    """Load another run's weights into `model` (fine-tuning, a second schedule): same shape and script
    (`script`: the corpus's). A model of another vocabulary (an older corpus build) lends the rows of
    the tokens both vocabularies hold, the others start from the mean of those rows
    (checkpoint.carry_vocab), and a note saying so is returned."""
    if ckpt.vocab.tokens == vocab.tokens:
        ckpt.require_shape(model.config, "drop the size options to take its shape")
        checkpoint.load_weights(model, ckpt.state_dict)
        return None
    ckpt.require_shape(replace(model.config, vocab_size=ckpt.config.vocab_size),
                       "drop the size options to take its shape")
    if ckpt.meta.script and script and ckpt.meta.script != script:
        raise UsageError(f"{ckpt.path} was trained on {ckpt.meta.script} text and this corpus is {script}: "
                         "prepare the corpus in its script, or start afresh")
    weights, shared = checkpoint.carry_vocab(ckpt.state_dict, ckpt.vocab, vocab, model.state_dict())
    checkpoint.load_weights(model, weights)
    return (f"{ckpt.path} has another vocabulary: {shared:,} of {len(vocab):,} tokens take its rows; "
            f"{len(vocab) - shared:,} new ones start from their mean")


def negative_sampler(train_stream: np.ndarray, negatives: int, vocab_size: int) -> NegativeSampler:
    """The sampler of a sampled softmax: `negatives` columns drawn by the train split's token counts."""
    counts = torch.bincount(torch.as_tensor(np.asarray(train_stream, dtype=np.int64)), minlength=vocab_size)
    return NegativeSampler(counts, negatives)


def sampled_softmax_warning(negatives: int, vocab_size: int) -> str | None:
    """A note when a sampled softmax would sample most of the vocabulary (and so hardly save time)."""
    if negatives < vocab_size // 2:
        return None
    return (f"--sampled-softmax {negatives:,} is not small against the vocabulary ({vocab_size:,}): the sampled "
            "set holds most columns, so training is barely faster; try 1024")


def make_optimizer(model: LanguageModel, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD at the peak rate, with weight decay on the matrices only (not on biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.99), fused=device.type == "cuda")
    return torch.optim.SGD(groups, lr=config.peak_lr)
