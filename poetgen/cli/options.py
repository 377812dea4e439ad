"""The options several commands share, declared once as `Annotated` types, and the helpers that
declare the rest. An option that takes one of a few names gets them from the tuples of config.py,
sample/request.py and text.py:
--help shows them, the shell completes them, and a bad one is refused before anything loads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import (
    CELLS,
    DEFAULT_LR,
    DEFAULT_PRESET,
    DEVICES,
    EVAL_SPLITS,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    TRAIN_SPLITS,
    WARMUP_STEPS,
    ModelConfig,
    TrainConfig,
)
from ..errors import UsageError
from ..forms import FORMS, get_form
from ..sample.request import SAMPLE_FORMATS, SCORES, SEARCHES, TEMPLATES
from ..text import SCRIPTS


def examples(*lines: str) -> str:
    """A command's help epilog: real examples, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def flag(name: str, help: str, *alt: str):
    """A boolean flag: shown without a type, off unless given."""
    return typer.Option(name, *alt, help=f"{help} [default: off]", metavar="", show_default=False)


class UnknownName(typer.BadParameter):
    """A bad choice, said in our words alone ("unknown preset 'huge': choose one of ...")."""

    def format_message(self) -> str:
        return self.message


def one_of(what: str, names: Iterable[str], also: Iterable[str] = ()) -> dict:
    """typer.Option keywords for an option that takes one of `names` (or of `also`, accepted but not
    shown): [a|b|c] in --help, shell completion, and `unknown WHAT 'x': choose one of a, b, c` (exit 2)."""
    names = tuple(names)
    accepted = {*names, *also}

    def parse(value: str) -> str:
        if value not in accepted:
            raise UnknownName(f"unknown {what} {value!r}: choose one of {', '.join(names)}")
        return value

    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return {"parser": parse, "autocompletion": complete, "metavar": f"[{'|'.join(names)}]"}


FORM_NAMES = ("free", *FORMS, *(f.name for f in FORMS.values()))


def complete_form(incomplete: str) -> list[str]:
    return [f for f in FORM_NAMES if f.startswith(incomplete)]


def _form(value: str) -> str:
    """A form name as forms.get_form reads it (any case, a traditional 絕 too)."""
    try:
        get_form(value)
    except UsageError as e:
        raise UnknownName(str(e)) from None
    return value


# -- the same option in several commands; the flag names are written here only --------------------


def checkpoint_option(help: str = "Model file.", **kw):
    return typer.Option("--checkpoint", "-c", help=help, metavar="FILE", **kw)


def output_option(help: str, **kw):
    return typer.Option("--output", "-o", help=help, callback=_output_in_a_folder, **{"metavar": "FILE", **kw})


def _output_in_a_folder(value: Path | None) -> Path | None:
    """--output names a file in a folder that exists: like cp, poetgen does not create folders."""
    if value is not None and value.is_dir():
        raise UnknownName(f"--output {value} is a folder: give the name of a file in it")
    if value is not None and not value.absolute().parent.is_dir():
        raise UnknownName(f"--output {value}: the folder {value.absolute().parent} does not exist: create it first")
    return value


def json_option(help: str = "Print JSON on stdout instead of text."):
    return flag("--json", help)


def data_dir_option(help: str = "Prepared-corpus folder.", **kw):
    show = "$POETGEN_DATA, corpus/ in a checkout, else the per-user data folder"
    return typer.Option("--data-dir", help=help, metavar="DIR", **{"show_default": show, **kw})


def data_root(data_dir: Path | None) -> Path:
    """The prepared-corpus folder: --data-dir, else $POETGEN_DATA, corpus/ in a checkout, or the user's."""
    from ..paths import resolve_data_dir

    return resolve_data_dir(data_dir)


CheckpointOpt = Annotated[Optional[Path], checkpoint_option(show_default="the shipped model")]
DataDirOpt = Annotated[Optional[Path], data_dir_option()]
QuietOpt = Annotated[bool, flag("--quiet", "No progress on stderr.", "-q")]
JsonOpt = Annotated[bool, json_option()]
PngOpt = Annotated[Optional[Path], output_option("Also draw the picture into this PNG file (needs `pip install "
                                                 "'poetgen[plot]'`).", metavar="FILE.png",
                                                 show_default="no picture, text only")]
