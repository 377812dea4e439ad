from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import runner
from synth import make_corpus, make_tarball, random_poem, write_package

from poetgen import corpus
from poetgen.cli import app
from poetgen.errors import CorpusError
from poetgen.forms import detect_form
from poetgen.vocab import Vocab

A = "天地人山水风花雪月春秋日"  # a few characters for hand-written cases


def clean(paragraphs, strains=None):
    return corpus.clean_body(paragraphs, strains)


# --- cleaning rules -------------------------------------------------------------------------------

def test_brackets_and_nested_notes_are_removed():
    body, _, reason = clean(["天地（一作「山水」）人山水，风花〖1〗雪月春。", "秋日{注}天地人，山水[注（又）]风花雪。"])
    assert reason is None
    assert body == "天地人山水，风花雪月春。秋日天地人，山水风花雪。"


def test_supplied_character_in_square_brackets_is_kept_but_numbered_notes_go():
    body, _, _ = clean(["[爽]天地人山，水风花[一]雪月。"])
    assert body == "爽天地人山，水风花雪月。"


def test_placeholder_drops_the_poem():
    for mark in "□○●囗":
        assert clean([f"天地人山{mark}，水风花雪月。"])[2] == "placeholder"


def test_non_han_drops_the_poem():
    assert clean(["天地人山水，风花雪月春。", "abc秋日天地，人山水风花。"])[2] == "non_han"
    assert clean(["天地人山水，风花雪月春。", "秋日天地人·山水风花雪。"])[2] == "non_han"


def test_half_width_punctuation_is_normalized_and_quotes_dropped():
    body, _, reason = clean(["天地人山水,风花雪月春.", "「秋日」天地人?山水风花雪!"])
    assert reason is None
    assert body == "天地人山水，风花雪月春。秋日天地人？山水风花雪！"


def test_doubled_and_leading_marks_collapse_and_a_final_mark_is_added():
    body, _, _ = clean(["，天地人山水，，风花雪月春（注）。", "秋日天地人"])
    assert body == "天地人山水，风花雪月春。秋日天地人。"


def test_empty_short_and_unbalanced_bodies_are_dropped():
    assert clean([])[2] == "empty"
    assert clean(["（注）"])[2] == "empty"
    assert clean(["天地人，山水。"])[2] == "too_short"
    assert clean(["天地人山水（风花雪月春。"])[2] == "unbalanced_brackets"
    assert clean(["天地人山水）风花雪月春。"])[2] == "unbalanced_brackets"


def test_tones_stay_aligned_through_cleaning():
    body, tones, _ = clean(["天（注）地人山水，风花雪月春。"], ["平○○○仄平平仄，仄仄平平○。"])
    assert body == "天地人山水，风花雪月春。"
    assert len(tones) == len(body)
    assert tones == "平仄平平仄，仄仄平平?。"


def test_misaligned_strains_give_unknown_tones():
    body, tones, _ = clean(["天地人山水，风花雪月春。"], ["平平，仄仄。"])
    assert tones == "?????，?????。"


def test_titles_keep_only_han():
    assert corpus.clean_title("帝京篇十首 一（注）") == "帝京篇十首一"
    assert corpus.clean_title("A-1 (x)") == ""


def test_duplicates_keep_the_smallest_id_and_every_drop_is_counted():
    rng = random.Random(1)
    a = random_poem(rng, 1)
    dup = dict(a, id="aaa-first")
    bad = [
        {"id": "p1", "title": "", "author": "", "paragraphs": ["天地□山水，风花雪月春。"]},
        {"id": "p2", "title": "", "author": "", "paragraphs": []},
        {"id": "p3", "title": "", "author": "", "paragraphs": ["天地，山水。"]},
        {"id": "p4", "title": "", "author": "", "paragraphs": ["天地人山水x，风花雪月春。"]},
        {"title": "no id", "paragraphs": ["天地人山水，风花雪月春。"]},
    ]
    kept, dropped, _ = corpus.clean_poems({"poet.tang.0.json": [a, dup, *bad]}, {"poet.tang.0.json": []},
                                       script="traditional")
    assert [p.id for p in kept] == ["aaa-first"]
    assert dropped == {"duplicate": 1, "placeholder": 1, "empty": 1, "too_short": 1, "non_han": 1, "malformed": 1}


