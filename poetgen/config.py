"""The settings of the model and of a training run, as dataclasses: the model's shape, a training run.

Each default is stated here once; the CLI shows these values in --help. No torch here, so
options are validated before the heavy modules load."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import UsageError

CELLS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks of each cell's weight matrices
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LR = {"adamw": 2e-3, "sgd": 1.0}  # the peak learning rate when --lr is not given
DEVICES = ("auto", "cpu", "cuda", "mps")  # auto: cuda > mps > cpu
EVAL_SPLITS = ("val", "test")  # the splits `poetgen eval --split` measures
# the --template keys (prosody.Template.key) and the Chinese names also accepted (Template.name)


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
        gates = GATES[self.cell]
        h, e = self.hidden_size, self.emb_size
        parameters = self.vocab_size * e * 2 + gates * h * (e + h + 2) + (self.num_layers - 1) * gates * h * (2 * h + 2)
        if parameters > MAX_PARAMETERS:
            raise UsageError(f"a model of about {parameters:.2g} parameters is beyond poetgen (at most "
                             f"{MAX_PARAMETERS:.0e}, {MAX_PARAMETERS * 16 / 2**30:.0f} GiB to train): choose a smaller "
                             "--hidden-size, --emb-size or --num-layers")
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
WARMUP_STEPS = 200  # the warmup of a run whose budget is not shorter (see TrainConfig.warmup_steps)
WARMUP_SHARE = 0.1  # at most this share of a budget (its steps, or its minutes) is warmup


def warmup_steps_for(given: int | None, budget_steps: int | None) -> int:
    """The warmup steps of a run: those given, else WARMUP_STEPS or a tenth of a step budget, the fewer
    (a budget should buy a model, not a warmup; a time budget is shortened by Schedule as it runs)."""
    if given is not None:
        return given
    return WARMUP_STEPS if not budget_steps else max(1, min(WARMUP_STEPS, int(WARMUP_SHARE * budget_steps)))
MAX_PARAMETERS = 1_000_000_000  # weights, gradients and AdamW's two moments: 16 bytes each
MAX_BPTT = 10_000  # characters per truncated-BPTT window (a 七律 record is ~70)
MAX_BATCH = 65_536


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
    warmup_steps: int | None = None  # None: WARMUP_STEPS, or a tenth of a budget in steps when that is fewer
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
    teacher: str | None = None  # distillation: a model whose next-character distribution the run also learns
    distill: float = 0.5  # with teacher: the share of the loss that is KL(teacher ‖ student), the rest the CE

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
        if self.bptt > MAX_BPTT or self.batch_size > MAX_BATCH:
            raise UsageError(f"--bptt is at most {MAX_BPTT:,} and --batch-size at most {MAX_BATCH:,}, got "
                             f"{self.bptt:,} and {self.batch_size:,}: choose smaller ones")
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
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be a number ≥ 0, got {self.weight_decay}")
        for name in ("min_lr_ratio", "lr_decay"):  # shares of the peak rate: a rate that grows is no decay
            value = getattr(self, name)
            low_ok = value >= 0 if name == "min_lr_ratio" else value > 0
            if not (math.isfinite(value) and low_ok and value <= 1):
                bound = "[0, 1]" if name == "min_lr_ratio" else "(0, 1]"
                raise UsageError(f"--{name.replace('_', '-')} must be in {bound}, got {value}")
        if not isinstance(self.sampled_softmax, int) or self.sampled_softmax < 0:
            raise UsageError(f"--sampled-softmax must be 0 (off) or a number of negatives, got {self.sampled_softmax}")
        if not (isinstance(self.distill, (int, float)) and math.isfinite(self.distill) and 0 < self.distill <= 1):
            raise UsageError(f"--distill must be in (0, 1], got {self.distill}")
        if self.teacher and self.sampled_softmax:
            raise UsageError("--teacher compares whole distributions and --sampled-softmax computes a few columns: "
                             "drop one of them")
        if self.warmup_steps is not None and self.warmup_steps < 0:
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


RUN_OPTIONS = frozenset(f.name for cls in (ModelConfig, TrainConfig) for f in fields(cls)
                        if f.name != "vocab_size")  # what `poetgen train` passes on to a run's plan


def check_eval_source(split: str | None, file: object | None) -> None:
    """`poetgen eval` measures a split or a file: UsageError unless exactly one is given."""
    if (split is None) == (file is None):
        raise UsageError("give exactly one of --split val|test or --file TEXT")
