"""Faults through the CLI: bad input gives one line on stderr and a non-zero exit, never a traceback;
interrupted or colliding work never loses or mixes data.

In-process (typer's CliRunner) where the process does not matter; a real `python -m poetgen` where it
is the point: signals, closed or full stdout and stdin, pipes whose reader goes away."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import ALPHABET
from typer.testing import CliRunner

from poetgen import checkpoint, corpus
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app
from poetgen.errors import CorpusError
from poetgen.forms import FORMS, detect_form
from poetgen.model import ModelConfig
from poetgen.vocab import SPECIALS, Vocab

runner = CliRunner()


def cli(*args: str, input: bytes | str | None = None):
    """Run the CLI in this process: exit_code, stdout and stderr (str)."""
    return runner.invoke(app, list(args), input=input)


def real_poetgen(*args: str, input: bytes | None = None, timeout: float = 120):
    """Run the real CLI in a subprocess (where the process itself is the point)."""
    return subprocess.run([sys.executable, "-m", "poetgen", *args], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


POETGEN = f"{sys.executable} -m poetgen"


def shell(command: str, input: bytes | None = None, timeout: float = 120):
    """A bash command line with pipefail (the real CLI is {POETGEN} in it): redirections, pipes."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def one_line_error(result) -> bool:
    """A subprocess's or a CliRunner result's stderr is one line of ours, no traceback."""
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    return "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("poetgen: error:")


# --- output files ---------------------------------------------------------------------------------

