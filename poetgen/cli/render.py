"""All text the commands print: tables, reports, cards, checks, activations. Each function returns the
text (or prints a table on stderr); the commands decide where it goes. Plain text when the output is
not a terminal or NO_COLOR is set."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from ..forms import FORMS
from ..text import LINE_END, finite, plural


def plain_output() -> bool:
    """No colours, styles or cursor movement: NO_COLOR is set (and not empty), TERM=dumb (a terminal that
    shows no colours: text stands in for them), or stderr is not a terminal."""
    return no_color() or os.environ.get("TERM") == "dumb" or not sys.stderr.isatty()


def no_color() -> bool:
    """NO_COLOR set to a value that is not empty (the convention of no-color.org)."""
    return bool(os.environ.get("NO_COLOR"))


def console(stderr: bool = True):
    from rich.console import Console

    no_style = no_color()
    return Console(stderr=stderr, color_system=None if no_style else "auto", no_color=no_style,
                   highlight=False, emoji=False)


def captured(*renderables) -> str:
    """What rich prints for `renderables` on stdout, as text."""
    out = console(stderr=False)
    with out.capture() as capture:
        for r in renderables:
            out.print(r)
    return capture.get()


def table(title: str, stream):
    """A rich table: boxed in a terminal, plain aligned columns (no box characters) into a pipe or a file."""
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.HEAVY_HEAD if stream.isatty() else None)


def fmt(x, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


# -- corpus -------------------------------------------------------------------------------------------


def source_name(source: dict) -> str:
    """What a corpus was built from, as its meta.json's "source" says: the package, or a user's file."""
    if "file" in source:
        return f"{source['file']} (sha256 {str(source.get('sha256'))[:12]}…)"
    return f"全唐诗 corpus, {source['package']}@{source['version']}"


def build_report(result) -> str:
    meta = result.meta
    p = meta["poems"]
    lines = [f"built {meta['script']} corpus in {result.data_dir} from {source_name(meta['source'])}: "
             f"{p['train']:,} train / {p['val']:,} val / {p['test']:,} test poems, vocabulary {meta['vocab_size']:,}, "
             f"dropped {plural(sum(meta['dropped'].values()), 'poem')}"
             + (f" ({', '.join(f'{n:,} {r}' for r, n in sorted(meta['dropped'].items()))})" if meta["dropped"]
                else "")]
    if "file" in meta["source"] and p["val"] < FEW_VAL:
        lines.append(f"a small file: only {p['val']} val poems, so val figures and early stopping are noisy; "
                     "more poems help")
    song = meta.get("song")
    if song:
        lines.append(f"with the 全宋诗: {song['poems']:,} song poems ({song['tokens']:,} tokens, "
                     f"{song['unknown_tokens']:,} outside the Tang vocabulary)")
    return "\n".join(lines)


FEW_VAL = 30  # fewer val poems than this in a user's corpus: the build report says so


def to_json(obj, **kwargs) -> str:
    """JSON as poetgen writes it: UTF-8 text as is, and a NaN or infinity (a diverged run) as null."""
    return json.dumps(finite(obj), ensure_ascii=False, allow_nan=False, **kwargs)


STATS_KEYS = ("poems", "tokens", "characters", "vocab_size", "dropped", "source", "script", "forms", "poems_read",
              "unknown_tokens", "glyphs", "song", "corpus_hash")


def corpus_stats_json(meta: dict, top: int) -> str:
    out = {k: meta.get(k) for k in STATS_KEYS}
    out["top_chars"] = meta["top_chars"][:top]
    return to_json(out, indent=1) + "\n"


def corpus_stats(meta: dict, top: int, glyphs_file: Path) -> str:
    splits = ("train", "val", "test")
    counts = table(f"{source_name(meta['source'])} ({meta['script']})", sys.stdout)
    counts.add_column("")
    for s in splits:
        counts.add_column(s, justify="right")
    for label, key in (("poems", "poems"), ("tokens", "tokens"), ("body characters", "characters"),
                       ("unknown tokens", "unknown_tokens")):
        counts.add_row(label, *(f"{meta[key][s]:,}" for s in splits))
    for form in ("五绝", "七绝", "五律", "七律", "other"):
        counts.add_row(form, *(f"{meta['forms'][s].get(form, 0):,}" for s in splits))
    drops = table(f"dropped of {meta['poems_read']:,} poems read", sys.stdout)
    drops.add_column("reason")
    drops.add_column("poems", justify="right")
    for reason, n in meta["dropped"].items():
        drops.add_row(reason, f"{n:,}")
    lines = [f"vocabulary: {meta['vocab_size']:,} tokens (min count {meta['min_count']})"]
    glyphs = meta["glyphs"]
    if glyphs["tables"]:
        changed, pairs, left = glyphs["changed"], glyphs["changed_pairs"], glyphs["left"]
        lines.append(f"glyphs: {changed['variant']:,} variant forms made standard ({pairs['variant']:,} pairs), "
                     f"{changed['outside_bmp']:,} characters outside the BMP given a BMP form "
                     f"({pairs['outside_bmp']:,} pairs), {changed['compat']:,} compatibility ideographs; left: "
                     f"{left['left_ambiguous']:,} variants with several standard forms, "
                     f"{left['left_outside_bmp']:,} characters with no BMP form (<unk>); every pair is in "
                     f"{glyphs_file}")
    song = meta.get("song")
    if song:
        lines.append(f"全宋诗 (split `song`, training only): {song['poems']:,} poems of {song['poems_read']:,} read, "
                     f"{song['tokens']:,} tokens ({song['unknown_tokens']:,} outside the Tang vocabulary), "
                     f"dropped: " + ", ".join(f"{k} {v:,}" for k, v in song["dropped"].items()))
    lines.append("most frequent: " + " ".join(f"{c}{n}" for c, n in meta["top_chars"][:top]))
    return captured(counts, *lines, drops)


# -- train, eval, info ----------------------------------------------------------------------------------


def print_train_summary(summary: dict) -> None:
    rows = table("training summary", sys.stderr)
    rows.add_column("")
    rows.add_column("value", justify="right")
    rows.add_row("steps", f"{summary['steps']:,}")
    rows.add_row("epochs", f"{summary['epochs']:.2f}")
    rows.add_row("parameters", f"{summary['parameters']:,}")
    rows.add_row("tokens/s", f"{summary['tokens_per_s']:,.0f}")
    rows.add_row("time", f"{summary['elapsed_s']:.0f} s")
    rows.add_row("best val ppl", fmt(summary["best_val_ppl"], 2))
    rows.add_row("stopped by", summary["stop_reason"])
    rows.add_row("best model", str(Path(summary["out"]) / "best.pt"))
    console().print(rows)


def figures(r: dict) -> str:
    rec, body = r["record"], r["body"]
    return (f"record {rec['nats_per_char']:.4f} nats/char, {rec['bits_per_char']:.4f} bits/char, perplexity "
            f"{rec['perplexity']:.2f}; body perplexity {body['perplexity']:.2f} ({body['bits_per_char']:.4f} "
            "bits/char)")


def eval_result(result: dict) -> str:
    """The headline of `poetgen eval`, with the share of characters the model does not know."""
    share = result["unknown"] / max(1, result["chars"])
    return (f"{result['source']}: {figures(result)} over {plural(result['chars'], 'character')} "
            f"({result['unknown']:,} unknown, {share:.1%})\n")


def unknown_warning(result: dict) -> str | None:
    """A warning (stderr) when 5% or more of the text is outside the vocabulary: a low perplexity then
    says little (every <unk> is one easy guess)."""
    share = result["unknown"] / max(1, result["chars"])
    if share < 0.05:
        return None
    return (f"warning: {share:.0%} of the characters are outside the model's vocabulary and read as <unk>: "
            "the perplexity measures little")


CARD_KEYS = ("checkpoint", "size_mb", "format_version", "architecture", "parameters", "vocab_size", "script",
             "tone_table", "doubles", "plans", "corpus", "corpus_hash", "step", "val", "test", "trained", "device",
             "software", "resumable", "critic")


def model_card(card: dict) -> str:
    lines = []
    for key in CARD_KEYS:
        value = card[key]
        if key in ("val", "test"):
            value = figures(value) if value and "record" in value and "body" in value else (
                f"record perplexity {value['record']['perplexity']:.2f}" if value and "record" in value
                else "not measured (run poetgen export)")
        elif key == "corpus" and isinstance(value, dict):
            value = source_name(value) if "file" in value else f"{value.get('package')}@{value.get('version')}"
        elif key == "parameters":
            value = f"{value:,}"
        elif key == "software":
            value = "not recorded" if not isinstance(value, dict) else ", ".join(
                f"{k} {v}" for k, v in value.items() if v is not None)
        elif key == "critic":
            auc = value.get("val_auc") if value else None
            usage = (value.get("usage") or {}) if value else {}
            value = "none (best-of-N ranks by log-probability)" if value is None else (
                f"ranks best-of-N (weight {value['weight']:g}"
                + (f"; tells real poems from its own at val AUC {auc:.3f})" if isinstance(auc, float) else ")")
                + ("; usage weights for " + ", ".join(f"{FORMS[form].name} {plural(n, 'character')}"
                                                       for form, n in usage.items() if n) if any(usage.values())
                   else ""))
        lines.append(f"{key:>14}: {value}")
    return "\n".join(lines) + "\n"


# -- sample and check -----------------------------------------------------------------------------------


def poems_text(batch, start: int, show_plan: bool = False) -> str:
    """Poems one line per verse line, a blank line between poems, the title first in 《》 (and with
    `show_plan` the plan under it, its keywords in 〔〕)."""
    return "".join(("\n" if start + i else "") + (f"《{p.title}》\n" if p.title else "")
                   + (f"〔{'、'.join(p.plan)}〕\n" if show_plan and p.plan else "")
                   + "\n".join(p.lines) + "\n" for i, p in enumerate(batch))


def poem_records(records: list[dict], fmt: str) -> str:
    """jsonl: one object a line; json: indented objects joined by commas (the caller adds the brackets)."""
    if fmt == "jsonl":
        return "".join(to_json(r) + "\n" for r in records)
    return ",\n".join(textwrap.indent(to_json(r, indent=1), " ") for r in records)


def check_result(r) -> str:
    head = r.form if r.template is None else f"{r.form} {r.template}"
    verdict = "ok" if r.ok else r.reason if r.template is None else "fails"
    lines = [f"{head}: {verdict}"]
    for line, tones in zip(r.lines, r.tones, strict=False):
        lines.append(line)
        lines.append(tones)
    for v in r.violations:
        lines.append(f"violation: line {v['line']} character {v['position']} {v['char']} should be {v['expected']}")
    if r.rhymes:
        lines.append("rhymes: " + " ".join(f"{x['char']}({'/'.join(x['groups']) or '?'})" for x in r.rhymes)
                     + f" → {r.rhyme_group or 'no shared 平声 group'}")
    for w in r.warnings:
        lines.append(w if w.startswith("note: ") else f"warning: {w}")
    return "\n".join(lines)


# -- inspect --------------------------------------------------------------------------------------------


def gradient_table(curves: dict[str, list[float]], max_k: int) -> str:
    ks = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if k <= max_k]
    width = max(len(k) for k in curves)
    lines = [f"{'model':<{width}}  " + "  ".join(f"{'k=' + str(k):>8}" for k in ks)]
    for label, values in curves.items():
        lines.append(f"{label:<{width}}  " + "  ".join(f"{values[k]:>8.1e}" for k in ks))
    return "\n".join(lines) + "\n"


def units_found(found: dict) -> str:
    return "\n".join(f"{prop}: " + ", ".join(f"{u} (r = {r:+.2f})" for u, r in best)
                     for prop, best in found.items()) + "\n\n"


def gate_table(means: dict[str, list[float]], labels: list[str], layer: int, chars: int, poems: int) -> str:
    lines = [f"layer {layer}, {poems} poems of {chars}-character lines", "position     " +
             " ".join(f"{x:>6}" for x in labels)]
    for gate, values in means.items():
        lines.append(f"{gate:<12} " + " ".join(f"{v:>6.3f}" for v in values))
    return "\n".join(lines) + "\n"


def colour(v: float) -> tuple[int, int, int]:
    """-1 → blue, 0 → white, +1 → red."""
    v = max(-1.0, min(1.0, v))
    return (255, int(255 * (1 - v)), int(255 * (1 - v))) if v >= 0 else (int(255 * (1 + v)), int(255 * (1 + v)), 255)


def activations(unit: str, chars: list[str], acts: list[float]) -> str:
    """A poem with each character's background coloured by `acts` in a terminal; else numbers, a line each."""
    if plain_output() or not sys.stdout.isatty():
        rows, line = [f"unit {unit}"], []
        for ch, v in zip(chars, acts, strict=True):
            line.append(f"{ch}{v:+.2f}")
            if ch in LINE_END:
                rows.append(" ".join(line))
                line = []
        if line:
            rows.append(" ".join(line))
        return "\n".join(rows) + "\n"
    from rich.text import Text

    text = Text(f"unit {unit} (blue −1, white 0, red +1)\n")
    for ch, v in zip(chars, acts, strict=True):
        r, g, b = colour(v)
        text.append(ch, style=f"black on rgb({r},{g},{b})")
        if ch in LINE_END:
            text.append("\n")
    return captured(text)


