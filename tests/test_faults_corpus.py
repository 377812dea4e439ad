"""Faults in building the corpus: an interrupted rebuild, a mixed corpus, two builds on one folder,
stale partial downloads. Interrupted or colliding work never loses or mixes data."""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import cli, one_line_error, real_poetgen

from poetgen import corpus
from poetgen.errors import CorpusError
from poetgen.vocab import SPECIALS


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

    monkeypatch.setattr(os, "replace", crash_after_two)
    with pytest.raises(CorpusError, match="No space left.*finishes the move"):
        corpus.build(data, synthetic_package, script="traditional", min_count=3)
    monkeypatch.setattr(os, "replace", real_replace)
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


def _copy_corpus(prepared, folder):
    import shutil

    shutil.copytree(prepared, folder, ignore=shutil.ignore_patterns(".*"))
    return folder


def test_a_corpus_file_of_the_right_size_and_other_bytes_is_damaged(prepared, tmp_path, tiny_checkpoint):
    """The corpus is checked by content (meta.json's sha256 of each file), not by size alone."""
    data = _copy_corpus(prepared, tmp_path / "data")
    val = bytearray((data / "val.bin").read_bytes())
    val[10:30] = b"\xff" * 20  # token ids far outside the vocabulary, the same size
    (data / "val.bin").write_bytes(bytes(val))
    for args in (["eval", "-c", str(tiny_checkpoint), "--split", "val"], ["corpus", "stats"],
                 ["train", "--out", str(tmp_path / "r"), "--max-steps", "1"]):
        result = cli(*args, "--data-dir", str(data))
        assert result.exit_code == 1 and one_line_error(result) and "val.bin" in result.stderr, (args, result.stderr)
        assert "damaged" in result.stderr and "Traceback" not in result.stderr


def test_a_meta_json_without_what_commands_read_is_damaged(prepared, tmp_path):
    data = _copy_corpus(prepared, tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    del meta["script"]
    (data / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    for args in (["corpus", "stats"], ["corpus", "stats", "--json"]):
        result = cli(*args, "--data-dir", str(data))
        assert result.exit_code == 1 and one_line_error(result) and "no script" in result.stderr, result.stderr