def test_output_writes_through_a_symlink_and_into_special_files(tiny_checkpoint, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    result = cli("sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--seed", "1", "-o", str(link))
    assert result.exit_code == 0, result.stderr
    lines = target.read_text(encoding="utf-8").strip().splitlines()
    assert link.is_symlink() and len(lines) == 5 and detect_form("".join(lines[1:])) == "五绝"  # title + 4 lines
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", os.devnull)
    assert result.exit_code == 0 and result.stdout == "" and stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_an_output_that_is_an_input_is_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "m.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    result = cli("sample", "-c", str(copy), "-o", str(copy))
    assert result.exit_code == 2 and one_line_error(result)
    result = cli("export", "-c", str(copy), "-o", str(copy), "--no-test")
    assert result.exit_code == 2 and one_line_error(result)
    assert copy.read_bytes() == tiny_checkpoint.read_bytes()


def test_a_checkpoint_never_replaces_a_device(tiny_checkpoint):
    result = cli("export", "-c", str(tiny_checkpoint), "-o", os.devnull, "--no-test")
    assert result.exit_code == 1 and one_line_error(result) and "not a regular file" in result.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


# Real processes whose stdout is full, closed or a pipe that closes early: `corpus stats` (no torch, quick)
# in every run, the commands that load a model under -m slow (tests/test_sample.py pipes `sample` too).
WRITERS = [pytest.param("corpus stats --data-dir {prepared}", id="stats"),
           pytest.param("info -c {model}", id="info", marks=pytest.mark.slow),
           pytest.param("sample -c {model} --num 50 --best-of 1 --seed 1", id="sample", marks=pytest.mark.slow)]


def test_full_disk_on_output_is_one_line(tiny_checkpoint):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = cli("sample", "-c", str(tiny_checkpoint), "--seed", "1", "-o", "/dev/full")
    assert result.exit_code == 1 and one_line_error(result) and "space" in result.stderr


@pytest.mark.parametrize("command", WRITERS)
def test_a_full_or_closed_stdout_is_one_line(tiny_checkpoint, prepared, command):
    command = command.format(model=tiny_checkpoint, prepared=prepared)
    if os.path.exists("/dev/full"):
        full = shell(f"{POETGEN} {command} > /dev/full")
        assert full.returncode == 1 and one_line_error(full) and b"space" in full.stderr, full.stderr
    closed = shell(f"{POETGEN} {command} >&-")
    assert closed.returncode == 1 and one_line_error(closed), closed.stderr


# --- corpus ---------------------------------------------------------------------------------------

def test_an_interrupted_rebuild_leaves_no_mixed_corpus(synthetic_package, tmp_path, monkeypatch):
    data = tmp_path / "data"
    corpus.build(data, synthetic_package, script="traditional", min_count=1)
    real_replace = os.replace
    moved = []

    def crash_after_two(src, dst):
        if len(moved) == 2:
            raise OSError(28, "No space left on device")
        moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(corpus.os, "replace", crash_after_two)
    with pytest.raises(CorpusError, match="No space left.*finishes the move"):
        corpus.build(data, synthetic_package, script="traditional", min_count=3)
    monkeypatch.setattr(corpus.os, "replace", real_replace)
    assert len(moved) == 2 and not (data / "meta.json").exists()  # no reader takes the half-moved corpus
    result = cli("corpus", "stats", "--data-dir", str(data), "--json")  # the next command finishes the move
    assert result.exit_code == 0, result.stderr
    assert not list(data.glob(".build-*")) and json.loads(result.stdout)["vocab_size"] > 0
    assert corpus.load_meta(data)["min_count"] == 3


def test_a_mixed_corpus_is_detected(prepared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in prepared.iterdir():
        if f.is_file():
            (data / f.name).write_bytes(f.read_bytes())
    (data / "vocab.json").write_text(json.dumps([*SPECIALS, "天"]), encoding="utf-8")
    for args in (["corpus", "stats"], ["train", "--out", str(tmp_path / "r"), "--max-steps", "1"]):
        result = cli(*args, "--data-dir", str(data))
        assert result.exit_code == 1 and one_line_error(result) and "mixed" in result.stderr, args


# --- training -------------------------------------------------------------------------------------

TINY_RUN = ["--hidden-size", "16", "--emb-size", "8", "--batch-size", "4", "--bptt", "8", "--eval-every", "100000",
            "--log-every", "5"]


def signal_at_step(monkeypatch, sig: int, step: int) -> list[str]:
    """Send `sig` to this process after the training step `step` (once the trainer's handler is in place;
    the list gets the handler that was found there, so a missing one fails the test, not the process)."""
    from poetgen import train

    real_step, found = train.Trainer._train_step, []

    def step_then_signal(self, lr):
        out = real_step(self, lr)
        if self.step == step and not found:  # self.step counts the finished steps, this one included
            handler = signal.getsignal(sig)
            found.append(getattr(handler, "__qualname__", repr(handler)))
            if callable(handler):
                os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(train.Trainer, "_train_step", step_then_signal)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signals_save_last_pt_and_the_run_resumes(prepared, tmp_path, monkeypatch, sig):
    """In this process, each stop signal at step 7: exit 130, last.pt at that step, the way on in one line."""
    out = tmp_path / "run dir"
    found = signal_at_step(monkeypatch, sig, 7)
    result = cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "100000", *TINY_RUN)
    assert found == ["_StopRequest._handle"], found
    assert result.exit_code == 130, result.stderr
    assert "Traceback" not in result.stderr and "Resume with: poetgen train --out" in result.stderr
    assert f"stopped by {signal.Signals(sig).name} at step 7" in result.stderr and "--data-dir" in result.stderr
    assert f"'{out}'" in result.stderr  # the path with a space is quoted
    assert "error" not in result.stderr.strip().splitlines()[-1]  # a stop asked for is not an error
    assert checkpoint.read(out / "last.pt").train_state["step"] == 7
    monkeypatch.undo()
    resumed = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps", "10", "--quiet",
                  "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 10


def test_a_signal_to_a_real_training_process_saves_and_the_run_resumes_exactly(prepared, tmp_path):
    """SIGTERM to a real `poetgen train` at whatever moment it arrives (in a step, in a validation):
    exit 130 with the way on, and the resumed run ends with the same weights as a run never stopped.
    (SGD's rate does not depend on --max-steps, so the stopped run can be open-ended.)"""
    run = ["--data-dir", str(prepared), "--optimizer", "sgd", "--lr", "0.5", "--hidden-size", "16", "--emb-size",
           "8", "--batch-size", "4", "--bptt", "8", "--eval-every", "10", "--log-every", "1", "--quiet"]
    out = tmp_path / "run dir"
    proc = subprocess.Popen([sys.executable, "-m", "poetgen", "train", "--out", str(out), "--max-steps", "100000",
                             *run], stderr=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and (
            not metrics.exists() or metrics.read_text().count('"event": "log"') < 5):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err and "Resume with: poetgen train --out" in err
    assert f"'{out}'" in err  # the path with a space is quoted
    stopped_at = checkpoint.read(out / "last.pt").train_state["step"]
    assert stopped_at >= 5
    end = str(stopped_at + 12)
    resumed = cli("train", "--out", str(out), "--resume", "--data-dir", str(prepared), "--max-steps", end, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    straight = cli("train", "--out", str(tmp_path / "straight"), *run, "--max-steps", end)
    assert straight.exit_code == 0, straight.stderr
    a, b = checkpoint.read(tmp_path / "straight" / "last.pt"), checkpoint.read(out / "last.pt")
    assert a.meta.step == b.meta.step == int(end)
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k


@pytest.mark.parametrize("args", [["--lr", "inf"], ["--lr", "nan"], ["--clip", "nan"], ["--weight-decay", "nan"],
                                  ["--seed", str(2**64)], ["--max-minutes", "-1"], ["--batch-size", "0"]])
def test_impossible_training_values_are_refused_before_training(prepared, tmp_path, args):
    result = cli("train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--max-steps", "2",
                 *TINY_RUN, *args)
    assert result.exit_code == 2 and one_line_error(result), (args, result.stderr)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_diverging_run_stops_with_a_message(prepared, tmp_path):
    result = cli("train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--max-steps", "50",
                 "--lr", "1e30", "--warmup-steps", "0", "--clip", "1e30", *TINY_RUN)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("poetgen: error: the loss became nan")


def test_out_that_is_a_file_is_refused(prepared, tmp_path):
    (tmp_path / "f").write_text("x")
    result = cli("train", "--out", str(tmp_path / "f"), "--data-dir", str(prepared), "--max-steps", "1")
    assert result.exit_code == 2 and one_line_error(result) and "is a file" in result.stderr


def test_resume_keeps_the_schedule(prepared, tmp_path):
    out = tmp_path / "run"
    first = cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "20", *TINY_RUN,
                "--warmup-steps", "2", "--quiet")
    assert first.exit_code == 0, first.stderr
    ckpt = checkpoint.read(out / "last.pt")
    assert ckpt.train_state["schedule_steps"] == 20
    more = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps", "25", "--quiet")
    assert more.exit_code == 0, more.stderr
    assert checkpoint.read(out / "last.pt").train_state["schedule_steps"] == 20  # not refitted to 25
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()
           if '"event": "log"' in line]
    assert lrs[-1] <= lrs[-2] + 1e-12  # no jump back up

# --- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--temperature", "1e-40"], ["--top-p", "1e-300"],
                                  ["--temperature", "1e-40", "--top-p", "1e-300"]])
