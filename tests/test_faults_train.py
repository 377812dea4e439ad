"""Faults in training: stop signals (in this process and to a real one) save last.pt and the run
resumes exactly; impossible values, a diverging run, a full disk, a NaN validation, two runs into one
folder, resuming a finished or half-saved run. One line on stderr, never a traceback, no lost data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_RUN, TINY_TRAIN_ARGS, cli, one_line_error, real_poetgen, runner
from tiny import as_records

from poetgen import checkpoint
from poetgen.cli import app
from poetgen.model import ModelConfig
from poetgen.vocab import Vocab


def signal_at_step(monkeypatch, sig: int, step: int) -> list[str]:
    """Send `sig` to this process after the training step `step` (once the trainer's handler is in place;
    the list gets the handler that was found there, so a missing one fails the test, not the process)."""
    from poetgen import train

    real_step, found = train.Trainer._train_step, []

    def step_then_signal(self, lr):
        out = real_step(self, lr)
        if self.position.step == step and not found:  # self.position.step counts the finished steps, this one included
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
    assert found == ["StopRequest._handle"], found
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
    run = ["--data-dir", str(prepared), "--optimizer", "sgd", "--lr", "0.5", *TINY_TRAIN_ARGS, "--eval-every", "10",
           "--log-every", "1", "--quiet"]
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
    assert found == ["StopRequest._handle"] and result.exit_code == 130, result.stderr
    assert "stopped by SIGINT at step 7" in result.stderr
    assert checkpoint.read(out / "last.pt").train_state["step"] == 7


def test_stop_while_best_pt_is_written_keeps_best_and_last_agreeing(prepared, tmp_path, monkeypatch):
    from poetgen.corpus import load_split
    from poetgen.train import Trainer, TrainingInterrupted

    vocab = Vocab.load(prepared / "vocab.json")
    cfg = __import__("poetgen.config", fromlist=["TrainConfig"]).TrainConfig(
        batch_size=4, bptt=8, max_steps=40, eval_every=5, warmup_steps=2, device="cpu", log_every=5)
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=16), cfg, vocab, load_split(prepared, "train"),
                      load_split(prepared, "val"), tmp_path / "run")
    real_save = checkpoint.save

    def save_then_interrupt(path, *args, **kwargs):
        if Path(path).name == "best.pt" and trainer.position.step >= 10:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of writing best.pt
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    best = checkpoint.read(tmp_path / "run" / "best.pt")
    last = checkpoint.read(tmp_path / "run" / "last.pt")
    assert best.meta.best_val_loss == last.train_state["best_val"] == last.meta.best_val_loss
    assert best.meta.step <= last.meta.step


@pytest.mark.parametrize("args", [["--lr", "inf"], ["--lr", "nan"], ["--clip", "nan"], ["--weight-decay", "nan"],
                                  ["--seed", str(2**64)], ["--max-minutes", "-1"], ["--batch-size", "0"],
                                  ["--min-lr-ratio", "2"], ["--optimizer", "sgd", "--lr-decay", "0"],
                                  ["--optimizer", "sgd", "--lr-decay", "1.5"]])
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


def test_resume_of_a_finished_run_is_refused_and_its_log_keeps_one_end(prepared, tmp_path):
    out = tmp_path / "r"
    assert cli("train", "--out", str(out), "--data-dir", str(prepared), "--max-steps", "2", *TINY_RUN).exit_code == 0
    again = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume")
    assert again.exit_code == 2 and "finished run" in again.stderr and "--max-steps" in again.stderr
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("end") == 1
    more = cli("train", "--out", str(out), "--data-dir", str(prepared), "--resume", "--max-steps", "4")
    assert more.exit_code == 0, more.stderr


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


def test_two_trainings_into_one_folder_cannot_both_run(prepared, tmp_path, monkeypatch):
    import poetgen.train.plan as planning
    from poetgen import paths
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

    monkeypatch.setattr(planning, "plan_run", plan_run)
    assert cli("train", "--out", str(tmp_path / "s"), "--data-dir", str(prepared), "--max-steps", "2").exit_code == 2
    assert seen == [True]


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


def test_training_shows_signs_of_life_between_log_lines(prepared, tmp_path):
    from poetgen.config import TrainConfig
    from poetgen.corpus import load_split
    from poetgen.train import Trainer

    vocab = Vocab.load(prepared / "vocab.json")
    events = []
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=None, max_minutes=0.015, eval_every=10**6, log_every=10**6,
                      device="cpu")
    trainer = Trainer(ModelConfig(len(vocab), emb_size=8, hidden_size=32), cfg, vocab, load_split(prepared, "train"),
                      load_split(prepared, "val"), tmp_path / "run", listeners=[as_records(events.append)])
    summary = trainer.run()
    assert summary["stop_reason"] == "time" and summary["elapsed_s"] >= 0.015 * 60  # ran its whole budget
    ticks = [e for e in events if e["event"] == "tick"]
    assert ticks and all(e["step"] > 0 and "tokens_per_s" in e for e in ticks)
    assert not any('"tick"' in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


def test_a_resume_after_a_kill_logs_each_step_once(prepared, tmp_path):
    """SIGKILL after last.pt (step 10) but after more log lines (steps 15, 20): the resumed run drops
    those lines and logs the steps again, once each, in order."""
    import json

    out = tmp_path / "r"
    args = ["--data-dir", str(prepared), *TINY_TRAIN_ARGS, "--eval-every", "10", "--log-every", "5"]
    assert cli("train", "--out", str(out), "--max-steps", "10", *args).exit_code == 0
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    with open(metrics, "a") as f:  # what the killed run logged after its last save
        for step in (15, 20):
            f.write(json.dumps({"event": "log", "step": step, "train_loss": 9.0}) + "\n")
    result = cli("train", "--out", str(out), "--resume", "--max-steps", "20", *args)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    logged = [(r["event"], r["step"]) for r in records if r["event"] in ("log", "eval")]
    assert len(logged) == len(set(logged)) and [s for _, s in logged] == sorted(s for _, s in logged)
    assert ("log", 15) in logged and ("log", 20) in logged and all(r.get("train_loss") != 9.0 for r in records)
    assert metrics.read_text().splitlines()[:len(lines)] == lines
