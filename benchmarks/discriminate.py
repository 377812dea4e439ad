"""An independent judge: how well a plain classifier tells real poems from generated ones, per form.

The automatic stand-in for a human reader. For each fixed form (五绝 七绝 五律 七律) and each setting
of the generator, a logistic regression (numpy only) on hashed character n-grams of the body learns
real poems of the train split (label 1) against half of the generated poems (label 0); it is then
scored on held-out data: real poems of the TEST split against the other half of the generated poems.
Held-out accuracy near 50% means the judge cannot tell them apart; 100% means every poem gives
itself away. The judge is of a different kind from any critic inside poetgen, and nothing in poetgen
may be trained on what it reports.

Features of a body (line marks left out, so punctuation is no tell): character unigrams, bigrams and
trigrams, each also with its position in the line ("u3:春" is 春 as a line's 4th character), and
unigrams and bigrams with the line's index in the poem; hashed to 2^bits buckets, present or not,
each row scaled to unit length. The L2 penalty is chosen by 4-fold cross-validation on the training
half. Classes are balanced in training and in the held-out set (the larger side is subsampled), and
every draw is seeded, so a run repeats. With --num N the judge trains on N/2 poems a class and is
tested on up to N/2 a class (fewer where the test split has fewer of the form: 76 五绝); the table
gives accuracy ± its binomial standard error (about ±3.5 points at N = 200), so comparing settings
10 points apart wants N = 400 or more.

Generated poems come from `poetgen sample --format jsonl` files, given as NAME=FILE.jsonl (a file may
hold several forms; each record's "form" says which), or the script samples them itself, one call of
the CLI per form and setting (`--setting NAME="OPTIONS"`, OMP_NUM_THREADS=--threads), into --out-dir:

    python benchmarks/discriminate.py                      # plain and default, 200 poems per form
    python benchmarks/discriminate.py --num 400 -c runs/x/best.pt \\
        --setting plain="--no-rhyme --best-of 1" --setting default="" --setting strict="--strict"
    python benchmarks/discriminate.py --generated today=runs/judge/default-qilv-n200-s1.jsonl --forms qilv
    python benchmarks/discriminate.py --reuse --json --explain 8   # keep sampled files; telling n-grams

Sampled files are named SETTING-FORM-nNUM-sSEED.jsonl; --reuse keeps those already there. Prints one
table (rows: settings, columns: forms, cells: held-out accuracy, and AUC beside it with --auc) or, with
--json, one JSON line per setting and form instead. Sampled poems stay under runs/ (git-ignored):
never commit them."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import unicodedata
import zlib
from pathlib import Path

import numpy as np

from poetgen import corpus
from poetgen.forms import FORMS, detect
from poetgen.paths import resolve_data_dir
from poetgen.repetition import lines_of

DEFAULT_SETTINGS = {"plain": "--no-rhyme --best-of 1", "default": ""}


# ---------------------------------------------------------------------------------------------
# Features


def feature_names(body: str) -> list[str]:
    """The n-gram features of one body (with repeats; presence is what counts)."""
    lines = lines_of(body)
    out = []
    for i, line in enumerate(lines):
        for j in range(len(line)):
            uni, bi, tri = line[j], line[j:j + 2], line[j:j + 3]
            out += [f"u:{uni}", f"u{j}:{uni}", f"uL{i}:{uni}"]
            if len(bi) == 2:
                out += [f"b:{bi}", f"b{j}:{bi}", f"bL{i}:{bi}"]
            if len(tri) == 3:
                out += [f"t:{tri}", f"t{j}:{tri}"]
    return out


def bucket(name: str, bits: int) -> int:
    """A stable hash of a feature name into 2^bits buckets (Python's hash() changes per process)."""
    return zlib.crc32(name.encode("utf-8")) & ((1 << bits) - 1)


def featurize(bodies: list[str], bits: int, names: dict[int, str] | None = None) -> list[frozenset[int]]:
    """The hashed buckets present in each body (a feature vector is 1/sqrt(len) on each). `names`,
    when given, collects a readable feature name per bucket (the first seen)."""
    out = []
    for body in bodies:
        buckets = {}
        for name in feature_names(body):
            buckets.setdefault(bucket(name, bits), name)
        if names is not None:
            for b, name in buckets.items():
                names.setdefault(b, name)
        out.append(frozenset(buckets))
    return out


def gram(rows: list[frozenset[int]], cols: list[frozenset[int]]) -> np.ndarray:
    """Inner products of the unit-length feature vectors, shape (len(rows), len(cols)).

    The judge has far fewer poems than features, so it works with these (the kernel form of the same
    linear model) rather than with weights over 2^bits buckets."""
    symmetric = rows is cols
    k = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        for j in range(i if symmetric else 0, len(cols)):
            b = cols[j]
            k[i, j] = len(a & b) / max(len(a) * len(b), 1) ** 0.5
            if symmetric:
                k[j, i] = k[i, j]
    return k


# ---------------------------------------------------------------------------------------------
# Logistic regression


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(k: np.ndarray, y: np.ndarray, l2: float, iterations: int = 600) -> tuple[np.ndarray, float]:
    """A linear logistic regression minimizing mean log-loss + l2/2·|w|² (bias not penalized) by
    Nesterov's accelerated gradient from w = 0, with w = X.T @ alpha kept implicit: X @ w = k @ alpha
    for the training Gram matrix k = X @ X.T, and a gradient step on w is one on alpha. Rows have unit
    length and the bias is one more feature of value 1, so the gradient is (2/4 + l2)-Lipschitz and
    1/(1/2 + l2) a safe step. Returns (alpha, bias); score new rows with gram(new, train) @ alpha + bias."""
    n = len(y)
    step = 1.0 / (0.5 + l2)
    alpha, b = np.zeros(n), 0.0
    alpha_prev, b_prev = alpha, b
    for t in range(1, iterations + 1):
        momentum = (t - 1) / (t + 2)
        va, vb = alpha + momentum * (alpha - alpha_prev), b + momentum * (b - b_prev)
        residual = sigmoid(k @ va + vb) - y  # (n,)
        alpha_prev, b_prev = alpha, b
        alpha, b = va - step * (residual / n + l2 * va), vb - step * residual.mean()
    return alpha, b


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a real poem scores above a generated one), ties half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def choose_l2(k: np.ndarray, y: np.ndarray, grid: tuple[float, ...], folds: int, rng: np.random.Generator) -> float:
    """The penalty of `grid` with the best cross-validated accuracy (log-loss breaks ties)."""
    parts = np.array_split(rng.permutation(len(y)), folds)
    best = None
    for l2 in grid:
        correct, loss = 0, 0.0
        for f in range(folds):
            test = parts[f]
            train = np.concatenate([parts[j] for j in range(folds) if j != f])
            alpha, b = fit_logistic(k[np.ix_(train, train)], y[train], l2)
            p = np.clip(sigmoid(k[np.ix_(test, train)] @ alpha + b), 1e-9, 1 - 1e-9)
            correct += int(((p > 0.5) == (y[test] == 1)).sum())
            loss += float(-(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)).sum())
        key = (-correct, loss)
        if best is None or key < best[0]:
            best = (key, l2)
    return best[1]