def activations_html(unit: str, chars: list[str], acts: list[float]) -> str:
    import html

    spans = []
    for ch, v in zip(chars, acts, strict=True):
        r, g, b = colour(v)
        spans.append(f'<span title="{v:+.3f}" style="background:rgb({r},{g},{b})">{html.escape(ch)}</span>'
                     + ("<br>" if ch in LINE_END else ""))
    return ("<!doctype html><meta charset=utf-8><title>poetgen unit</title>"
            f"<p>unit {html.escape(unit)} (blue −1, white 0, red +1)</p>"
            f"<p style='font-size:28px;line-height:1.6'>{''.join(spans)}</p>\n")


def poem_record(poem, sampler) -> dict:
    """The JSON record of one poem of the sampler's request (`--format json|jsonl`)."""
    opts = sampler.options
    return {"text": poem.body, "lines": poem.lines, "title": poem.title, "prompt": opts.prompt, "seed": opts.seed,
            "index": poem.index, "form": opts.form.key if opts.form else "free", "acrostic": opts.acrostic,
            "author": opts.author, "plan": poem.plan,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "logprob": round(poem.logprob, 4), "score": round(poem.score, 4), "best_of": poem.candidates,
            "search": sampler.search(poem), "prune": sampler.pruned(poem), "strict": sampler.request.verse.strict,
            "chars": len(poem.body),
            "checkpoint": str(sampler.checkpoint.path)}


def render_poems(sampler, fmt: str, show_plan: bool, batch: list, start: int) -> str:
    """A batch of the sampler's poems (from poem `start`) as `--format` writes them."""
    if fmt == "text":
        return poems_text(batch, start, show_plan)
    return poem_records([poem_record(p, sampler) for p in batch], fmt)