PoemsOpt = Annotated[int, typer.Option("--poems", help="How many val poems to measure over.", min=1)]

# -- options that take one of a few names ------------------------------------------------------------
DEFAULT_DEVICE = TrainConfig.device  # train and eval alike
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.",
                                        **one_of("device", DEVICES))]
def _threads(value: int | None) -> int | None:
    """--threads is at most the cores this process may use: more threads only wait on each other."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if value is not None and value > cores:
        raise UnknownName(f"--threads {value}: this process may use {cores} cores: give at most {cores}")
    return value


ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads to compute with (OMP_NUM_THREADS is honoured too).", min=1, metavar="N",
    callback=_threads, show_default="the free cores: all, less the load of other processes")]
ScriptOpt = Annotated[str, typer.Option("--script", help="simplified (OpenCC t2s) or traditional.",
                                        **one_of("script", SCRIPTS))]
FormOpt = Annotated[str, typer.Option("--form", "-f", help="free, wujue (五绝), qijue (七绝), wulv (五律) or qilv "
                                      "(七律).", parser=_form, autocompletion=complete_form,
                                      metavar=f"[{'|'.join(FORM_NAMES)}]")]
FormatOpt = Annotated[str, typer.Option("--format", help="text, json or jsonl.", **one_of("format", SAMPLE_FORMATS))]
TemplateOpt = Annotated[Optional[str], typer.Option(
    "--template", help="With --strict: ping-plain, ping-rhymed, ze-plain or ze-rhymed (平起/仄起 × 首句不入韵/入韵).",
    show_default="one that fits, drawn per poem", **one_of("template", TEMPLATES, TEMPLATES.values()))]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="val or test of the prepared corpus.",
                                                 show_default="none: give --split or --file",
                                                 **one_of("split", EVAL_SPLITS))]
_PRESET_SIZES = ", ".join(f"{k} ({v['num_layers']}x{v['hidden_size']})" for k, v in PRESETS.items())
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help=f"Model size: {_PRESET_SIZES}.",
                                                  show_default=DEFAULT_PRESET, **one_of("preset", PRESETS))]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help=f"{' or '.join(OPTIMIZERS)}: AdamW with warmup and "
                                           "cosine decay, or SGD with step decay.", **one_of("optimizer", OPTIMIZERS))]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help=f"{', '.join(PRECISIONS)}: auto is bf16 on CUDA, fp32 elsewhere; bf16 is also faster on "
    "CPUs with AVX512-BF16 or AMX.", **one_of("precision", PRECISIONS))]
TrainSplitOpt = Annotated[str, typer.Option(
    "--train-split", help=f"{', '.join(TRAIN_SPLITS)}: the Tang train split, the 全宋诗 (corpus prepare "
    "--with-song), or both; validation is always on Tang val.", **one_of("--train-split", TRAIN_SPLITS))]


def cell_option(help: str, **kw):
    """--cell: `train` takes one, `inspect gradients` several."""
    return typer.Option("--cell", help=help, **one_of("cell", CELLS), **kw)


# -- `poetgen sample`'s own options (its request: sample.sample_request) -------------------------------
PromptOpt = Annotated[str, typer.Option("--prompt", "-p", help="The poem's beginning, kept verbatim.",
                                        show_default="none")]
TitleOpt = Annotated[Optional[str], typer.Option("--title", "-t", help="A title to condition on.",
                                                 show_default="the model writes one (shown as the first line)")
                     ]
AcrosticOpt = Annotated[str, typer.Option("--acrostic", "-a", help="藏头诗: these characters start the lines.",
                                          show_default="none")]
NumOpt = Annotated[int, typer.Option("--num", "-n", help="How many poems (sampled together as one batch).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-T", help="Sampling temperature; 0 is greedy.")
                           ]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k likeliest characters only.",
                                                 show_default="all")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the smallest set reaching "
                                                   "this probability, in (0, 1].", show_default="1")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", "-s", help="Random seed: the same seed and options give "
                                                "the same poems.", show_default="random")]
MaxCharsOpt = Annotated[int, typer.Option("--max-chars", help="Longest body in free form.")]
StrictOpt = Annotated[bool, flag("--strict", "Enforce 格律 with --form: 平仄 template, one 平水韵 rhyme group, "
                                 "no repeated rhyme, no 孤平 or 三平尾.")]
RhymeOpt = Annotated[Optional[str], typer.Option("--rhyme", help="Fixed forms: rhyme in the 平水韵 group of this "
                                                 "character (e.g. 东).", show_default="any group")]
NoRhymeOpt = Annotated[bool, flag("--no-rhyme", "Fixed forms without rhyme or the 重字 rule (the plain model).")
                        ]
BestOfOpt = Annotated[int, typer.Option("--best-of", "-N", help="Draw N candidates per poem in one batch and keep "
                                         "the best by --score; 1 is plain sampling.")]
ScoreOpt = Annotated[str, typer.Option("--score", help="What best-of-N ranks by in a fixed form: critic (the mean "
                                       "log-probability per character plus the model's critic, which learned to tell "
                                       "poets' poems from the model's own) or logprob (the likeliest).",
                                       **one_of("score", SCORES))]
SearchOpt = Annotated[str, typer.Option("--search", help="How best-of-N searches a fixed form: line (at the start of "
                                         "each line every poem's better half of candidates, by --score so far, is "
                                         "copied over the weaker half, and the copies go on apart) or poem (whole "
                                         "poems, ranked at the end, pruned: about two thirds of the work at the "
                                         "same --best-of).",
                                         **one_of("search", SEARCHES))]
NoPruneOpt = Annotated[bool, flag("--no-prune", "With --search poem, write every candidate to the end. Without it, "
                                   "at best of 4 or more the weaker candidates stop early: at a quarter, half and "
                                   "three quarters of the lines only the best 3/4, 1/2 and 3/8 (by --score so far) "
                                   "go on, a third less work.")]
Fp32Opt = Annotated[bool, flag("--fp32", "Sample through the full-precision weights. Without it an LSTM on an x86 "
                               "CPU samples through int8 weights, 1.1 to 1.9 times faster for the 2x1024 and "
                               "within 0.2% in perplexity (`poetgen eval --int8`); either way the same seed gives "
                               "the same poems on the same machine, and in int8 poem i is the same whatever "
                               "--num.")]
SampleOutputOpt = Annotated[Optional[Path], output_option("Write to this file (atomically) instead of stdout.",
                                                    show_default="stdout")]


# -- `poetgen train`'s own options (a run's settings: config.ModelConfig and config.TrainConfig) ----------
def _from_preset(option: str, help: str):
    return typer.Option(option, help=help, show_default="from --preset")


OutOpt = Annotated[Path, typer.Option("--out", help="Run folder: best.pt, last.pt, metrics.jsonl.",
                                      metavar="DIR")]
CellOpt = Annotated[Optional[str], cell_option(f"Recurrent cell: {', '.join(CELLS)} (tanh).",
                                               show_default=ModelConfig.cell)]
EmbSizeOpt = Annotated[Optional[int], _from_preset("--emb-size", "Embedding size.")]
HiddenSizeOpt = Annotated[Optional[int], _from_preset("--hidden-size", "Hidden size.")]
NumLayersOpt = Annotated[Optional[int], _from_preset("--layers", "Stacked layers.")]
DropoutOpt = Annotated[Optional[float], _from_preset("--dropout", "Dropout between layers and on the output.")
                       ]
EmbDropoutOpt = Annotated[Optional[float], _from_preset("--emb-dropout", "Dropout on the embeddings.")]
LockedDropoutOpt = Annotated[bool, typer.Option(
        "--locked-dropout/--no-locked-dropout", help="AWD-LSTM: one dropout mask per sequence for the "
        "embeddings, between layers and the output, the same at every step.")]
CharDropoutOpt = Annotated[float, typer.Option(
        "--char-dropout", help="AWD-LSTM: drop whole characters from the embedding table (one draw per "
        "window).")]
WeightDropOpt = Annotated[float, typer.Option(
        "--weight-drop", help="AWD-LSTM: DropConnect on the hidden-to-hidden matrices while training.")]
UntiedOpt = Annotated[bool, flag("--untied", "Do not tie input and output embeddings.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Rows B of the (B, T) window.")]
BpttOpt = Annotated[int, typer.Option("--bptt", help="Window length T of truncated BPTT.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Passes over the train split.",
                                                  show_default=f"{TrainConfig.epochs}, none with --max-steps alone")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps.",
                                                     show_default="no limit")]
MaxMinutesOpt = Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop after this much time, the final evaluation included (a fresh run's cosine "
        "schedule follows it).", show_default="no limit")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default=", ".join(
        f"{v:g} with {k}" for k, v in DEFAULT_LR.items()))]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay on matrices.")]
WarmupStepsOpt = Annotated[Optional[int], typer.Option(
        "--warmup-steps", help="Linear warmup steps (adamw).",
        show_default=f"{WARMUP_STEPS}, or a tenth of the budget if that is less")]
MinLrRatioOpt = Annotated[float, typer.Option("--min-lr-ratio", help="The cosine ends at this share of the "
                                                "peak rate (adamw).")]
LrDecayOpt = Annotated[float, typer.Option("--lr-decay", help="sgd: multiply the rate by this each epoch after "
                                            "--decay-after.")]
DecayAfterOpt = Annotated[int, typer.Option("--decay-after", help="sgd: the epoch the step decay starts.")]
ClipOpt = Annotated[float, typer.Option("--clip", help="Global gradient-norm clipping threshold.")]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", help="Validate (and save) every N steps.")]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Log train loss every N steps.")]
PatienceOpt = Annotated[Optional[int], typer.Option("--patience", help="Stop after N evaluations without "
                                                    "improvement.", show_default="never")]
TrainSeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (CPU runs repeat exactly).")]
InitFromOpt = Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from this checkpoint's weights (its shape; fresh optimizer and schedule). "
        "From a model of another vocabulary, the characters both hold keep their rows and the others start "
        "from their mean.", metavar="FILE", show_default="fresh weights")]
TeacherOpt = Annotated[Optional[Path], typer.Option(
        "--teacher", help="Distil: also train toward this model's next-character distribution (Hinton et al. "
        "2015), a model of the corpus's vocabulary, usually larger; it runs beside the student at every step, "
        "and a resume needs the same file. The logged train loss stays the cross entropy.", metavar="FILE",
        show_default="none")]
DistillOpt = Annotated[float, typer.Option(
        "--distill", help="With --teacher: the share of the loss, in (0, 1], that is KL(teacher ‖ student), the "
        "divergence of the student's distribution from the teacher's; the rest is the cross entropy of the text.",
        metavar="<float>")]
SampledSoftmaxOpt = Annotated[int, typer.Option(
        "--sampled-softmax", help="Train the output layer on the batch's targets plus K sampled negatives "
        "instead of the whole vocabulary (faster; an approximation: finish with a full-softmax run; the logged "
        "train loss is over the sampled columns); 0 is off.",
        metavar="K")]
ResumeOpt = Annotated[bool, flag("--resume", "Continue the run in --out from its last.pt (only the budget "
                                 "options --epochs, --max-steps, --max-minutes, --eval-every, --log-every, "
                                 "--patience may change).")]
AsJsonOpt = Annotated[bool, json_option("Print a JSON summary on stdout at the end.")]
AuthorOpt = Annotated[Optional[str], typer.Option(
    "--author", help="Write in this poet's manner, e.g. 杜甫 (a model whose records name poets: `poetgen info` says "
    "how many it knows).", show_default="none")]
KeywordsOpt = Annotated[Optional[str], typer.Option(
    "--keywords", help="The plan's first keywords, one a line, e.g. 秋月,孤雁,归舟,乡心 (1-4 characters each); each "
    "line holds its own, wherever the model places it (a model that plans).", show_default="none")]
NoPlanOpt = Annotated[bool, flag("--no-plan", "Write the poem straight after the title, without first planning a "
                                 "keyword for each line (a model that plans; others never do).")]
ShowPlanOpt = Annotated[bool, flag("--show-plan", "Text output: the plan under the title, its keywords in 〔〕 (JSON "
                                   "records always carry it).")]