def test_extreme_settings_keep_the_form(tiny_checkpoint, args):
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--num", "3", "--seed", "1",
                                 "--title", ALPHABET[0], "--format", "jsonl", *args])
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        assert detect_form(json.loads(line)["text"]) == "五绝"


def test_a_long_free_prompt_is_kept_verbatim(tiny_checkpoint):
    prompt = "".join(ALPHABET[i % 40] for i in range(300)) + "。"
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--prompt", prompt, "--seed", "1", "--format",
                                 "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith(prompt)


def test_prompt_accepts_ascii_punctuation(tiny_checkpoint):
    prompt = "".join(ALPHABET[:5]) + ","
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--form", "wujue", "--prompt", prompt, "--seed",
                                 "1", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith(prompt[:-1] + "，")


SAMPLE_ARGS = st.fixed_dictionaries({}, optional={
    "--temperature": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-40])),
    "--top-p": st.floats(allow_nan=True, allow_infinity=True),
    "--top-k": st.integers(-5, 100),
    "--num": st.integers(-2, 6),
    "--seed": st.integers(-5, 2**70),
    "--form": st.sampled_from(["free", "wujue", "qilv", "七绝", "sonnet", ""]),
    "--max-chars": st.integers(-1, 300),
    "--prompt": st.text(alphabet=ALPHABET[:40] + list("，。,.龘 "), max_size=12),
    "--acrostic": st.text(alphabet=ALPHABET[:40] + list("，a"), max_size=9),
})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(options=SAMPLE_ARGS)
def test_fuzzed_sample_arguments_give_poems_or_one_line(tiny_checkpoint, options):
    args = [x for k, v in options.items() for x in (k, str(v))]
    result = runner.invoke(app, ["sample", "-c", str(tiny_checkpoint), "--format", "jsonl", *args])
    assert result.exit_code in (0, 2), (args, result.exception, result.stderr)
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", (args, result.stderr)
        return
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all(r["text"] and r["text"][-1] in "。？！" for r in records), args
    form = options.get("--form")
    if form in FORMS or form == "七绝":
        name = FORMS[form].name if form in FORMS else form
        assert all(detect_form(r["text"]) == name for r in records), args


