"""The settings of each stage as dataclasses: the model's shape, a training run, a sampling request.

Each default is stated here once; the CLI shows these values in --help. No torch here, so
options are validated before the heavy modules load."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import UsageError
from .forms import BodyConstraint, Form, check_heads, check_prompt

CELLS = ("lstm", "gru", "rnn")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LR = {"adamw": 2e-3, "sgd": 1.0}  # the peak learning rate when --lr is not given
DEVICES = ("auto", "cpu", "cuda", "mps")  # auto: cuda > mps > cpu
SCRIPTS = ("simplified", "traditional")  # of a prepared corpus (and of the models trained on it)
EVAL_SPLITS = ("val", "test")  # the splits `poetgen eval --split` measures
SAMPLE_FORMATS = ("text", "json", "jsonl")  # what `poetgen sample --format` writes
# the --template keys (prosody.Template.key) and the Chinese names also accepted (Template.name)
TEMPLATES = {"ping-plain": "平起首句不入韵", "ping-rhymed": "平起首句入韵", "ze-plain": "仄起首句不入韵",
             "ze-rhymed": "仄起首句入韵"}


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _positive(value, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"--{name} must be a positive number, got {value}")


@dataclass
class ModelConfig:
    """The shape of the model; stored in every checkpoint and used to rebuild it."""

    vocab_size: int
    emb_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    cell: str = "lstm"
    emb_dropout: float = 0.1  # on the embedding output (the first non-recurrent connection)
    dropout: float = 0.3  # between stacked layers and on the last layer's output
    tie_weights: bool = True
    # AWD-LSTM's regularizers (Merity et al. 2017), all off by default (plain Zaremba et al. 2014):
    locked_dropout: bool = False  # the dropouts above use one mask per sequence, the same at every step
    char_dropout: float = 0.0  # drop whole characters: every occurrence of a dropped one embeds as 0
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices (training only)

    def validate(self) -> ModelConfig:
        """Raise UsageError for sizes or rates no model can have."""
        if self.cell not in CELLS:
            raise UsageError(f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        for name in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("emb_dropout", "dropout", "char_dropout", "weight_drop"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self) -> dict:
        """What the weights depend on (everything but the dropout rates)."""
        return {k: v for k, v in asdict(self).items() if k not in REGULARIZERS}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**_known(cls, d))


REGULARIZERS = ("emb_dropout", "dropout", "locked_dropout", "char_dropout", "weight_drop")  # not the shape

PRESETS: dict[str, dict] = {
    # trains usefully on a laptop CPU in minutes
    "tiny": dict(emb_size=128, hidden_size=256, num_layers=2, emb_dropout=0.05, dropout=0.1),
    # the CPU default: 2 x 512
    "small": dict(emb_size=256, hidden_size=512, num_layers=2, emb_dropout=0.1, dropout=0.3),
    # the GPU reference: 2 x 1024, tied through a projection to 512
    "base": dict(emb_size=512, hidden_size=1024, num_layers=2, emb_dropout=0.1, dropout=0.5),
    "large": dict(emb_size=512, hidden_size=1536, num_layers=2, emb_dropout=0.15, dropout=0.6),
}
DEFAULT_PRESET = "small"


TRAIN_SPLITS = ("train", "song", "song+train")  # Tang train, the 全宋诗 (corpus prepare --with-song), or both


@dataclass
class TrainConfig:
    """Everything about a run but the model's shape; stored in last.pt for --resume.

    The learning-rate schedule is fixed when the run starts (from epochs, max_steps or max_minutes);
    on --resume, the budget fields only move where the run stops."""

    batch_size: int = 64
    bptt: int = 64
    epochs: int | None = 10  # None: no epoch limit (max_steps or max_minutes ends the run)
    max_steps: int | None = None
    max_minutes: float | None = None
    optimizer: str = "adamw"
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    min_lr_ratio: float = 0.1  # adamw: the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.01
    lr_decay: float = 0.5  # sgd: multiply the rate by this every epoch after decay_after
    decay_after: int = 4
    clip: float = 1.0
    eval_every: int = 500
    patience: int | None = None
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    init_from: str | None = None  # warm start: weights from this checkpoint, fresh optimizer and schedule
    log_every: int = 50
    train_split: str = "train"  # what to train on: one of TRAIN_SPLITS (validation is always the Tang val split)
    sampled_softmax: int = 0  # > 0: train the output layer on the batch's targets plus this many sampled negatives

    # the fields --resume may change: they say when to stop and how often to report, not what is computed
    RESUMABLE = ("epochs", "max_steps", "max_minutes", "eval_every", "patience", "log_every")

    def validate(self) -> TrainConfig:
        """Raise UsageError for values no run can use (NaN and infinities included)."""
        if self.train_split not in TRAIN_SPLITS:
            raise UsageError(f"unknown --train-split {self.train_split!r}: choose one of {', '.join(TRAIN_SPLITS)}")
        for name in ("batch_size", "bptt", "eval_every", "log_every", "decay_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("epochs", "max_steps", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise UsageError("a run needs a budget: give --epochs, --max-steps or --max-minutes")
        if self.max_minutes is not None:
            _positive(self.max_minutes, "max-minutes")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
        if self.lr is not None:
            _positive(self.lr, "lr")
        _positive(self.clip, "clip")
        for name in ("weight_decay", "min_lr_ratio", "lr_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a number ≥ 0, got {value}")
        if not isinstance(self.sampled_softmax, int) or self.sampled_softmax < 0:
            raise UsageError(f"--sampled-softmax must be 0 (off) or a number of negatives, got {self.sampled_softmax}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be ≥ 0, got {self.warmup_steps}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        return self

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**_known(cls, d))


MAX_NUM = 10_000  # poems per sample command; larger requests are refused
MAX_TEMPERATURE = 100.0  # beyond this every allowed character is equally likely anyway


@dataclass
class SampleOptions:
    """One sampling request. Text fields are already in the model's script."""

    prompt: str = ""
    title: str | None = None  # None: the model writes one
    form: Form | None = None  # None: free form
    acrostic: str = ""
    num: int = 1
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    max_chars: int = 120
    best_of: int = 8  # candidates per poem, the best kept by sample.score; 1 is plain sampling

    def validate(self) -> SampleOptions:
        """Raise UsageError for values no sampler can use, or a prompt the form cannot hold."""
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 <= t <= MAX_TEMPERATURE):
            raise UsageError(f"--temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {t}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if not 1 <= self.num <= MAX_NUM:
            raise UsageError(f"--num must be between 1 and {MAX_NUM:,}, got {self.num}: run the command again "
                             "for more")
        if not 1 <= self.best_of <= 64:
            raise UsageError(f"--best-of must be between 1 and 64, got {self.best_of}")
        if self.num * self.best_of > MAX_NUM * 8:
            raise UsageError(f"--num × --best-of is {self.num * self.best_of:,}; at most {MAX_NUM * 8:,} rows are "
                             "drawn at once: lower one of them")
        if not 2 <= self.max_chars <= 1000:
            raise UsageError(f"--max-chars must be between 2 and 1000, got {self.max_chars}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.acrostic:
            check_heads(self.acrostic, self.form)
        check_prompt(self.prompt, self.body_constraint)
        return self

    def body_constraint(self) -> BodyConstraint:
        """The grammar of one body under these options (the budget never cuts the prompt short)."""
        return BodyConstraint(self.form, self.acrostic, max(self.max_chars, len(self.prompt) + 1))


@dataclass
class Request:
    """What `poetgen sample` asks for, in the user's words (any script, ASCII marks allowed)."""

    prompt: str = ""
    title: str | None = None
    acrostic: str = ""
    strict: bool = False
    template: str | None = None
    rhyme: str | None = None
    no_rhyme: bool = False
