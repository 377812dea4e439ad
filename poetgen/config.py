"""The settings of each stage as dataclasses: the model's shape, a training run, a sampling request.

Each default is stated here once; the CLI shows these values in --help. No torch here, so
options are validated before the heavy modules load."""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, fields

from .errors import UsageError
from .forms import BodyGrammar, Form, check_heads, check_prompt, get_form
from .text import full_width_marks
from .vocab import MAX_TITLE

CELLS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks of each cell's weight matrices
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LR = {"adamw": 2e-3, "sgd": 1.0}  # the peak learning rate when --lr is not given
DEVICES = ("auto", "cpu", "cuda", "mps")  # auto: cuda > mps > cpu
SAMPLE_DEVICE = "cpu"  # where `sample` computes: a poem or ten are faster in int8 on the CPU than after a GPU's start
SCRIPTS = ("simplified", "traditional")  # of a prepared corpus (and of the models trained on it)
EVAL_SPLITS = ("val", "test")  # the splits `poetgen eval --split` measures
SAMPLE_FORMATS = ("text", "json", "jsonl")  # what `poetgen sample --format` writes
ATTESTED_DOUBLE = 5  # a fixed form writes a 叠字 (萧萧) only where the train split holds the pair this often
SCORES = ("critic", "logprob")  # what best-of-N ranks by: see SampleOptions.score
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
        for name in ("weight_decay", "min_lr_ratio", "lr_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a number ≥ 0, got {value}")
        if not isinstance(self.sampled_softmax, int) or self.sampled_softmax < 0:
            raise UsageError(f"--sampled-softmax must be 0 (off) or a number of negatives, got {self.sampled_softmax}")
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


MAX_NUM = 10_000  # poems per sample command; larger requests are refused
FREE_LINE = 6  # the budget of a free-form acrostic line: five characters and a mark
MAX_CHARS = 1000  # the longest free-form body (--max-chars)
MAX_PROMPT = 1000  # characters of a --prompt: as long as the longest free-form body (--max-chars)
MAX_TEMPERATURE = 100.0  # beyond this every allowed character is equally likely anyway
NEEDS_FORM = "needs a regulated form: --form wujue, qijue, wulv or qilv"


@dataclass(frozen=True)
class SampleOptions:
    """How poems are drawn: the text they start from and the decoding settings. sample_request builds
    and checks them from the user's words; sample.prepare puts the text in the model's script."""

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
    score: str = "critic"  # best-of-N in a fixed form: log-probability + the model's critic (rerank.py), or
    # "logprob" alone; a model without a critic, and free form, rank by log-probability
    prune: bool = True  # best-of-N in a fixed form drops its weaker candidates as it goes (sample.PRUNE)

    @property
    def candidates_per_poem(self) -> int:
        """The bodies drawn per poem: best_of, or 1 when greedy (greedy candidates would all be the same)."""
        return self.best_of if self.temperature > 0 else 1

    def body_grammar(self) -> BodyGrammar:
        """The grammar of one body under these options (the budget never cuts the prompt short)."""
        return BodyGrammar(self.form, self.acrostic, max(self.max_chars, len(self.prompt) + 1))


@dataclass(frozen=True)
class VerseOptions:
    """The rules of verse a fixed-form request asks for, as the user gave them."""

    strict: bool = False  # 格律: a 平仄 template, one rhyme group, no character twice
    template: str | None = None  # with strict: this template (a key or name), else one that fits, per poem
    rhyme: str | None = None  # rhyme in the 平水韵 group of this character, else in any
    no_rhyme: bool = False  # neither rhyme nor the 重字 rule: the plain model in the form's shape


@dataclass(frozen=True)
class SampleRequest:
    """A checked `poetgen sample` request: what sample_request returns and sample.prepare takes."""

    options: SampleOptions
    verse: VerseOptions