def test_too_many_poems_are_refused_before_loading(tiny_checkpoint, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(checkpoint, "load", no_loading)
    result = cli("sample", "-c", str(tiny_checkpoint), "--num", "100000")
    assert result.exit_code == 2 and one_line_error(result) and "--num" in result.stderr


# --- check ----------------------------------------------------------------------------------------

def test_check_input_faults(tmp_path, tiny_checkpoint):
    result = cli("check", "-c", str(tiny_checkpoint), input=b"\xff\xfe bad bytes\n")
    assert result.exit_code == 2 and one_line_error(result) and "UTF-8" in result.stderr
    result = cli("check", "-c", str(tiny_checkpoint), "--file", str(tmp_path))
    assert result.exit_code == 2 and one_line_error(result) and "folder" in result.stderr
    result = cli("check", "-c", str(tiny_checkpoint), "-", ALPHABET[1])
    assert result.exit_code == 2 and one_line_error(result) and "stdin" in result.stderr
    closed = shell(f"{POETGEN} check -c {tiny_checkpoint} <&-")  # a real process without a stdin
    assert closed.returncode == 2 and one_line_error(closed)


def test_check_keeps_its_verdict_when_the_reader_goes_away(tiny_checkpoint):
    poem = "，".join("".join(ALPHABET[i * 5:(i + 1) * 5]) for i in range(3)) + "。"
    many = ("\n\n".join([poem] * 5000) + "\n").encode()  # far more verdicts than a pipe holds
    proc = shell(f"{POETGEN} check -c {tiny_checkpoint} | head -n 1 > /dev/null; echo ${{PIPESTATUS[0]}}", input=many)
    assert proc.stdout.decode().strip() == "1", proc.stderr  # not regulated: the verdict, not 0
    assert b"Traceback" not in proc.stderr


def test_no_color_means_no_escape_codes(tiny_checkpoint, prepared):
    for args in (["info", "-c", str(tiny_checkpoint)], ["corpus", "stats", "--data-dir", str(prepared)]):
        result = cli(*args)  # NO_COLOR=1 (conftest)
        assert result.exit_code == 0 and "\x1b" not in result.stdout + result.stderr, args


# --- damaged checkpoints, full disks, read-only places, locks ---------------------------------------

def damaged_copies(tiny_checkpoint: Path, folder: Path) -> dict[str, Path]:
    """Five kinds of damage a checkpoint can have inside a valid file."""
    base = torch.load(tiny_checkpoint, weights_only=True)
    kinds = {
        "config": {**base, "model_config": {**base["model_config"], "hidden_size": 999}},
        "vocab_size": {**base, "vocab": base["vocab"][:-3]},
        "meta_type": {**base, "meta": {**base["meta"], "val": "fine", "step": "ten"}},
        "weights": {**base, "state_dict": {k: v[:1] for k, v in base["state_dict"].items()}},
        "missing": {k: v for k, v in base.items() if k != "vocab"},
    }
    paths = {}
    for name, payload in kinds.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(payload, paths[name])
    return paths


def test_damaged_checkpoints_are_one_line_everywhere(tiny_checkpoint, prepared, tmp_path):
    for kind, path in damaged_copies(tiny_checkpoint, tmp_path).items():
        for args in (["info", "-c", str(path)], ["info", "-c", str(path), "--json"],
                     ["sample", "-c", str(path), "--seed", "1"], ["check", "-c", str(path), "一二三"],
                     ["train", "--init-from", str(path), "--out", str(tmp_path / f"w-{kind}"), "--data-dir",
                      str(prepared), "--max-steps", "1"]):
            if args[0] == "check" and kind in ("config", "weights"):
                continue  # check reads the tone table only, which these leave intact
            result = runner.invoke(app, args)
            assert result.exit_code != 0, (kind, args, result.stdout)
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, (kind, args)
            assert result.stdout == "", (kind, args)
        run = tmp_path / f"r-{kind}"
        run.mkdir()
        (run / "last.pt").write_bytes(path.read_bytes())
        result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--data-dir", str(prepared)])
        assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1, (kind, result.stderr)


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_good_files(prepared, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "4",
                                *TINY_RUN, "--eval-every", "2", "--quiet"])
    assert first.exit_code == 0, first.stderr
    before = (out / "last.pt").read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2048 vs 1024")

    monkeypatch.setattr(torch, "save", full)
    result = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps",
                                 "8", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "disk is full" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (out / "last.pt").read_bytes() == before and not list(out.glob(".*.tmp"))


