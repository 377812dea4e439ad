"""`poetgen sample`: text, JSON and JSONL output and --output, seeds, refusals, the device, best-of-N
with and without pruning, the int8 path, pipes, and the progress bar in a terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from cli_helpers import runner

from poetgen import checkpoint
from poetgen.cli import app
from poetgen.forms import FORMS
from poetgen.sample import SampleOptions


def test_cli_text_json_jsonl_and_output(ckpt, tmp_path):
    text = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--num", "3", "--seed", "5"])
    assert text.exit_code == 0, text.stderr
    poems = text.stdout.strip("\n").split("\n\n")
    assert len(poems) == 3 and all(len(p.split("\n")) == 5 for p in poems)  # the model's title, then 4 lines
    assert text.stderr == ""
    same = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--num", "3", "--seed", "5",
                               "--format", "jsonl"])
    titles = [json.loads(line)["title"] for line in same.stdout.splitlines()]
    assert [p.split("\n")[0] for p in poems] == [f"《{t}》" for t in titles]
    given = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "七绝", "--seed", "5", "--title", "汉"])
    assert given.stdout.strip().split("\n")[0] == "《汉》" and len(given.stdout.strip().split("\n")) == 5  # echoed
    js = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue", "--num", "2", "--seed", "5",
                             "--format", "json"])
    records = json.loads(js.stdout)
    assert len(records) == 2
    inner = js.stdout.strip().split("\n")[1:-1]
    assert inner[0] == " {" and all(line.startswith(" ") for line in inner)  # each record nested under the [
    for r in records:
        assert {"text", "lines", "prompt", "seed", "temperature", "logprob", "form"} <= set(r)
        assert "".join(r["lines"]) == r["text"] and r["seed"] == 5
    jl = runner.invoke(app, ["sample", "-c", str(ckpt), "--num", "2", "--seed", "5", "--format", "jsonl"])
    assert [json.loads(line)["index"] for line in jl.stdout.splitlines()] == [0, 1]
    out = tmp_path / "poems.txt"
    written = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--num", "3", "--seed", "5",
                                  "--output", str(out)])
    assert written.exit_code == 0 and written.stdout == ""
    assert out.read_text(encoding="utf-8") == text.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["poems.txt"]  # no temp file left


def test_cli_same_seed_same_output_and_traditional_input(ckpt):
    a = runner.invoke(app, ["sample", "-c", str(ckpt), "--prompt", "漢", "--seed", "9"])
    b = runner.invoke(app, ["sample", "-c", str(ckpt), "--prompt", "汉", "--seed", "9"])
    assert a.exit_code == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.split("\n")[1].startswith("汉")


def test_a_drawn_seed_is_shown_and_makes_the_poems_again(ckpt):
    drawn = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue"])
    assert drawn.exit_code == 0, drawn.output
    seed = drawn.stderr.split()[1]
    again = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "wujue", "--seed", seed])
    assert again.stdout == drawn.stdout and again.stderr == ""  # a given seed is not echoed


@pytest.mark.parametrize("args, needle", [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "3.4028235677973366e+38"], "--temperature"),  # overflows float32 to inf
    (["--seed", str(2**64)], "--seed"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--num", "0"], "--num"),
    (["--form", "sonnet"], "unknown form"),
    (["--form", "qijue", "--acrostic", "春风"], "4 lines"),
    (["--form", "wujue", "--prompt", "春风，"], "--prompt does not fit"),
    (["--form", "wujue", "--prompt", "春春春春春，春春春春春。" * 2 + "春"], "longer than the poem"),
    (["--form", "wujue", "--acrostic", "春风春风", "--prompt", "汉"], "acrostic head"),
    (["--prompt", "龘"], "not in the model's vocabulary: '龘'"),
    (["--form", "wujue", "--prompt", "spring"], "takes Chinese characters (and the marks ，。？！), not 'spring'"),
    (["--prompt", "春 风"], "not ' '"),  # a space, named where it can be seen
    (["--form", "wujue", "--rhyme", "东风"], "--rhyme takes one character"),
    (["--format", "xml"], "unknown format"),
])
def test_cli_bad_inputs(ckpt, args, needle):
    result = runner.invoke(app, ["sample", "-c", str(ckpt), *args])
    assert result.exit_code == 2, (args, result.stderr)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_cli_missing_and_foreign_checkpoints(tmp_path, prepared):
    """A missing or foreign model is bad input: exit 2 in every command that reads one, as in check."""
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    for path, needle in [(tmp_path / "none.pt", "no checkpoint"), (foreign, "not a poetgen checkpoint")]:
        for args in (["sample", "-c", str(path)], ["info", "-c", str(path)], ["check", "-c", str(path), "一二三"],
                     ["eval", "-c", str(path), "--split", "val", "--data-dir", str(prepared)],
                     ["export", "-c", str(path), "-o", str(tmp_path / "out.pt"), "--no-test"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.stderr, args


def test_sample_device_cpu_is_the_default_and_an_absent_gpu_is_refused(ckpt, monkeypatch):
    args = ["sample", "-c", str(ckpt), "--form", "wujue", "--num", "2", "--seed", "4"]
    plain = runner.invoke(app, args)
    on_cpu = runner.invoke(app, [*args, "--device", "cpu"])
    assert plain.exit_code == on_cpu.exit_code == 0 and plain.stdout == on_cpu.stdout
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr and result.stdout == ""
    result = runner.invoke(app, [*args, "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device" in result.stderr


def test_cli_best_of_and_no_rhyme(ckpt):
    from poetgen.sample import Generator

    loaded = checkpoint.load(ckpt)
    plain = Generator(loaded.model, loaded.vocab, loaded.meta.script).generate(
        SampleOptions(form=FORMS["qijue"], seed=4, num=2, best_of=3, search="poem"))
    result = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--seed", "4", "--num", "2",
                                 "--best-of", "3", "--search", "poem", "--no-rhyme", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == [p.body for p in plain]  # --no-rhyme: the plain model's poems
    assert all(r["best_of"] == 3 and r["score"] == pytest.approx(p.score, abs=1e-3)  # the CLI samples in int8
               for r, p in zip(records, plain, strict=True))
    bad = runner.invoke(app, ["sample", "-c", str(ckpt), "--best-of", "0"])
    assert bad.exit_code == 2 and "--best-of" in bad.stderr


def test_cli_no_prune_writes_the_best_of_all_candidates(ckpt):
    from poetgen.sample import Sampler, sample_request

    request = sample_request(form="qijue", seed=6, num=3, score="logprob", prune=False, search="poem", best_of=8)
    sampler = Sampler(checkpoint.load(ckpt), request, int8=True)  # as the CLI does
    every = sampler.generator.candidates(sampler.options, 8, verse=sampler.rules)
    best = [max(every[p * 8:(p + 1) * 8], key=lambda c: c.score).body for p in range(3)]

    def records(*extra):
        result = runner.invoke(app, ["sample", "-c", str(ckpt), "--form", "qijue", "--seed", "6", "--num", "3",
                                     "--score", "logprob", "--search", "poem", "--best-of", "8", "--format", "jsonl",
                                     *extra])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    full, pruned = records("--no-prune"), records()
    assert [r["text"] for r in full] == best
    assert all(r["prune"] is False for r in full) and all(r["prune"] is True for r in pruned)
    assert all(r["prune"] is False for r in records("--best-of", "3"))  # under sample.CUT_MIN: nothing pruned
    assert all(r["search"] == "poem" for r in full)
    assert all(r["text"] in {c.body for c in every[i * 8:(i + 1) * 8]} for i, r in enumerate(pruned))


def test_through_the_cli_and_its_int8_path_a_poem_is_the_same_whatever_is_drawn_beside_it(tiny_checkpoint):
    """The default path (int8 on a CPU, the critic-free tiny model, best of 8): poem 0 of --num 1 is poem 0
    of --num 6 (48 candidate rows), record for record, score included."""
    def records(num):
        result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "qijue", "--num", str(num),
                                     "--seed", "8", "--format", "jsonl"])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    six = records(6)
    assert records(1) == six[:1] and records(3) == six[:3]


def test_piping_into_head_ends_quietly(ckpt):
    cmd = f"{sys.executable} -m poetgen sample -c {ckpt} --num 200 --form qilv --seed 1 | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_in_a_terminal_sample_shows_the_load_and_a_moving_bar_and_stdout_keeps_the_poems(tiny_checkpoint, fmt,
                                                                                         tmp_path):
    """Through a pseudo-terminal on stderr (stdout a file, as in `poetgen sample … > poems.txt` typed
    in a terminal): a spinner while the model loads, then the bar to the end; and every poem on stdout
    (0.5 let the bar take them to the terminal)."""
    import os
    import selectors
    import time

    pytest.importorskip("pty")  # POSIX: where the terminal handling is tested
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items()  # nothing that tells rich or poetgen the terminal is not one
           if k not in ("NO_COLOR", "TERM", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_TERMINAL")}
    with open(tmp_path / "poems.out", "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "poetgen", "sample", "-c", str(tiny_checkpoint), "--form",
                                 "qijue", "--num", "20", "--seed", "1", "--format", fmt], stdout=stdout,
                                stderr=slave, env={**env, "TERM": "xterm"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 120
    with selectors.DefaultSelector() as sel:
        sel.register(master, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=1):
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
    proc.wait(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    out = (tmp_path / "poems.out").read_text()
    assert proc.returncode == 0
    assert "loading the model" in shown
    assert shown.index(" 0/20") < shown.index("20/20")
    poems = out.splitlines() if fmt == "jsonl" else out.split("\n\n")
    assert len(poems) == 20 and "《" not in shown and '"text"' not in shown  # all on stdout, none on the terminal


def test_the_bar_hears_each_character_and_each_batch(monkeypatch):
    """_write_batches: the bar from 0, each tick of the library (a share of a poem), each batch's end."""
    from poetgen.cli.commands import sample as command

    calls = []

    class Recorder:
        def __init__(self, quiet):
            pass

        def __enter__(self):
            return lambda stage, done, total: calls.append((done, total))

        def __exit__(self, *exc):
            return False

    def batches(tick):  # two batches of one poem each
        tick(0.7)
        yield ["poem 0"]
        tick(1.4)
        tick(2.0)  # the last character of the last batch: the batch's end says done
        yield ["poem 1"]

    monkeypatch.setattr(command, "StageProgress", Recorder)
    command._write_batches(batches, lambda batch, start: "", "text", None, "drawing", 2, True)
    assert calls == [(0, 2), (0.7, 2), (1, 2), (1.4, 2), (pytest.approx(1.999), 2), (2, 2)]