# ---------------------------------------------------------------------------------------------
# Poems


def real_bodies(data_dir: Path, split: str) -> dict[str, list[str]]:
    """Bodies of one split's regulated poems, by form key, in stream order."""
    out: dict[str, list[str]] = {key: [] for key in FORMS}
    for poem in corpus.iter_poems(data_dir, split):
        form = detect(poem.body)
        if form:
            out[form.key].append(poem.body)
    return out


def jsonl_bodies(path: Path) -> dict[str, list[str]]:
    """Bodies of sampled poems in a `poetgen sample --format jsonl` file, by form key."""
    out: dict[str, list[str]] = {key: [] for key in FORMS}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                key = record.get("form")
                if key not in FORMS:
                    form = detect(record["text"])
                    key = form.key if form else None
                if key:
                    out[key].append(record["text"])
    return out


def sample_file(poetgen: list[str], checkpoint: str | None, form: str, num: int, seed: int, options: str,
                path: Path, threads: int) -> None:
    """Sample `num` poems of `form` with the poetgen CLI into `path` (JSONL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*poetgen, "sample", "--form", form, "--num", str(num), "--seed", str(seed), "--format", "jsonl",
           "-o", str(path), *shlex.split(options)]
    if checkpoint:
        cmd += ["-c", checkpoint]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    print(f"$ OMP_NUM_THREADS={threads} {shlex.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"  {time.perf_counter() - start:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# One judgement


def judge(real_train: list[str], real_test: list[str], generated: list[str], seed: int, bits: int,
          grid: tuple[float, ...], explain: int = 0) -> dict:
    """Train on real train-split poems against half the generated ones, score on test-split poems
    against the other half; classes balanced on both sides."""
    rng = np.random.default_rng(seed)
    gen = [generated[i] for i in rng.permutation(len(generated))]
    half = len(gen) // 2
    gen_train, gen_test = gen[:half], gen[half:]
    n_train = min(len(gen_train), len(real_train))
    n_test = min(len(gen_test), len(real_test))
    if n_train < 8 or n_test < 4:
        raise SystemExit(f"too few poems to judge: {n_train} per class to train on, {n_test} to test")

    def pick(bodies: list[str], n: int) -> list[str]:
        return [bodies[i] for i in sorted(rng.choice(len(bodies), size=n, replace=False))]

    train_bodies = pick(real_train, n_train) + pick(gen_train, n_train)
    test_bodies = pick(real_test, n_test) + pick(gen_test, n_test)
    y_train = np.r_[np.ones(n_train), np.zeros(n_train)]
    y_test = np.r_[np.ones(n_test), np.zeros(n_test)]

    names: dict[int, str] = {}
    train_features = featurize(train_bodies, bits, names if explain else None)
    k_train = gram(train_features, train_features)
    k_test = gram(featurize(test_bodies, bits), train_features)
    l2 = choose_l2(k_train, y_train, grid, folds=4, rng=rng)
    alpha, b = fit_logistic(k_train, y_train, l2)
    scores = k_test @ alpha + b
    accuracy = float(((scores > 0) == (y_test == 1)).mean())
    out = {"accuracy": round(accuracy, 4), "auc": round(auc(scores, y_test), 4),
           "train_accuracy": round(float(((k_train @ alpha + b > 0) == (y_train == 1)).mean()), 4),
           "l2": l2, "train_per_class": n_train, "test_per_class": n_test}
    if explain:  # the weights themselves: w = X.T @ alpha
        weight: dict[int, float] = {}
        for a, features in zip(alpha, train_features, strict=True):
            for f in features:
                weight[f] = weight.get(f, 0.0) + a / len(features) ** 0.5
        ranked = sorted(weight, key=weight.get)
        out["generated_tells"] = [names[f] for f in ranked[:explain]]
        out["real_tells"] = [names[f] for f in ranked[::-1][:explain]]
    return out


# ---------------------------------------------------------------------------------------------
# Table


def width(text: str) -> int:
    """Columns a string takes in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cell(text, columns: int, left: bool = False) -> str:
    text = str(text)
    pad = " " * max(columns - width(text), 0)
    return text + pad if left else pad + text