def test_read_only_places_are_one_line(tiny_checkpoint, prepared):
    for args in (["corpus", "prepare", "--data-dir", "/proc/poetgen-test"],
                 ["sample", "-c", str(tiny_checkpoint), "-o", "/proc/poetgen-test/poems.txt"],
                 ["train", "--out", "/proc/poetgen-test/run", "--data-dir", str(prepared), "--max-steps", "1"]):
        result = cli(*args)
        assert result.exit_code != 0 and one_line_error(result), (args, result.stderr)


def test_stop_while_best_pt_is_written_keeps_best_and_last_agreeing(prepared, tmp_path, monkeypatch):
    from poetgen.data import load_split
    from poetgen.train import Trainer, TrainingInterrupted

    vocab = Vocab.load(prepared / "vocab.json")
    cfg = __import__("poetgen.config", fromlist=["TrainConfig"]).TrainConfig(
        batch_size=4, bptt=8, max_steps=40, eval_every=5, warmup_steps=2, device="cpu", log_every=5)
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=16), cfg, vocab, load_split(prepared, "train"),
                      load_split(prepared, "val"), tmp_path / "run")
    real_save = checkpoint.save

    def save_then_interrupt(path, *args, **kwargs):
        if Path(path).name == "best.pt" and trainer.step >= 10:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of writing best.pt
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    best = checkpoint.read(tmp_path / "run" / "best.pt")
    last = checkpoint.read(tmp_path / "run" / "last.pt")
    assert best.meta.best_val_loss == last.train_state["best_val"] == last.meta.best_val_loss
    assert best.meta.step <= last.meta.step


def test_two_corpus_builds_on_one_folder_are_refused(synthetic_package, tmp_path):
    from poetgen.paths import exclusive_lock

    data = tmp_path / "data"
    with exclusive_lock(data, RuntimeError("busy")):
        result = real_poetgen("corpus", "build", "--from", str(synthetic_package), "--data-dir", str(data),
                              "--script", "traditional")  # another process: the lock is re-entrant within one
    assert result.returncode == 1 and one_line_error(result) and b"another poetgen" in result.stderr
    assert not (data / "meta.json").exists()


def test_stale_partial_downloads_are_removed(synthetic_package, tmp_path):
    data = tmp_path / "data"
    cache = data / "cache"
    (cache / ".download-abc123").mkdir(parents=True)
    (cache / ".download-abc123" / "chinese-poetry-2.0.1.tgz").write_bytes(b"x" * 1000)
    (cache / ".chinese-poetry-2.0.1.tgz.xyz.tmp").write_bytes(b"partial")
    corpus.fetch(data, synthetic_package)
    assert sorted(p.name for p in cache.iterdir()) == []


