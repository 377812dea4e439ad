"""Faults through the real CLI: bad input gives one line on stderr and a non-zero exit, never a
traceback; interrupted or colliding work never loses or mixes data."""

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
from poetgen.model import LanguageModel, ModelConfig
from poetgen.vocab import SPECIALS, Vocab

runner = CliRunner()
VOCAB = Vocab([*SPECIALS, *ALPHABET[:40], *"，。？！；：、"])


def poetgen(*args: str, input: bytes | None = None, timeout: float = 120, env: dict | None = None):
    """Run the real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "poetgen", *args], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1", **(env or {})})


def one_line_error(proc) -> bool:
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    return "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("poetgen: error:")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=12, hidden_size=16, num_layers=2)).eval()
    checkpoint.save(path, model, VOCAB, ModelMeta(script="traditional"), tones={c: [3, 1] for c in ALPHABET})
    return path


# --- output files ---------------------------------------------------------------------------------

def test_output_writes_through_a_symlink_and_into_special_files(model_file, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    proc = poetgen("sample", "-c", str(model_file), "--form", "wujue", "--seed", "1", "-o", str(link))
    assert proc.returncode == 0, proc.stderr
    lines = target.read_text(encoding="utf-8").strip().splitlines()
    assert link.is_symlink() and len(lines) == 5 and detect_form("".join(lines[1:])) == "五绝"  # title + 4 lines
    proc = poetgen("sample", "-c", str(model_file), "--seed", "1", "-o", os.devnull)
    assert proc.returncode == 0 and stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_an_output_that_is_an_input_is_refused(model_file, tmp_path):
    copy = tmp_path / "m.pt"
    copy.write_bytes(model_file.read_bytes())
    proc = poetgen("sample", "-c", str(copy), "-o", str(copy))
    assert proc.returncode == 2 and one_line_error(proc)
    proc = poetgen("export", "-c", str(copy), "-o", str(copy), "--no-test")
    assert proc.returncode == 2 and one_line_error(proc)
    assert copy.read_bytes() == model_file.read_bytes()


def test_a_checkpoint_never_replaces_a_device(model_file):
    proc = poetgen("export", "-c", str(model_file), "-o", os.devnull, "--no-test")
    assert proc.returncode == 1 and one_line_error(proc) and b"not a regular file" in proc.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_full_disk_on_output_is_one_line(model_file):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    proc = poetgen("sample", "-c", str(model_file), "--seed", "1", "-o", "/dev/full")
    assert proc.returncode == 1 and one_line_error(proc) and b"space" in proc.stderr
    shell = subprocess.run(f"{sys.executable} -m poetgen sample -c {model_file} --seed 1 > /dev/full", shell=True,
                           capture_output=True, timeout=120)
    assert shell.returncode == 1 and one_line_error(shell)


def test_closed_stdout_is_one_line(model_file):
    proc = subprocess.run(f"{sys.executable} -m poetgen sample -c {model_file} --seed 1 >&-", shell=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 1 and one_line_error(proc)


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
    with pytest.raises(CorpusError, match="No space left"):
        corpus.build(data, synthetic_package, script="traditional", min_count=3)
    monkeypatch.setattr(corpus.os, "replace", real_replace)
    assert len(moved) == 2 and not list(data.glob(".build-*"))  # no staging folder left
    proc = poetgen("corpus", "stats", "--data-dir", str(data))
    assert proc.returncode == 1 and one_line_error(proc) and b"corpus prepare" in proc.stderr


def test_a_mixed_corpus_is_detected(prepared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in prepared.iterdir():
        if f.is_file():
            (data / f.name).write_bytes(f.read_bytes())
    (data / "vocab.json").write_text(json.dumps([*SPECIALS, "天"]), encoding="utf-8")
    for args in (["corpus", "stats"], ["train", "--out", str(tmp_path / "r"), "--max-steps", "1"]):
        proc = poetgen(*args, "--data-dir", str(data))
        assert proc.returncode == 1 and one_line_error(proc) and b"mixed" in proc.stderr, args


# --- training -------------------------------------------------------------------------------------

TINY_RUN = ["--hidden-size", "16", "--emb-size", "8", "--batch-size", "4", "--bptt", "8", "--eval-every", "100000",
            "--log-every", "5"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signals_save_last_pt_and_the_run_resumes(prepared, tmp_path, sig):
    out = tmp_path / "run dir"
    proc = subprocess.Popen([sys.executable, "-m", "poetgen", "train", "--out", str(out), "--data-dir", str(prepared),
                             "--max-steps", "100000", *TINY_RUN], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "NO_COLOR": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    assert (out / "metrics.jsonl").exists(), proc.stderr.read() if proc.poll() is not None else "no progress"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    err = err.decode()
    assert "Traceback" not in err and "Resume with: poetgen train --out" in err and "--data-dir" in err
    assert f"'{out}'" in err  # the path with a space is quoted
    saved = checkpoint.read(out / "last.pt")
    assert saved.train_state["step"] > 0
    resumed = poetgen("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps",
                      str(saved.train_state["step"] + 3), "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == saved.train_state["step"] + 3


def test_two_trainings_on_one_folder_are_refused(prepared, tmp_path):
    from poetgen.train import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        proc = poetgen("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "2", *TINY_RUN)
    assert proc.returncode == 2 and one_line_error(proc) and b"another" in proc.stderr
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("args", [["--lr", "inf"], ["--lr", "nan"], ["--clip", "nan"], ["--weight-decay", "nan"],
                                  ["--seed", str(2**64)], ["--max-minutes", "-1"], ["--batch-size", "0"]])
def test_impossible_training_values_are_refused_before_training(prepared, tmp_path, args):
    proc = poetgen("train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--max-steps", "2",
                   *TINY_RUN, *args)
    assert proc.returncode == 2 and one_line_error(proc), (args, proc.stderr)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_diverging_run_stops_with_a_message(prepared, tmp_path):
    proc = poetgen("train", "--out", str(tmp_path / "r"), "--data-dir", str(prepared), "--max-steps", "50",
                   "--lr", "1e30", "--warmup-steps", "0", "--clip", "1e30", *TINY_RUN)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("poetgen: error: the loss became nan")


def test_out_that_is_a_file_is_refused(prepared, tmp_path):
    (tmp_path / "f").write_text("x")
    proc = poetgen("train", "--out", str(tmp_path / "f"), "--data-dir", str(prepared), "--max-steps", "1")
    assert proc.returncode == 2 and one_line_error(proc) and b"is a file" in proc.stderr


def test_resume_keeps_the_schedule(prepared, tmp_path):
    out = tmp_path / "run"
    first = poetgen("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "20", *TINY_RUN,
                    "--warmup-steps", "2", "--quiet")
    assert first.returncode == 0, first.stderr
    ckpt = checkpoint.read(out / "last.pt")
    assert ckpt.train_state["schedule_steps"] == 20
    more = poetgen("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps", "25",
                   "--quiet")
    assert more.returncode == 0, more.stderr
    assert checkpoint.read(out / "last.pt").train_state["schedule_steps"] == 20  # not refitted to 25
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()
           if '"event": "log"' in line]
    assert lrs[-1] <= lrs[-2] + 1e-12  # no jump back up


# --- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--temperature", "1e-40"], ["--top-p", "1e-300"],
                                  ["--temperature", "1e-40", "--top-p", "1e-300"]])
def test_extreme_settings_keep_the_form(model_file, args):
    result = runner.invoke(app, ["sample", "-c", str(model_file), "--form", "wujue", "--num", "3", "--seed", "1",
                                 "--title", ALPHABET[0], "--format", "jsonl", *args])
    assert result.exit_code == 0, result.stderr
    for line in result.stdout.splitlines():
        assert detect_form(json.loads(line)["text"]) == "五绝"


def test_a_long_free_prompt_is_kept_verbatim(model_file):
    prompt = "".join(ALPHABET[i % 40] for i in range(300)) + "。"
    result = runner.invoke(app, ["sample", "-c", str(model_file), "--prompt", prompt, "--seed", "1", "--format",
                                 "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith(prompt)


def test_prompt_accepts_ascii_punctuation(model_file):
    prompt = "".join(ALPHABET[:5]) + ","
    result = runner.invoke(app, ["sample", "-c", str(model_file), "--form", "wujue", "--prompt", prompt, "--seed",
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(options=SAMPLE_ARGS)
def test_fuzzed_sample_arguments_give_poems_or_one_line(model_file, options):
    args = [x for k, v in options.items() for x in (k, str(v))]
    result = runner.invoke(app, ["sample", "-c", str(model_file), "--format", "jsonl", *args])
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


def test_too_many_poems_are_refused_before_loading(model_file):
    proc = poetgen("sample", "-c", str(model_file), "--num", "100000")
    assert proc.returncode == 2 and one_line_error(proc) and b"--num" in proc.stderr


# --- check ----------------------------------------------------------------------------------------

def test_check_input_faults(tmp_path, model_file):
    proc = poetgen("check", "-c", str(model_file), input=b"\xff\xfe bad bytes\n")
    assert proc.returncode == 2 and one_line_error(proc) and b"UTF-8" in proc.stderr
    proc = poetgen("check", "-c", str(model_file), "--file", str(tmp_path))
    assert proc.returncode == 2 and one_line_error(proc) and b"folder" in proc.stderr
    proc = poetgen("check", "-c", str(model_file), ALPHABET[0], ALPHABET[1])
    assert proc.returncode == 2 and one_line_error(proc) and b"quote it" in proc.stderr
    closed = subprocess.run(f"{sys.executable} -m poetgen check -c {model_file} <&-", shell=True,
                            capture_output=True, timeout=60)
    assert closed.returncode == 2 and one_line_error(closed)


def test_check_keeps_its_verdict_when_the_reader_goes_away(model_file):
    poem = "，".join("".join(ALPHABET[i * 5:(i + 1) * 5]) for i in range(3)) + "。"
    many = ("\n\n".join([poem] * 20000) + "\n").encode()
    cmd = f"{sys.executable} -m poetgen check -c {model_file} | head -n 1 > /dev/null; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], input=many, capture_output=True, timeout=120)
    assert proc.stdout.decode().strip() == "1", proc.stderr  # not regulated: the verdict, not 0
    assert b"Traceback" not in proc.stderr


def test_no_color_means_no_escape_codes(model_file, prepared):
    for args in (["info", "-c", str(model_file)], ["corpus", "stats", "--data-dir", str(prepared)]):
        proc = poetgen(*args)
        assert proc.returncode == 0 and b"\x1b" not in proc.stdout + proc.stderr, args


# --- damaged checkpoints, full disks, read-only places, locks ---------------------------------------

def damaged_copies(model_file: Path, folder: Path) -> dict[str, Path]:
    """Five kinds of damage a checkpoint can have inside a valid file."""
    base = torch.load(model_file, weights_only=True)
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


def test_damaged_checkpoints_are_one_line_everywhere(model_file, prepared, tmp_path):
    for kind, path in damaged_copies(model_file, tmp_path).items():
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


def test_read_only_places_are_one_line(model_file, prepared):
    for args in (["corpus", "prepare", "--data-dir", "/proc/poetgen-test"],
                 ["sample", "-c", str(model_file), "-o", "/proc/poetgen-test/poems.txt"],
                 ["train", "--out", "/proc/poetgen-test/run", "--data-dir", str(prepared), "--max-steps", "1"]):
        proc = poetgen(*args)
        assert proc.returncode != 0 and one_line_error(proc), (args, proc.stderr)


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
        proc = poetgen("corpus", "build", "--from", str(synthetic_package), "--data-dir", str(data),
                       "--script", "traditional")
    assert proc.returncode == 1 and one_line_error(proc) and b"another poetgen" in proc.stderr
    assert not (data / "meta.json").exists()


def test_stale_partial_downloads_are_removed(synthetic_package, tmp_path):
    data = tmp_path / "data"
    cache = data / "cache"
    (cache / ".download-abc123").mkdir(parents=True)
    (cache / ".download-abc123" / "chinese-poetry-2.0.1.tgz").write_bytes(b"x" * 1000)
    (cache / ".chinese-poetry-2.0.1.tgz.xyz.tmp").write_bytes(b"partial")
    corpus.fetch(data, synthetic_package)
    assert sorted(p.name for p in cache.iterdir()) == []


def test_readers_going_away_end_quietly(model_file, prepared):
    for cmd in (f"-m poetgen info -c {model_file}", f"-m poetgen corpus stats --data-dir {prepared}",
                f"-m poetgen sample -c {model_file} --num 50 --best-of 1 --seed 1"):
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} {cmd} | head -c 1 > /dev/null"],
                              capture_output=True, timeout=120)
        assert proc.returncode == 0 and proc.stderr == b"", (cmd, proc.stderr)


def test_a_signal_at_a_random_moment_resumes_exactly(prepared, tmp_path):
    run = ["--data-dir", str(prepared), "--max-steps", "600", "--hidden-size", "48", "--emb-size", "16",
           "--batch-size", "8", "--bptt", "16", "--eval-every", "250", "--log-every", "1", "--quiet"]
    straight = poetgen("train", "--out", str(tmp_path / "a"), *run)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "poetgen", "train", "--out", str(out), *run],
                            stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the middle of a step
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run ended before the signal arrived")
    assert proc.returncode == 130
    stopped_at = checkpoint.read(out / "last.pt").train_state["step"]
    assert 0 < stopped_at < 600
    resumed = poetgen("train", "--out", str(out), "--resume", "--data-dir", str(prepared), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = checkpoint.read(tmp_path / "a" / "last.pt"), checkpoint.read(out / "last.pt")
    assert a.meta.step == b.meta.step == 600
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k


def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(len(VOCAB), emb_size=8, hidden_size=8))
    checkpoint.save(tmp_path / "m.pt", model, VOCAB, ModelMeta())
    assert events == ["fsync", "replace"]


def test_training_shows_signs_of_life_between_log_lines(prepared, tmp_path):
    from poetgen.config import TrainConfig
    from poetgen.data import load_split
    from poetgen.train import Trainer

    vocab = Vocab.load(prepared / "vocab.json")
    events = []
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=None, max_minutes=0.03, eval_every=10**6, log_every=10**6,
                      device="cpu")
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=32), cfg, vocab, load_split(prepared, "train"),
                      load_split(prepared, "val"), tmp_path / "run", on_event=events.append)
    summary = trainer.run()
    assert summary["stop_reason"] == "time" and summary["elapsed_s"] < 3.0  # near its 1.8 s budget
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
    for args in (["-"], ["--file", "-"], ["--file", "/dev/stdin"], []):
        proc = poetgen("check", *args, input=poem)
        assert proc.returncode == 0, (args, proc.stderr.decode())
        outputs.append(proc.stdout)
    assert outputs[0].decode().startswith("五绝") and len(set(outputs)) == 1
    both = poetgen("check", "-", "--file", "x.txt", input=poem)
    assert both.returncode == 2 and one_line_error(both)
