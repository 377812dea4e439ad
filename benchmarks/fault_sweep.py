"""Run many bad commands against the real CLI and count what a careful operator would object to:
a Python traceback, more than one line on stderr for an error, an exit code of 0 for bad input.
Then fault scenarios run through bash, each with its own verdict: bytes that are not UTF-8, a C
locale, closed and full streams, a diverging run, caps on what would hang, a double stop signal, an
export that cannot measure, and kills in the write windows of `corpus build`.

    python benchmarks/fault_sweep.py               # uses the shipped model and a tiny synthetic corpus
    python benchmarks/fault_sweep.py --verbose     # every command with its exit code

Prints one JSON line per problem found and a summary line. Needs no prepared corpus."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from synth import make_corpus  # noqa: E402

from poetgen.checkpoint import default_checkpoint  # noqa: E402


def cases(tmp: Path, pkg: Path, data: Path) -> list[tuple[list[str], str | None]]:
    """(arguments, stdin text or None). Every one of them is bad input or a fault."""
    folder = str(tmp)
    bad_utf8 = tmp / "bad.txt"
    bad_utf8.write_bytes(b"\xff\xfe\x00bad")
    text = tmp / "text.pt"
    text.write_text("hello")
    empty = tmp / "empty.txt"
    empty.write_text("")
    out_file = tmp / "afile"
    out_file.write_text("x")
    big = str(2**64)
    sample = ["sample", "--best-of", "1"]
    train = ["train", "--data-dir", str(data), "--max-steps", "1", "--out"]
    out = [
        (["--no-such"], None), (["sample", "--num", "0"], None), (["sample", "--num", "100001"], None),
        (["sample", "--num", "x"], None), (["sample", "--temperature", "nan"], None),
        (["sample", "--temperature", "inf"], None), (["sample", "--temperature", "-1"], None),
        (["sample", "--temperature", "1e39"], None), (["sample", "--top-p", "0"], None),
        (["sample", "--top-p", "nan"], None), (["sample", "--top-k", "-3"], None), (["sample", "--seed", big], None),
        (["sample", "--seed", "-1"], None), (["sample", "--form", "sonnet"], None), (["sample", "--form", ""], None),
        (["sample", "--max-chars", "0"], None), (["sample", "--max-chars", "100000"], None),
        (["sample", "--prompt", "abc"], None), (["sample", "--prompt", "龘龘"], None),
        (["sample", "--form", "wujue", "--prompt", "春风，"], None), (["sample", "--acrostic", "abc"], None),
        (["sample", "--form", "qilv", "--acrostic", "春"], None), (["sample", "--strict"], None),
        (["sample", "--template", "ping-plain", "--form", "wujue"], None),
        (["sample", "--rhyme", "东"], None), (["sample", "--form", "wujue", "--rhyme", "abc"], None),
        (["sample", "--form", "wujue", "--rhyme", "东", "--no-rhyme"], None),
        (["sample", "--form", "wujue", "--strict", "--template", "nope"], None),
        (["sample", "--title", "春" * 40], None), (["sample", "--format", "xml"], None),
        (["sample", "--best-of", "0"], None), (["sample", "--best-of", "1000"], None),
        (["sample", "--search", "beam"], None), (["sample", "--num", "10000", "--best-of", "64"], None),
        ([*sample, "-c", folder], None),
        ([*sample, "-c", str(text)], None),
        ([*sample, "-c", str(tmp / "none.pt")], None),
        ([*sample, "-o", "/proc/none/poems.txt"], None), ([*sample, "-o", folder], None),
        (["check"], ""), (["check"], "abc\n"), (["check", "--file", folder], None),
        (["check", "--file", str(bad_utf8)], None), (["check", "--file", str(tmp / "none.txt")], None),
        (["check", "--file", str(empty)], None), (["check", "一", "二"], None),
        (["check", "-c", str(text), "一"], None),
        (["check", "--data-dir", folder, "一"], None),
        (["eval"], None), (["eval", "--split", "val", "--file", str(empty)], None), (["eval", "--split", "dev"], None),
        (["eval", "--file", folder], None),
        (["eval", "--file", str(bad_utf8)], None),
        (["eval", "--file", str(empty)], None),
        (["eval", "--split", "val", "--data-dir", folder], None),
        (["eval", "--device", "tpu", "--file", str(empty)], None),
        (["info", "-c", str(text)], None), (["info", "-c", folder], None), (["info", "-c", str(tmp / "none.pt")], None),
        (["export"], None), (["export", "-c", str(text), "-o", str(tmp / "x.pt")], None),
        (["corpus", "stats", "--data-dir", folder], None), (["corpus", "build", "--data-dir", folder], None),
        (["corpus", "build", "--data-dir", str(tmp / "d2"), "--from", str(bad_utf8)], None),
        (["corpus", "build", "--data-dir", str(tmp / "d3"), "--from", str(pkg), "--script", "klingon"], None),
        (["corpus", "build", "--data-dir", str(tmp / "d4"), "--from", str(pkg), "--min-count", "0"], None),
        (["corpus", "prepare", "--data-dir", "/proc/none"], None), (["corpus", "fetch", "--from", folder], None),
        ([*train, str(out_file)], None),
        ([*train, "/proc/none/run"], None),
        ([*train, str(tmp / "r1"), "--lr", "nan"], None),
        ([*train, str(tmp / "r2"), "--lr", "inf"], None), ([*train, str(tmp / "r3"), "--clip", "nan"], None),
        ([*train, str(tmp / "r4"), "--weight-decay", "nan"], None), ([*train, str(tmp / "r5"), "--seed", big], None),
        ([*train, str(tmp / "r6"), "--batch-size", "0"], None), ([*train, str(tmp / "r7"), "--bptt", "-1"], None),
        ([*train, str(tmp / "r8"), "--preset", "huge"], None),
        ([*train, str(tmp / "r9"), "--cell", "transformer"], None),
        ([*train, str(tmp / "r10"), "--dropout", "1"], None), ([*train, str(tmp / "r11"), "--max-minutes", "0"], None),
        ([*train, str(tmp / "r12"), "--init-from", str(text)], None), ([*train, str(tmp / "r13"), "--resume"], None),
        ([*train, str(tmp / "r14"), "--precision", "fp8"], None),
        ([*train, str(tmp / "r15"), "--device", "cuda:9"], None),
        (["train", "--data-dir", folder, "--out", str(tmp / "r16")], None),
        ([*train, str(tmp / "r17"), "--train-split", "song"], None),  # no 全宋诗 prepared
        ([*train, str(tmp / "r18"), "--train-split", "val"], None),
        ([*train, str(tmp / "r19"), "--char-dropout", "nan"], None),
        ([*train, str(tmp / "r20"), "--weight-drop", "-0.1"], None),
        ([*train, str(tmp / "r21"), "--sampled-softmax", "-1"], None),
        ([*train, str(tmp / "r22"), "--sampled-softmax", "many"], None),
        (["corpus", "build", "--data-dir", str(tmp / "d5"), "--from", str(pkg), "--with-song"], None),  # no Song files
        (["eval", "--split", "song"], None),
        (["check", "《静夜思》"], None), (["sample", "--acrostic", "春" * 28, "--max-chars", "20"], None),
        ([*sample, "--keywords", ""], None), ([*sample, "--keywords", "秋月,abc"], None),
        ([*sample, "--keywords", "一二三四五"], None), ([*sample, "--keywords", "秋月", "--prompt", "春"], None),
        ([*sample, "--keywords", "秋月", "--no-plan"], None),
        ([*sample, "--form", "wujue", "--keywords", "一,二,三,四,五"], None),
        ([*sample, "--form", "qijue", "--keywords", "月,月明,明月"], None),
        ([*sample, "--form", "wujue", "--strict", "--keywords", "明月,月"], None),
        ([*sample, "--keywords", "一,二,三,四", "--max-chars", "7"], None),
    ]
    for n, content in enumerate((b"", b"\n \n", b'{"title": "x"}\n', b'{"body": 1}\n', b'["x"]\n', b"abc\n\nxyz\n",
                                 "一二三四五，六七八九十。\n".encode(), ("一" * 30_000).encode(), b"\xff\xfe")):
        mine = tmp / f"mine{n}.txt"  # a user's file of poems that cannot make a corpus
        mine.write_bytes(content)
        out.append((["corpus", "build", "--from", str(mine), "--data-dir", str(tmp / f"u{n}")], None))
    flipped = tmp / "flipped.pt"  # the shipped model with one bit of one weight flipped
    data = bytearray(default_checkpoint().read_bytes())
    with zipfile.ZipFile(default_checkpoint()) as archive:
        part = max(archive.infolist(), key=lambda i: i.file_size)
    data[part.header_offset + 30 + len(part.filename.encode()) + len(part.extra) + part.file_size // 2] ^= 4
    flipped.write_bytes(bytes(data))
    out += [([*sample, "-c", str(flipped)], None), (["info", "-c", str(flipped)], None),
            (["check", "-c", str(flipped), "一"], None),
            (["export", "-c", str(flipped), "-o", str(tmp / "f.pt")], None)]
    return out


def scenarios(tmp: Path, pkg: Path, data: Path) -> list[tuple[str, str, object]]:
    """(name, bash command line, verdict(proc) -> problem or None). $P is the real CLI."""
    model = tmp / "m.pt"
    subprocess.run([sys.executable, "-m", "poetgen", "train", "--data-dir", str(data), "--out", str(tmp / "seed"),
                    "--hidden-size", "16", "--emb-size", "8", "--batch-size", "4", "--bptt", "8", "--max-steps",
                    "2", "--quiet"], check=True, capture_output=True)
    model.write_bytes((tmp / "seed" / "best.pt").read_bytes())
    kept = tmp / "kept.pt"
    kept.write_bytes(b"the previous file")
    tiny = f"--data-dir {data} --hidden-size 16 --emb-size 8 --batch-size 4 --bptt 8"
    poem = "白日依山尽 黄河入海流 欲穷千里目 更上一层楼"

    def one_line(code):
        def verdict(p):
            err = p.stderr.decode("utf-8", "replace").strip().splitlines()
            if b"Traceback" in p.stderr:
                return "traceback"
            if p.returncode != code:
                return f"exit {p.returncode}, not {code}"
            return None if len(err) == 1 else f"{len(err)} stderr lines"
        return verdict

    def no_traceback(p):
        return "traceback" if b"Traceback" in p.stderr else None

    def kept_intact(p):
        return None if kept.read_bytes() == b"the previous file" and p.returncode != 0 else "export replaced the file"

    def no_last(p):
        last = tmp / "div" / "last.pt"
        return "a NaN state was saved" if last.exists() else ("traceback" if b"Traceback" in p.stderr else None)

    def double_signal(p):
        import torch

        path = tmp / "dbl" / "last.pt"
        if b"Traceback" in p.stderr or not path.exists():
            return "no last.pt after two signals"
        state = torch.load(path, weights_only=True)["train_state"]
        return None if isinstance(state.get("step"), int) else "last.pt without a step"

    def corpus_whole(p):
        d = tmp / "kill"
        probe = subprocess.run([sys.executable, "-m", "poetgen", "corpus", "stats", "--data-dir", str(d), "--json"],
                               capture_output=True)
        return None if probe.returncode == 0 else "no corpus after a kill: " + probe.stderr.decode()[-120:]

    def saves_whole(p):
        from poetgen import checkpoint

        path = tmp / "killed" / "last.pt"
        if not path.exists():
            return "no last.pt after kills"
        try:
            checkpoint.read(path)
        except Exception as e:  # noqa: BLE001
            return f"last.pt unreadable after a kill: {e}"
        return None

    def poems_whole(p):
        text = (tmp / "poems.txt").read_text(encoding="utf-8")
        return None if text == "old\n" or text.count("\n\n") == 49 else "a half-written -o file"

    # the first run is killed once it has saved (its start takes 5-6 s on a slow 2-core VM), the resumed
    # ones at fixed times around their own saves
    saved = f"for _ in $(seq 600); do [ -s {tmp / 'killed' / 'last.pt'} ] && break; sleep 0.1; done; sleep 0.4"
    train_kills = " ".join(f"($P train {tiny} --out {tmp / 'killed'} --max-steps 100000 --eval-every 3 --quiet "
                           f"{'--resume' if i else ''} & pid=$!; {saved if i == 0 else f'sleep {t}'}; kill -9 $pid; "
                           "wait $pid);" for i, t in enumerate(("0", "6.3", "6.6", "6.9", "7.2", "7.5")))
    sample_kills = " ".join(f"($P sample --form wujue --num 50 --best-of 1 -o {tmp / 'poems.txt'} & pid=$!; "
                            f"sleep {t}; kill -9 $pid; wait $pid);" for t in ("3", "4", "5", "6", "7"))
    kills = " ".join(f"(setsid $P corpus build --from {pkg} --data-dir {tmp / 'kill'} --script traditional --quiet & "
                     f"pid=$!; sleep {t}; kill -9 -$pid 2>/dev/null; wait $pid);" for t in
                     ("0.3", "0.6", "0.9", "1.2", "1.5", "1.8", "2.1", "2.4"))
    def interrupted_export(p):
        trials = list(tmp.glob(".int.pt.*.tmp"))
        if trials:
            return f"trial files left: {[t.name for t in trials]}"
        text, err = (tmp / "int.pt").read_bytes(), p.stderr.decode("utf-8", "replace")
        if "interrupted" in err:  # stopped by us: the old file stays
            return None if p.returncode == 130 and text == b"old\n" else "interrupted, yet the old file was replaced"
        if "wrote" in err and text != b"old\n":  # done; a signal in the process's last moments may still end
            return None if p.returncode in (0, 130) else f"exit {p.returncode}"  # it (the work is whole)
        return f"exit {p.returncode}, the file {'kept' if text == b'old' + bytes([10]) else 'replaced'}"

    def links_said(p):
        if b"hard link" not in p.stderr:
            return "no word of the broken hard link"
        return None if (tmp / "twin.txt").read_text() == "old\n" else "the other link changed"

    return [
        *((f"export: SIGINT at {t} s", f"echo old > {tmp / 'int.pt'}; $P export -c {model} -o {tmp / 'int.pt'} "
           f"--data-dir {data} & pid=$!; sleep {t}; kill -INT $pid; wait $pid", interrupted_export)
          for t in (1, 2, 3)),
        ("sample -o over a file with another hard link", f"echo old > {tmp / 'one.txt'}; ln -f {tmp / 'one.txt'} "
         f"{tmp / 'twin.txt'}; $P sample --form wujue --seed 1 -o {tmp / 'one.txt'}", links_said),
        ("check: an argument not UTF-8", "$P check $'白日依山尽\\xff'", one_line(2)),
        ("sample: a prompt not UTF-8", "$P sample --prompt $'\\xff'", one_line(2)),
        ("check: a C locale", f"LC_ALL=C PYTHONUTF8=0 PYTHONCOERCECLOCALE=0 $P check -c {model} {poem}", no_traceback),
        ("check: PYTHONIOENCODING=ascii", f"PYTHONIOENCODING=ascii $P check -c {model} {poem}", no_traceback),
        ("--version into a closed stdout", "$P --version >&-", one_line(1)),
        ("--help into a full disk", "$P --help >/dev/full", one_line(1)),
        ("corpus stats into a full disk", f"$P corpus stats --data-dir {data} >/dev/full", one_line(1)),
        ("train: --lr 20", f"$P train {tiny} --out {tmp / 'lr20'} --max-steps 3 --lr 20 --quiet", no_traceback),
        ("train: a NaN validation", f"$P train {tiny} --out {tmp / 'div'} --max-steps 5 --lr 1e30 --warmup-steps 0 "
         "--eval-every 1 --quiet", no_last),
        ("train: --hidden-size 1000000", f"$P train {tiny} --out {tmp / 'huge'} --max-steps 1 --hidden-size 1000000",
         one_line(2)),
        ("train: --bptt 100000000", f"$P train {tiny} --out {tmp / 'bptt'} --max-steps 1 --bptt 100000000",
         one_line(2)),
        ("sample: a prompt of 5,000 characters", "$P sample --prompt $(printf '春%.0s' $(seq 5000))", one_line(2)),
        ("export: no corpus to measure on", f"$P export -c {model} -o {kept} --data-dir {tmp / 'empty'}", kept_intact),
        ("train: two SIGINTs 30 ms apart", f"$P train {tiny} --out {tmp / 'dbl'} --max-steps 100000 --log-every 5 "
         f"--quiet & pid=$!; until [ -s {tmp / 'dbl' / 'metrics.jsonl'} ]; do sleep 0.1; done; "
         "kill -INT $pid; sleep 0.03; kill -INT $pid; wait $pid", double_signal),
        ("train: SIGKILL at six points, saving every 3 steps", f"{train_kills} true", saves_whole),
        ("sample -o: SIGKILL at five points", f"echo old > {tmp / 'poems.txt'}; {sample_kills} true", poems_whole),
        ("corpus build: SIGKILL at eight points", f"$P corpus build --from {pkg} --data-dir {tmp / 'kill'} --script "
         f"traditional --quiet; {kills} true", corpus_whole),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--only", choices=("commands", "scenarios"), help="run one of the two parts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pkg = make_corpus(tmp / "pkg", poems=200)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "poetgen", "corpus", "build", "--from", str(pkg), "--data-dir",
                        str(data), "--script", "traditional", "--quiet"], check=True)
        problems = 0
        all_cases = cases(tmp, pkg, data) if args.only != "scenarios" else []
        for argv, stdin in all_cases:
            proc = subprocess.run([sys.executable, "-m", "poetgen", *argv], input=stdin, capture_output=True,
                                  text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
            err = proc.stderr.strip().splitlines()
            issue = None
            if "Traceback" in proc.stderr:
                issue = "traceback"
            elif proc.returncode == 0:
                issue = "exit 0"
            elif len(err) != 1 and not (argv[0] == "check" and proc.returncode == 1 and not err):
                issue = f"{len(err)} stderr lines"
            if issue:
                problems += 1
            if issue or args.verbose:
                print(json.dumps({"argv": argv, "rc": proc.returncode, "problem": issue,
                                  "stderr": proc.stderr.strip()[-300:]}, ensure_ascii=False), flush=True)
        env = {**os.environ, "NO_COLOR": "1", "P": f"{sys.executable} -m poetgen"}
        all_scenarios = scenarios(tmp, pkg, data) if args.only != "commands" else []
        for name, command, verdict in all_scenarios:
            proc = subprocess.run(["bash", "-c", command], capture_output=True, timeout=600, env=env)
            issue = verdict(proc)
            if issue:
                problems += 1
            if issue or args.verbose:
                print(json.dumps({"scenario": name, "rc": proc.returncode, "problem": issue,
                                  "stderr": proc.stderr.decode("utf-8", "replace").strip()[-300:]},
                                 ensure_ascii=False), flush=True)
        print(json.dumps({"commands": len(all_cases), "scenarios": len(all_scenarios), "problems": problems}))


if __name__ == "__main__":
    main()
