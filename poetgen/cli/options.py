"""The options several commands share, declared once as `Annotated` types, and the helpers that
declare the rest. An option that takes one of a few names gets them from the tuples in config.py:
--help shows them, the shell completes them, and a bad one is refused before anything loads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import (
    CELLS,
    DEFAULT_PRESET,
    DEVICES,
    EVAL_SPLITS,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    SAMPLE_FORMATS,
    SCRIPTS,
    TEMPLATES,
    TRAIN_SPLITS,
    TrainConfig,
)
from ..errors import UsageError
from ..forms import FORMS, get_form


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
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads to compute with (OMP_NUM_THREADS is honoured too).", min=1, metavar="N",
    show_default="the free cores: all, less the load of other processes")]
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