def sample_request(*, prompt: str = "", title: str | None = None, form: str = "free", acrostic: str = "",
                   num: int = SampleOptions.num, temperature: float = SampleOptions.temperature,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   max_chars: int = SampleOptions.max_chars, best_of: int = SampleOptions.best_of,
                   strict: bool = False, template: str | None = None, rhyme: str | None = None,
                   no_rhyme: bool = False, score: str = SampleOptions.score,
                   prune: bool = SampleOptions.prune) -> SampleRequest:
    """The one validation of a sampling request, from the user's words and before torch loads: the
    form by name, the text normalized (ASCII marks made full-width, spaces trimmed), a random seed
    when none is given. Raises UsageError naming the first value no sampler can use, a verse option
    without what it needs, or text the form cannot hold. What depends on the model (its vocabulary,
    script and tone table) sample.prepare checks."""
    options = SampleOptions(
        prompt=full_width_marks(prompt.strip()),
        title=full_width_marks("".join(title.split())) if title is not None else None,
        form=get_form(form), acrostic=acrostic.strip(), num=num, temperature=temperature, top_k=top_k,
        top_p=top_p, seed=seed if seed is not None else secrets.randbelow(2**31), max_chars=max_chars,
        best_of=best_of, score=score, prune=prune)
    verse = VerseOptions(strict=strict, template=template, rhyme=rhyme, no_rhyme=no_rhyme)
    check_decoding(options)
    check_verse(options.form, verse)
    check_text(options)
    return SampleRequest(options, verse)


def check_decoding(opts: SampleOptions) -> None:
    """Raise UsageError for a decoding setting no sampler can use."""
    t = opts.temperature
    if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 <= t <= MAX_TEMPERATURE):
        raise UsageError(f"--temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {t}")
    if opts.top_p is not None and not (0 < opts.top_p <= 1):
        raise UsageError(f"--top-p must be in (0, 1], got {opts.top_p}")
    if opts.top_k is not None and opts.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {opts.top_k}")
    if not 1 <= opts.num <= MAX_NUM:
        raise UsageError(f"--num must be between 1 and {MAX_NUM:,}, got {opts.num}: run the command again "
                         "for more")
    if opts.score not in SCORES:
        raise UsageError(f"unknown score {opts.score!r}: choose one of {', '.join(SCORES)}")
    if not 1 <= opts.best_of <= 64:
        raise UsageError(f"--best-of must be between 1 and 64, got {opts.best_of}")
    if opts.num * opts.best_of > MAX_NUM * 8:
        raise UsageError(f"--num × --best-of is {opts.num * opts.best_of:,}; at most {MAX_NUM * 8:,} rows are "
                         "drawn at once: lower one of them")
    if not 2 <= opts.max_chars <= MAX_CHARS:
        raise UsageError(f"--max-chars must be between 2 and {MAX_CHARS:,}, got {opts.max_chars}")
    if not 0 <= opts.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {opts.seed}")


def check_verse(form: Form | None, verse: VerseOptions) -> None:
    """Raise UsageError for verse options that contradict each other or lack the fixed form they need."""
    if form is None and (verse.strict or verse.rhyme):
        raise UsageError(f"{'--strict' if verse.strict else '--rhyme'} {NEEDS_FORM}")
    if verse.template and not verse.strict:
        raise UsageError("--template needs --strict")
    if verse.rhyme and verse.no_rhyme:
        raise UsageError("--rhyme and --no-rhyme contradict each other: drop one")
    if verse.template:
        from .prosody import get_template

        get_template(form, verse.template)


def check_text(opts: SampleOptions) -> None:
    """Raise UsageError for a title too long, acrostic heads that cannot start the form's lines, or a
    prompt the form (and the heads) cannot hold."""
    if opts.title is not None and len(opts.title) > MAX_TITLE:
        raise UsageError(f"--title has {len(opts.title)} characters; titles have at most {MAX_TITLE}: shorten it")
    if opts.acrostic:
        check_heads(opts.acrostic, opts.form)
        if opts.form is None and opts.max_chars < FREE_LINE * len(opts.acrostic):
            raise UsageError(f"--acrostic has {len(opts.acrostic)} heads: a free-form poem of {len(opts.acrostic)} "
                             f"lines needs --max-chars {FREE_LINE * len(opts.acrostic)} or more (now {opts.max_chars}; "
                             f"at most {MAX_CHARS // FREE_LINE} heads): raise --max-chars or give fewer heads")
    if len(opts.prompt) > MAX_PROMPT:
        raise UsageError(f"--prompt has {len(opts.prompt):,} characters; a prompt has at most {MAX_PROMPT:,}: "
                         "shorten it")
    check_prompt(opts.prompt, opts.body_grammar())