def test_simplified_conversion():
    kept, _, _ = corpus.clean_poems(
        {"poet.tang.0.json": [{"id": "x", "title": "詩", "author": "", "paragraphs": ["漢宮風雨夜，龍馬書無聲。"]}]},
        {}, script="simplified")
    assert kept[0].body == "汉宫风雨夜，龙马书无声。"
    assert kept[0].title == "诗"


# --- split, vocab, streams -----------------------------------------------------------------------

def test_split_rule_is_the_documented_hash():
    for pid in ("a", "3ad6d468-7ff1-4a7b-8b24-a27d70d00ed4", "synthetic-00001"):
        bucket = int(hashlib.sha1(pid.encode()).hexdigest(), 16) % 100
        expected = "val" if bucket < 2 else "test" if bucket < 4 else "train"
        assert corpus.split_of(pid) == expected


def test_split_sizes_are_about_two_percent():
    ids = [f"id-{i}" for i in range(20000)]
    counts = {s: sum(corpus.split_of(i) == s for i in ids) for s in ("train", "val", "test")}
    assert 300 < counts["val"] < 500 and 300 < counts["test"] < 500


def test_outputs_do_not_depend_on_file_order(tmp_path):
    rng = random.Random(5)
    poems = [random_poem(rng, i) for i in range(120)]
    a = write_package(tmp_path / "a", {"poet.tang.0.json": poems[:60], "poet.tang.1000.json": poems[60:]})
    shuffled = poems[::-1]
    b = write_package(tmp_path / "b", {"poet.tang.0.json": shuffled[:30], "poet.tang.1000.json": shuffled[30:]})
    corpus.build(tmp_path / "oa", a, script="traditional")
    corpus.build(tmp_path / "ob", b, script="traditional")
    for name in ("train.bin", "val.bin", "test.bin", "vocab.json", "meta.json"):
        assert (tmp_path / "oa" / name).read_bytes() == (tmp_path / "ob" / name).read_bytes(), name


def test_rebuild_is_byte_identical(synthetic_package, tmp_path):
    corpus.build(tmp_path, synthetic_package, script="traditional")
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    corpus.build(tmp_path, synthetic_package, script="traditional")
    second = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert first == second


def test_prepared_streams_decode_to_the_poems(prepared):
    meta = corpus.load_meta(prepared)
    vocab = Vocab.load(prepared / "vocab.json")
    assert meta["vocab_size"] == len(vocab)
    for split in ("train", "val", "test"):
        stream = np.fromfile(prepared / f"{split}.bin", dtype=np.uint16)
        assert stream.size == meta["tokens"][split]
        poems = list(corpus.iter_poems(prepared, split))
        assert len(poems) == meta["poems"][split]
        expected = []
        for p in poems:
            expected.extend(corpus.encode_poem(vocab, p, meta["poets"] if split == "train" else None))
        assert stream.tolist() == expected
    assert sum(meta["poems"].values()) == 400
    assert all(detect_form(p.body) != "other" for p in corpus.iter_poems(prepared, "train"))


def test_vocab_round_trip(tmp_path):
    from collections import Counter

    vocab = Vocab.build(Counter("天天天地地人，。"), min_count=2)
    assert vocab.tokens[4:] == ["天", "地"]
    path = tmp_path / "vocab.json"
    path.write_text(vocab.to_json(), encoding="utf-8")
    loaded = Vocab.load(path)
    assert loaded.tokens == vocab.tokens
    assert json.loads(path.read_text(encoding="utf-8"))[4] == "天"
    ids = loaded.encode_record("天", "地人")
    assert ids == [loaded.bos_id, 4, loaded.sep_id, 5, loaded.unk_id, loaded.eos_id]
    assert [loaded.tokens[i] for i in ids[1:2] + ids[3:5]] == ["天", "地", "<unk>"]


