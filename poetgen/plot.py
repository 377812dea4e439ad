"""Pictures: training curves from runs' metrics.jsonl, gradient norms through time, unit activations
over a poem, gate means by position. PNG files through matplotlib (the optional `plot` extra, Agg
backend: no display needed), and compact text renderings for the terminal.

Images are deterministic: same data, same bytes (no timestamps in the files)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

SPARK = "▁▂▃▄▅▆▇█"
PNG_META = {"Software": None}  # no matplotlib version or date stamped into the file


def pyplot():
    """matplotlib.pyplot on the Agg backend; UsageError naming the extra when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("pictures need matplotlib: pip install 'poetgen[plot]'") from None
    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

    plt.rcParams.update({"svg.hashsalt": "poetgen", "font.size": 9})
    return plt


@dataclass
class Run:
    """The evaluation history of one training run."""

    path: Path
    label: str
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    val_bpc: list[float] = field(default_factory=list)
    train_bpc: list[float] = field(default_factory=list)


def read_run(folder: str | Path) -> Run:
    """A run's evaluations from its metrics.jsonl; UsageError if there are none."""
    folder = Path(folder)
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{folder} has no metrics.jsonl: pass the --out folder of a `poetgen train` run")
    evals = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if isinstance(event, dict) and event.get("event") == "eval":
                    evals.append(event)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({e}): pass another run") from None
    if not evals:
        raise UsageError(f"{path} has no evaluation yet: train longer, or lower --eval-every")
    first = evals[0]
    label = f"{first.get('cell', '?')} {first.get('num_layers', '?')}x{first.get('hidden_size', '?')}"
    run = Run(folder, f"{label} ({folder.name})")
    for e in evals:
        step, seconds = _number(e.get("step")), _number(e.get("elapsed_s"))
        if math.isnan(step) or math.isnan(seconds):
            continue  # a malformed line: nothing to place it by
        loss = _number(e.get("train_loss"))
        run.steps.append(int(step))
        run.seconds.append(seconds)
        run.val_bpc.append(_number(e.get("val_bpc")))  # NaN (a gap in the curve) where the run diverged
        run.train_bpc.append(loss / math.log(2))
    if not run.steps:
        raise UsageError(f"{path} has no readable evaluation: pass another run")
    return run


def _number(value) -> float:
    """A figure of a log line as a float; NaN for null, a string or anything else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as a row of block characters, lowest ▁ to highest █ (resampled to `width`)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(values) > width:
        values = [values[int(i * len(values) / width)] for i in range(width)]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(" " if not math.isfinite(v) else SPARK[min(7, int((v - lo) / span * 7.999))] for v in values)


def runs_text(runs: list[Run]) -> str:
    """A compact rendering for the terminal: per run, best and last val bits/char and the curve."""
    width = max(len(r.label) for r in runs)
    lines = [f"{'run':<{width}}  {'steps':>7}  {'time':>7}  {'best':>6}  {'last':>6}  val bits/char"]
    for r in runs:
        finite = [v for v in r.val_bpc if math.isfinite(v)]
        best = f"{min(finite):>6.3f}" if finite else f"{'-':>6}"
        last = f"{r.val_bpc[-1]:>6.3f}" if math.isfinite(r.val_bpc[-1]) else f"{'-':>6}"
        lines.append(f"{r.label:<{width}}  {r.steps[-1]:>7,}  {r.seconds[-1] / 60:>6.1f}m  {best}  {last}  "
                     f"{sparkline(r.val_bpc)}")
    return "\n".join(lines)


def training_curves(runs: list[Run], output: Path, size: tuple[float, float] = (10, 4), dpi: int = 100) -> None:
    """Validation (solid) and train (dotted, with dropout) bits/char against steps and wall time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=size, dpi=dpi, sharey=True)
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        for ax, x in ((axes[0], r.steps), (axes[1], [s / 60 for s in r.seconds])):
            ax.plot(x, r.val_bpc, color=color, label=r.label, marker=".", linewidth=1.5)
            ax.plot(x, r.train_bpc, color=color, linestyle=":", linewidth=1)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall time (minutes)")
    axes[0].set_ylabel("bits per character (solid: val, dotted: train)")
    axes[0].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, output)


def save(fig, output: Path) -> None:
    """Write a figure as PNG atomically, without a timestamp."""
    from .paths import atomic_path

    if Path(output).suffix.lower() != ".png":
        raise UsageError(f"--output {output}: give a .png file name")
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", metadata=PNG_META)
    import matplotlib.pyplot as plt

    plt.close(fig)


def gradient_curves(curves: dict[str, list[float]], output: Path, size=(7, 4), dpi: int = 100) -> None:
    """Normalized gradient norm against distance k, log scale, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for i, (label, values) in enumerate(curves.items()):
        ax.semilogy(range(len(values)), [max(v, 1e-30) for v in values], color=f"C{i % 10}", label=label)
    ax.set_xlabel("k (characters back)")
    ax.set_ylabel("‖∂L_t / ∂h_{t−k}‖, normalized at k = 0")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save(fig, output)


def gate_curves(means: dict[str, list[float]], labels: list[str], output: Path, size=(7, 4), dpi: int = 100) -> None:
    """Mean gate activation against position in the line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for i, (gate, values) in enumerate(means.items()):
        ax.plot(range(len(values)), values, marker="o", color=f"C{i % 10}", label=gate)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("position in the line (the mark that ends it last)")
    ax.set_ylabel("mean activation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, output)


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "SimHei", "SimSun")


def cjk_font() -> str | None:
    """An installed font that draws Chinese characters, or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in CJK_FONTS if n in names), None)


def activation_strip(text: str, values: list[float], title: str, output: Path, dpi: int = 100) -> None:
    """A poem, one verse line per row, each character on a background coloured by one activation
    (-1 blue, 0 white, +1 red), with a colour bar that says so."""
    from .text import LINE_END

    plt = pyplot()
    font = cjk_font()
    rows: list[list[tuple[str, float]]] = [[]]
    for ch, v in zip(text, values, strict=True):
        rows[-1].append((ch, v))
        if ch in LINE_END:
            rows.append([])
    rows = [r for r in rows if r] or [[]]
    per_row = max(len(r) for r in rows) or 1
    fig, ax = plt.subplots(figsize=(per_row * 0.55 + 1.3, len(rows) * 0.55 + 0.5), dpi=dpi)
    cmap = plt.get_cmap("coolwarm")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), ax=ax, fraction=0.08, pad=0.03, ticks=[-1, 0, 1])
    bar.set_label("activation", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    for r, row in enumerate(rows):
        for c, (ch, v) in enumerate(row):
            ax.add_patch(plt.Rectangle((c, -r - 1), 1, 1, color=cmap((max(-1.0, min(1.0, v)) + 1) / 2)))
            label = ch if font else f"{v:+.1f}"  # without a CJK font, the values instead of boxes
            ax.text(c + 0.5, -r - 0.5, label, ha="center", va="center", fontsize=13 if font else 7, fontfamily=font)
    ax.set_xlim(0, per_row)
    ax.set_ylim(-len(rows), 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, output)
