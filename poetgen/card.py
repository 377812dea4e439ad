"""A shipped model: exported from a trained run (weights only, fp16, val and test recorded, the tables
inside), and its card (what `poetgen info` prints)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

from .checkpoint import Checkpoint, ModelMeta, load, save
from .errors import UsageError
from .forms import ATTESTED_DOUBLE
from .paths import same_file
from .text import plural


def export(source: Path, output: Path, tones: dict | None = None, half: bool = True,
           measure=None, doubles: dict | None = None) -> Path:
    """Write a shipped model from a trained one: weights only (fp16 by default), with the tone table
    (`tones`, else the source's own), the 叠字 table (`doubles`, else the source's own, if any) and the
    source's critic, if any. `measure(path) -> {split: figures}`
    evaluates the weights as they will be written (a temp file beside `output`); the figures are recorded
    in the file, and `output` is written once, at the end: a failure or a signal before then leaves any
    previous file intact. Returns `output`."""
    if same_file(source, output):
        raise UsageError(f"--output {output} is the checkpoint being exported: choose another path")
    _remove_stale_trials(Path(output))
    ckpt = load(source)
    meta = ModelMeta(**{**asdict(ckpt.meta), "exported_from": str(source)})
    tones = tones if tones is not None else ckpt.tones
    doubles = doubles if doubles is not None else ckpt.doubles
    if tones is None:
        raise UsageError(f"{source} has no tone table and no prepared corpus gives one: pass --data-dir with "
                         "the corpus it was trained on")
    if measure is not None:
        trial = Path(output).with_name(f".{Path(output).name}.measuring.{os.getpid()}.tmp")
        try:
            save(trial, ckpt.model, ckpt.vocab, meta, tones=tones, half=half, critic=ckpt.critic_payload,
                 doubles=doubles)
            for split, figures in measure(trial).items():
                setattr(meta, split, figures)
        finally:
            trial.unlink(missing_ok=True)
    save(output, ckpt.model, ckpt.vocab, meta, tones=tones, half=half, critic=ckpt.critic_payload, doubles=doubles)
    return Path(output)  # nothing after the file is in place: an interrupt now would call a finished export failed


def describe(ckpt: Checkpoint) -> dict:
    """The model card of a checkpoint as a plain dict (what `poetgen info` prints)."""
    c = ckpt.config
    m = ckpt.meta
    params = sum(math.prod(v.shape) for v in ckpt.state_dict.values() if hasattr(v, "shape"))
    return {
        "checkpoint": str(ckpt.path),
        "size_mb": round(ckpt.path.stat().st_size / 1e6, 2),
        "format_version": ckpt.version,
        "architecture": f"{c.num_layers}-layer {c.cell.upper()}, hidden {c.hidden_size}, "
                        f"embedding {c.emb_size}{', tied' if c.tie_weights else ''}",
        "parameters": params,
        "model_config": c.to_dict(),
        "vocab_size": len(ckpt.vocab),
        "script": m.script,
        "tone_table": ckpt.tones is not None,
        "doubles": (f"{plural(sum(n >= ATTESTED_DOUBLE for n in ckpt.doubles.values()), 'character')} poets "
                    f"double {ATTESTED_DOUBLE}+ times" if ckpt.doubles is not None else
                    "none: any character may be doubled (a file from before poetgen 0.4; `poetgen export` "
                    "with its corpus adds the table)"),
        "plans": (f"writes a plan (a keyword a line) before a poem; knows {plural(len(m.poets or {}), 'poet')}"
                  if ckpt.vocab.plans else "none: writes a poem straight after its title"),
        "poets": sorted(m.poets or {}, key=lambda p: -m.poets[p]),
        "corpus": m.corpus_source,
        "corpus_hash": m.corpus_hash,
        "step": m.step,
        "val": m.val,
        "test": m.test,
        "trained": m.time,
        "device": m.device,
        "software": m.software,
        "train_config": m.train_config,
        "resumable": ckpt.train_state is not None,
        "critic": _critic_card(ckpt.critic_payload),
    }


def _critic_card(critic: dict | None) -> dict | None:
    """What the card says of the critic of best-of-N: its weight and its val figures."""
    if critic is None:
        return None
    figures = critic.get("figures") or {}
    usage = critic.get("usage") or {}
    return {"weight": critic.get("weight"), "val_auc": figures.get("val_auc"),
            "trained_on": {k: figures.get(k) for k in ("train_real", "train_generated")},
            "usage": {form: len(table) for form, table in usage.items()}}


def _remove_stale_trials(output: Path) -> None:
    """Remove the trial files of exports to `output` that a kill cut short (their process is gone)."""
    for trial in output.parent.glob(f".{output.name}.measuring.*.tmp"):
        pid = trial.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            trial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True
