"""tools/gpu_round.py, the one prepared GPU call: packed here, run (on the CPU, --dry-run) as the device
would run it, the model brought back in parts and joined."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

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


def tool(*argv, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


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

    out, work = tmp_path / "out", tmp_path / "work"
    ran = tool("run", "--dry-run", "--src", dest, "--out", out, "--work", work)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s for s, r in summary["steps"].items() if r["exit"] != 0] == []
    assert list(summary["steps"]) == ["version", "pre", "tang", "export", "eval", "plot"]
    assert summary["exported_from"] == "tang/best.pt"
    assert set(summary["metrics"]) == {"pre", "tang"}
    phases = {step: checkpoint.load(work / step / "best.pt").meta.train_config for step in ("pre", "tang")}
    assert phases["pre"]["train_split"] == "song+train" and phases["tang"]["train_split"] == "train"
    assert phases["tang"]["init_from"] == str(work / "pre" / "best.pt")
    returned = [p for p in out.iterdir() if p.is_file()]
    assert len(returned) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in returned)

    joined = tmp_path / "joined.pt"
    assert tool("join", out, "-o", joined).returncode == 0
    assert joined.read_bytes() == (work / "model.pt").read_bytes()
    before, after = checkpoint.load(model), checkpoint.load(joined)
    assert after.meta.step > 0 and len(after.vocab) == len(before.vocab)
    changed = [k for k, v in after.model.state_dict().items()
               if not torch.equal(v.float(), before.model.state_dict()[k].float())]
    assert changed  # trained in the round, not the starting weights passed through
    assert summary["val"]["body"]["perplexity"] > 1


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
    damaged = tool("join", out, "-o", tmp_path / "again.pt")
    assert damaged.returncode == 1 and damaged.stderr.count("\n") == 1
    assert "model.pt.001" in damaged.stderr and "damaged" in damaged.stderr
    part.unlink()
    missing = tool("join", out, "-o", tmp_path / "again.pt")
    assert missing.returncode == 1 and "model.pt.001" in missing.stderr and "missing" in missing.stderr
    assert not (tmp_path / "again.pt").exists() and not list(tmp_path.glob(".again.pt*"))


def test_pack_without_a_prepared_corpus_says_what_to_run(tmp_path):
    result = tool("pack", "--data-dir", tmp_path / "nothing", "--dest", tmp_path / "device")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "corpus prepare --with-song" in result.stderr and not (tmp_path / "device").exists()