def test_vocab_uses_train_split_only(prepared):
    vocab = Vocab.load(prepared / "vocab.json")
    train_chars = set()
    for p in corpus.iter_poems(prepared, "train"):
        train_chars |= set(p.title) | set(p.body)
    assert set(vocab.tokens[4:-2]) <= train_chars
    assert vocab.tokens[-2:] == ["<author>", "<kw>"]


# --- fetch and bad inputs ------------------------------------------------------------------------

def test_fetch_from_tarball_verifies_and_caches(synthetic_package, tmp_path):
    tgz = make_tarball(synthetic_package, tmp_path / "pkg.tgz")
    integrity = corpus.sri_sha512(tgz)
    data = tmp_path / "data"
    path = corpus.fetch(data, tgz, integrity=integrity)
    assert path == corpus.cached_tarball(data) and path.read_bytes() == tgz.read_bytes()
    result = corpus.build(data, path, script="traditional", integrity=integrity)
    assert result.meta["source"]["integrity"] == integrity
    assert sum(result.meta["poems"].values()) == 400


def _assert_refused(args, tmp_path, needle):
    data = tmp_path / "out"
    result = runner.invoke(app, [*args, "--data-dir", str(data)])
    assert result.exit_code != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    written = [p for p in data.rglob("*") if p.is_file() and p.name != ".lock"] if data.exists() else []
    assert written == []  # nothing but the (empty) lock file of the data folder


def test_integrity_mismatch_is_refused(synthetic_package, tmp_path):
    tgz = make_tarball(synthetic_package, tmp_path / "other.tgz")
    _assert_refused(["corpus", "fetch", "--from", str(tgz)], tmp_path, "integrity")


def test_truncated_tarball_is_refused(synthetic_package, tmp_path):
    tgz = make_tarball(synthetic_package, tmp_path / "t.tgz")
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    _assert_refused(["corpus", "prepare", "--from", str(cut)], tmp_path, "integrity")
    # even with the right checksum, the reader refuses it with a clear error
    with pytest.raises(CorpusError, match="not a readable tarball"):
        corpus.build(tmp_path / "x", cut, integrity=corpus.sri_sha512(cut))


def test_non_gzip_file_is_refused(tmp_path):
    bogus = tmp_path / "bogus.tgz"
    bogus.write_text("not a tarball")
    _assert_refused(["corpus", "fetch", "--from", str(bogus)], tmp_path, "not a gzip")


def test_missing_source_is_refused(tmp_path):
    _assert_refused(["corpus", "fetch", "--from", str(tmp_path / "nope.tgz")], tmp_path, "no such file")
    _assert_refused(["corpus", "build"], tmp_path, "corpus fetch")


def test_folder_without_poems_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_refused(["corpus", "prepare", "--from", str(tmp_path / "empty")], tmp_path, "poet.tang")


def test_malformed_json_is_refused(tmp_path):
    pkg = make_corpus(tmp_path / "pkg", poems=20)
    (pkg / "package/dist/quantangshi/poet.tang.0.json").write_text("[{oops", encoding="utf-8")
    _assert_refused(["corpus", "prepare", "--from", str(pkg)], tmp_path, "not valid JSON")


def test_missing_strains_file_is_refused(tmp_path):
    pkg = make_corpus(tmp_path / "pkg", poems=20)
    (pkg / "package/dist/strains/json/poet.tang.0.json").unlink()
    _assert_refused(["corpus", "prepare", "--from", str(pkg)], tmp_path, "strains")


def test_no_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    _assert_refused(["corpus", "fetch"], tmp_path, "install Node.js")