def table(results: dict[str, dict[str, dict]], forms: list[str], show_auc: bool) -> str:
    head = " ".join([cell("setting", 14, True), *(cell(FORMS[f].name, 12) for f in forms)])
    lines = [head, "-" * width(head)]
    for setting, by_form in results.items():
        cells = []
        for f in forms:
            r = by_form.get(f)
            if r is None:
                cells.append(cell("—", 12))
                continue
            n = 2 * r["test_per_class"]
            se = (r["accuracy"] * (1 - r["accuracy"]) / n) ** 0.5
            text = f"{r['accuracy']:.0%}±{se:.0%}" + (f" {r['auc']:.2f}" if show_auc else "")
            cells.append(cell(text, 12))
        lines.append(" ".join([cell(setting, 14, True), *cells]))
    counts = " ".join([cell("held-out n", 14, True), *(cell(
        next((f"{2 * r[f]['test_per_class']}" for r in results.values() if f in r), "—"), 12) for f in forms)])
    lines.append(counts)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", action="append", default=[], metavar="NAME=FILE.jsonl",
                    help="sampled poems to judge (repeatable; a name may be given for several files)")
    ap.add_argument("--setting", action="append", default=[], metavar='NAME="OPTIONS"',
                    help="sample with these `poetgen sample` options (repeatable; default: plain and default "
                         "when no --generated is given)")
    ap.add_argument("-c", "--checkpoint", help="model file for sampling (default: the shipped model)")
    ap.add_argument("--num", type=int, default=200, help="poems sampled per form and setting")
    ap.add_argument("--seed", type=int, default=1, help="seed for sampling and for the judge's draws")
    ap.add_argument("--forms", default=",".join(FORMS), help="comma-separated form keys")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/judge"), help="where sampled files go")
    ap.add_argument("--reuse", action="store_true", help="keep sampled files already in --out-dir")
    ap.add_argument("--poetgen", default=f"{shlex.quote(sys.executable)} -m poetgen",
                    help="the command that runs the poetgen CLI")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for sampling")
    ap.add_argument("--data-dir", help="prepared corpus (default: poetgen's data folder)")
    ap.add_argument("--bits", type=int, default=20, help="hash the features into 2^bits buckets")
    ap.add_argument("--auc", action="store_true", help="show AUC beside accuracy in the table")
    ap.add_argument("--explain", type=int, default=0, metavar="K",
                    help="with --json: the K features that most mark a poem generated, and real")
    ap.add_argument("--json", action="store_true", help="one JSON line per setting and form instead of the table")
    args = ap.parse_args()

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        ap.error(f"unknown form(s) {', '.join(unknown)}: choose from {', '.join(FORMS)}")
    data_dir = resolve_data_dir(args.data_dir)
    real_train, real_test = real_bodies(data_dir, "train"), real_bodies(data_dir, "test")

    generated: dict[str, dict[str, list[str]]] = {}
    for spec in args.generated:
        name, sep, path = spec.partition("=")
        name, path = (name, Path(path)) if sep else (Path(spec).stem, Path(spec))
        for key, bodies in jsonl_bodies(path).items():
            generated.setdefault(name, {}).setdefault(key, []).extend(bodies)
    settings = dict(s.partition("=")[::2] for s in args.setting)
    if not args.setting and not args.generated:
        settings = dict(DEFAULT_SETTINGS)
    for name, options in settings.items():
        for form in forms:
            path = args.out_dir / f"{name}-{form}-n{args.num}-s{args.seed}.jsonl"
            if not (args.reuse and path.is_file()):
                sample_file(shlex.split(args.poetgen), args.checkpoint, form, args.num, args.seed, options, path,
                            args.threads)
            generated.setdefault(name, {}).setdefault(form, []).extend(jsonl_bodies(path)[form])

    grid = (1e-4, 1e-3, 1e-2, 1e-1)
    results: dict[str, dict[str, dict]] = {}
    for name, by_form in generated.items():
        for form in forms:
            if not by_form.get(form):
                continue
            seed = args.seed * 1000 + list(FORMS).index(form)
            r = judge(real_train[form], real_test[form], by_form[form], seed, args.bits, grid, args.explain)
            results.setdefault(name, {})[form] = r
            if args.json:
                print(json.dumps({"setting": name, "form": form, **r}, ensure_ascii=False), flush=True)
    if not args.json:
        print(table(results, forms, args.auc))


if __name__ == "__main__":
    main()