@pytest.mark.parametrize("command", WRITERS)
def test_readers_going_away_end_quietly(tiny_checkpoint, prepared, command):
    proc = shell(f"{POETGEN} {command.format(model=tiny_checkpoint, prepared=prepared)} | head -c 1 > /dev/null")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr


def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch, tiny_model, tiny_vocab):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    checkpoint.save(tmp_path / "m.pt", tiny_model, tiny_vocab, ModelMeta())
    assert events == ["fsync", "replace"]


def test_training_shows_signs_of_life_between_log_lines(prepared, tmp_path):
    from poetgen.config import TrainConfig
    from poetgen.data import load_split
    from poetgen.train import Trainer

    vocab = Vocab.load(prepared / "vocab.json")
    events = []
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=None, max_minutes=0.015, eval_every=10**6, log_every=10**6,
                      device="cpu")
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=32), cfg, vocab, load_split(prepared, "train"),
                      load_split(prepared, "val"), tmp_path / "run", on_event=events.append)
    summary = trainer.run()
    assert summary["stop_reason"] == "time" and summary["elapsed_s"] >= 0.015 * 60  # ran its whole budget
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks and all(e["step"] > 0 and "tokens_per_s" in e for e in ticks)
    assert not any('"tick"' in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


def test_form_names_complete():
    from poetgen.cli.options import complete_form

    assert complete_form("q") == ["qijue", "qilv"] and "七律" in complete_form("七")


def test_check_reads_stdin_as_dash_and_through_a_pipe_path():
    """`check -`, `check --file -` and `check --file /dev/stdin` read the piped poems (a poem the
    shipped model wrote)."""
    poem = "白日登高出，苍梧长短空。云南皆少写，花落自难穷。\n".encode()
    outputs = []
    for args in (["-"], ["--file", "-"], []):
        result = cli("check", *args, input=poem)
        assert result.exit_code == 0, (args, result.stderr)
        outputs.append(result.stdout)
    proc = real_poetgen("check", "--file", "/dev/stdin", input=poem)  # a real pipe behind /dev/stdin
    assert proc.returncode == 0, proc.stderr.decode()
    outputs.append(proc.stdout.decode())
    assert outputs[0].startswith("五绝") and len(set(outputs)) == 1
    both = cli("check", "-", "--file", "x.txt", input=poem)
    assert both.exit_code == 2 and one_line_error(both)


# --- round 2 of the fault audit -------------------------------------------------------------------

def test_a_nan_validation_saves_nothing(prepared, tmp_path):
    out = tmp_path / "r"
    result = cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "5", *TINY_RUN,
                 "--lr", "1e30", "--warmup-steps", "0", "--eval-every", "1")
    err = result.stderr
    assert result.exit_code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("poetgen: error: the validation loss became nan")
    assert not (out / "last.pt").exists() and not list(out.glob(".*.tmp"))
    for line in (out / "metrics.jsonl").read_text().splitlines():  # the log stays JSON
        json.loads(line)