def test_damaged_cache_is_fetched_again(synthetic_package, tmp_path, monkeypatch):
    data = tmp_path / "data"
    cache = corpus.cached_tarball(data)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x1f\x8bdamaged")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(CorpusError, match="npm not found"):
        corpus.fetch(data)
    assert not cache.exists()


def test_stats_json_and_table(prepared):
    result = runner.invoke(app, ["corpus", "stats", "--json", "--data-dir", str(prepared)])
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    meta = corpus.load_meta(prepared)
    assert stats["poems"] == meta["poems"] and stats["tokens"] == meta["tokens"]
    assert stats["vocab_size"] == meta["vocab_size"]
    assert set(stats["source"]) == {"package", "version", "integrity"}
    assert isinstance(stats["dropped"], dict)
    table = runner.invoke(app, ["corpus", "stats", "--data-dir", str(prepared)])
    assert table.exit_code == 0 and "五律" in table.stdout and f"{meta['poems']['train']:,}" in table.stdout


def test_data_dir_from_environment(prepared, monkeypatch):
    monkeypatch.setenv("POETGEN_DATA", str(prepared))
    result = runner.invoke(app, ["corpus", "stats", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["vocab_size"] == corpus.load_meta(prepared)["vocab_size"]


def test_bad_gzip_member_raises_clean_error(tmp_path):
    path = tmp_path / "x.tgz"
    path.write_bytes(gzip.compress(b"this is not a tar archive" * 100))
    with pytest.raises(CorpusError):
        corpus.build(tmp_path / "o", path, integrity=corpus.sri_sha512(path))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="needs the npm client")
def test_real_package_end_to_end(tmp_path):
    """The real chinese-poetry@2.0.1 through `npm pack`, integrity check and the full build."""
    probe = subprocess.run(["npm", "view", "chinese-poetry@2.0.1", "version"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip("the npm registry is not reachable")
    result = runner.invoke(app, ["corpus", "prepare", "--quiet", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    meta = corpus.load_meta(tmp_path)
    assert meta["source"]["integrity"] == corpus.INTEGRITY
    assert meta["poems_read"] == 57607
    assert sum(meta["poems"].values()) >= 54000
    assert 5000 <= meta["vocab_size"] <= 9000
    total = sum(meta["poems"].values())
    for split in ("val", "test"):
        assert 0.015 < meta["poems"][split] / total < 0.025
    assert Path(tmp_path / "cache" / corpus.TARBALL).is_file()


@pytest.mark.parametrize("moved", [0, 2, 5])
def test_a_build_killed_while_moving_in_is_finished_by_the_next_reader(synthetic_package, tmp_path, monkeypatch, moved):
    data = tmp_path / "data"
    corpus.build(data, synthetic_package, script="traditional")
    real_replace = os.replace
    calls = []

    def killed_after_some(src, dst):  # SIGKILL stand-in: the process stops between two renames
        if len(calls) >= moved:
            raise SystemExit("killed")
        calls.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_some)
    with pytest.raises(SystemExit):
        corpus.build(data, synthetic_package, script="traditional", min_count=2)
    monkeypatch.undo()
    meta = corpus.load_meta(data)  # the reader finishes the install
    assert meta["min_count"] == 2 and not list(data.glob(".build-*"))
    again = tmp_path / "again"
    corpus.build(again, synthetic_package, script="traditional", min_count=2)
    for name in ("vocab.json", "train.bin", "poems.val.jsonl"):
        assert (data / name).read_bytes() == (again / name).read_bytes(), name


def test_a_build_killed_before_its_files_are_ready_leaves_the_old_corpus(synthetic_package, tmp_path, monkeypatch):
    data = tmp_path / "data"
    corpus.build(data, synthetic_package, script="traditional", min_count=1)
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        corpus.build(data, synthetic_package, script="traditional", min_count=2)
    monkeypatch.undo()
    assert corpus.load_meta(data)["min_count"] == 1
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before
