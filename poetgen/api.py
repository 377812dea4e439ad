"""The Python API: load a model, write poems, check 格律, in three calls.

    import poetgen

    model = poetgen.load()                       # the shipped model (or poetgen.load("runs/x/best.pt"))
    for poem in model.generate(form="qijue", prompt="春", num=2, seed=1):
        print(poem)                              # 《title》 and the lines
    result = poetgen.check("床前明月光，疑是地上霜。举头望明月，低头思故乡。")
    result.ok, result.form, result.to_dict()

`generate` takes the words of `poetgen sample` (the same checks, the same defaults, the same poems for
the same seed); errors are poetgen.errors.UsageError or CheckpointError, with the CLI's messages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Model", "check", "load"]


@dataclass
class Model:
    """A loaded model, ready to write poems (poetgen.load makes one)."""

    checkpoint: object  # checkpoint.Checkpoint: config, vocabulary, metadata, the model itself
    int8: bool = True  # sample through int8 weights where that is faster (an LSTM on a CPU)

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    def generate(self, **words) -> list:
        """Poems (sample.GeneratedPoem: title, body, lines, logprob, score), as `poetgen sample` writes
        them, from its words with their defaults (sample.sample_request): prompt, title, form (free,
        wujue, qijue, wulv, qilv, or 五绝 …), acrostic, num, seed, temperature, top_k, top_p, max_chars,
        best_of, score, search ("line" or "poem"), prune (False: `--no-prune`), strict, template, rhyme,
        no_rhyme, author, plan (False: `--no-plan`), keywords (a list, or one string as `--keywords` takes
        it). Without `seed`,
        one is drawn: each poem's `seed` and `index` attributes make it again; each poem's `plan` holds
        its keywords (None for a model that does not plan)."""
        from .sample import Sampler, sample_request

        request = sample_request(**words)
        return Sampler(self.checkpoint, request, int8=self.int8).poems()

    def info(self) -> dict:
        """What `poetgen info --json` says of this model."""
        from .card import describe

        return describe(self.checkpoint)


def load(path: str | os.PathLike | None = None, int8: bool = True, device: str | None = None) -> Model:
    """The model at `path` (a .pt file `poetgen train` or `export` wrote), else the shipped one, on
    `device` (auto, cpu, cuda or mps; sample.SAMPLE_DEVICE when None). On a CPU an LSTM samples through
    int8 weights (`int8=False`: through the full-precision weights)."""
    from . import checkpoint
    from .device import pick_device
    from .sample import SAMPLE_DEVICE

    where = pick_device(device or SAMPLE_DEVICE)
    return Model(checkpoint.load(path if path is not None else checkpoint.default_checkpoint(), where), int8=int8)


def check(poem: str, model: str | os.PathLike | None = None):
    """The 格律 of one poem (prosody.CheckResult: ok, form, template, violations, rhyme, to_dict()), with
    the tone table of `model` (a checkpoint path; the shipped model's by default). Never imports torch."""
    from . import prosody
    from .checking import Checker
    from .errors import UsageError

    if not isinstance(poem, str):
        raise TypeError(f"poem must be a string, got {type(poem).__name__}")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or None, got {type(model).__name__}")
    poems = list(prosody.read_poems(poem.splitlines()))
    if len(poems) != 1:
        raise UsageError(f"give the text of one poem (found {len(poems)} poems)")
    return Checker(model).check(poems[0])