def test_export_keeps_the_old_file_when_it_cannot_measure(tiny_checkpoint, tmp_path):
    shipped = tmp_path / "shipped.pt"
    shipped.write_bytes(b"the previous model")
    result = cli("export", "-c", str(tiny_checkpoint), "-o", str(shipped), "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and one_line_error(result)
    assert shipped.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped.pt"]


def test_two_trainings_into_one_folder_cannot_both_run(prepared, tmp_path, monkeypatch):
    from poetgen import paths, train
    from poetgen.errors import UsageError
    from poetgen.paths import exclusive_lock

    out = tmp_path / "r"
    with exclusive_lock(out, RuntimeError("held")):  # another process's run, between its check and its start
        second = real_poetgen("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "2", *TINY_RUN)
    assert second.returncode == 2 and one_line_error(second) and b"another `poetgen train`" in second.stderr
    assert not (out / "last.pt").exists()
    # the check that the folder holds no run is made under the lock, which the run keeps to its end
    seen = []

    def plan_run(folder, *args, **kwargs):
        seen.append(os.path.realpath(folder) in paths._HELD)
        raise UsageError("stop here")

    monkeypatch.setattr(train, "plan_run", plan_run)
    assert cli("train", "--out", str(tmp_path / "s"), "--data-dir", str(prepared), "--max-steps", "2").exit_code == 2
    assert seen == [True]


@pytest.mark.parametrize("args", [["check", "白日依山尽\udcff"], ["sample", "--prompt", "\udcff"]])
def test_arguments_that_are_not_utf8_are_refused_in_one_line(args):
    raw = [os.fsencode(a) for a in args]
    result = subprocess.run([sys.executable, "-m", "poetgen", *raw], capture_output=True, timeout=60)
    assert result.returncode == 2 and one_line_error(result) and b"not UTF-8" in result.stderr


def test_a_c_locale_still_reads_and_writes_chinese(tiny_checkpoint):
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "poetgen", "check", "-c", str(tiny_checkpoint), "白日依山尽",
                             "黄河入海流", "欲穷千里目", "更上一层楼"], capture_output=True, timeout=60, env=env)
    assert result.returncode in (0, 1) and "五绝" in result.stdout.decode("utf-8") and result.stderr == b""
    ascii_out = subprocess.run([sys.executable, "-m", "poetgen", "check", "-c", str(tiny_checkpoint), "白日依山尽"],
                               capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert b"closed" not in ascii_out.stderr and "白日依山尽" in ascii_out.stdout.decode("utf-8")


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("command", ["--version", "--help", "check --help"])
def test_help_and_version_into_a_closed_or_full_stdout(command, redirect):
    result = shell(f"{POETGEN} {command} {redirect}")
    assert result.returncode == 1 and one_line_error(result)


def test_plot_reads_a_run_with_gaps_and_damaged_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"event": "eval", "step": 1, "elapsed_s": 1.0, "val_bpc": 9.0, "train_loss": 6.0},
             {"event": "eval", "step": 2, "elapsed_s": 2.0, "val_bpc": None, "train_loss": None},
             {"event": "eval", "step": "x"}, {"event": "eval"}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    result = cli("plot", str(run))
    assert result.exit_code == 0, result.stderr
    assert "9.000" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["train", "--hidden-size", "1000000", "--max-steps", "1"], "parameters"),
    (["train", "--bptt", "100000000", "--max-steps", "1"], "--bptt"),
    (["sample", "--prompt", "春" * 5000], "--prompt"),
    (["inspect", "cells", "--poem", ""], "--poem"),
    (["corpus", "build", "--min-count", "0"], "--min-count"),
    (["check", "-c", "/nonexistent.pt", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"], "no checkpoint"),
    (["check", "--data-dir", "/nonexistent", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"], "tone table"),
])
def test_what_cannot_work_is_refused_at_once(args, needle, tmp_path, prepared):
    train = ["--out", str(tmp_path / "r"), "--data-dir", str(prepared)] if args[0] == "train" else []
    result = cli(*args, *train)
    assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_check_fails_a_poem_of_letters(tiny_checkpoint):
    result = cli("check", "-c", str(tiny_checkpoint), "abcd尽，efgh流。ijkl目，mnop楼。")
    assert result.exit_code == 1 and "not Chinese" in result.stdout


def test_json_output_never_holds_nan(tmp_path, tiny_model, tiny_vocab):
    from poetgen.checkpoint import ModelMeta

    nan = {"record": {"nats_per_char": float("nan"), "bits_per_char": float("nan"), "perplexity": float("inf")}}
    checkpoint.save(tmp_path / "m.pt", tiny_model, tiny_vocab, ModelMeta(script="traditional", val=nan))
    result = cli("info", "-c", str(tmp_path / "m.pt"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["val"]["record"]["perplexity"] is None  # strict JSON: null, not NaN


def test_a_run_killed_in_its_first_save_is_neither_lost_nor_overwritten(prepared, tiny_checkpoint, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    resumed = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume")
    assert resumed.exit_code == 2 and "--init-from" in resumed.stderr
    assert not (out / ".last.pt.k1ll3d.tmp").exists()  # the stale temp file is cleaned
    fresh = cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "1", *TINY_RUN)
    assert fresh.exit_code == 2 and "already holds a run" in fresh.stderr
    assert (out / "best.pt").read_bytes() == tiny_checkpoint.read_bytes()


def test_eval_of_text_the_model_cannot_read_says_so(tiny_checkpoint, tmp_path):
    (tmp_path / "t.txt").write_text("hello world\n", encoding="utf-8")
    result = cli("eval", "-c", str(tiny_checkpoint), "--file", str(tmp_path / "t.txt"))
    assert result.exit_code == 0, result.stderr
    assert "outside the model's vocabulary" in result.stderr and "unknown, " in result.stdout


def test_no_color_set_but_empty_keeps_colour(monkeypatch):
    from poetgen.cli.render import no_color

    monkeypatch.setenv("NO_COLOR", "")
    assert not no_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert no_color()


def test_output_into_a_missing_folder_is_refused_like_cp(tmp_path):
    result = cli("sample", "--form", "wujue", "-o", str(tmp_path / "missing" / "x.txt"))
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_piped_tables_have_no_box_characters(prepared):
    result = cli("corpus", "stats", "--data-dir", str(prepared))
    assert result.exit_code == 0, result.stderr
    assert "poems" in result.stdout and not set(result.stdout) & set("│┃━─┏┗┡┩")


def test_a_second_signal_neither_cuts_the_step_nor_the_save(monkeypatch, prepared, tmp_path):
    from poetgen import train

    out = tmp_path / "run"
    found = signal_at_step(monkeypatch, signal.SIGINT, 7)
    real_save = train.Trainer.save_last

    def signal_again_then_save(self):
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, while last.pt is being written
        return real_save(self)

    monkeypatch.setattr(train.Trainer, "save_last", signal_again_then_save)
    result = cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "100000", *TINY_RUN)
    assert found == ["_StopRequest._handle"] and result.exit_code == 130, result.stderr
    assert "stopped by SIGINT at step 7" in result.stderr
    assert checkpoint.read(out / "last.pt").train_state["step"] == 7


def test_resume_with_the_runs_own_preset_is_allowed_and_another_refused(prepared, tmp_path):
    out = tmp_path / "r"
    tiny = ["--batch-size", "4", "--bptt", "8", "--eval-every", "100000", "--log-every", "5"]
    first = cli("train", "--out", str(out), "--data-dir", str(prepared), "--preset", "tiny", "--max-steps", "2", *tiny)
    assert first.exit_code == 0, first.stderr
    same = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--preset", "tiny",
               "--max-steps", "3")
    assert same.exit_code == 0, same.stderr
    other = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--preset", "small",
                "--max-steps", "4")
    assert other.exit_code == 2 and "--preset small" in other.stderr


def test_a_closed_stderr_costs_the_progress_not_the_work(tiny_checkpoint, tmp_path, prepared):
    shipped = tmp_path / "shipped.pt"
    result = shell(f"{POETGEN} export -c {tiny_checkpoint} -o {shipped} --data-dir {prepared} --no-test 2>&-")
    assert result.returncode == 0 and shipped.is_file()


def test_install_completion_into_a_home_that_cannot_be_written_is_one_line():
    # the shell named, not detected from the parent processes (detection fails where no shell is a parent)
    result = shell(f"HOME=/proc _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 {POETGEN} --install-completion bash")
    assert result.returncode == 1 and one_line_error(result) and b"cannot write" in result.stderr


def test_resume_of_a_finished_run_is_refused_and_its_log_keeps_one_end(prepared, tmp_path):
    out = tmp_path / "r"
    assert cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "2", *TINY_RUN).exit_code == 0
    again = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume")
    assert again.exit_code == 2 and "finished run" in again.stderr and "--max-steps" in again.stderr
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("end") == 1
    more = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps", "4")
    assert more.exit_code == 0, more.stderr


def test_a_huge_one_line_check_input_is_refused_without_reading_it_all_into_a_poem(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("春" * 2_000_000, encoding="utf-8")
    result = cli("check", "--file", str(big))
    assert result.exit_code == 2 and "separate poems by blank lines" in result.stderr
