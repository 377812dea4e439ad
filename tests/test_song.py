"""The 全宋诗 as optional training data: a split of its own, the Tang splits untouched."""

from __future__ import annotations

import json
import random

import numpy as np
from cli_helpers import runner
from synth import random_poem, write_package

from poetgen import corpus
from poetgen.cli import app
from poetgen.corpus import load_split, load_train


def package(root, with_leak: bool = True):
    rng = random.Random(5)
    tang = [random_poem(rng, i) for i in range(300)]
    song = [random_poem(rng, 1000 + i) for i in range(200)]
    val_poem = next(p for p in tang if corpus.split_of(p["id"]) == "val")
    if with_leak:  # a Song record with a Tang val poem's text under another id
        song.append({**val_poem, "id": "song-copy-of-a-tang-val-poem"})
    files = {"poet.tang.0.json": tang[:150], "poet.tang.1000.json": tang[150:],
             "poet.song.0.json": song[:100], "poet.song.1000.json": song[100:]}
    return write_package(root, files)


def test_song_is_a_split_of_its_own_and_the_tang_files_do_not_change(tmp_path):
    root = package(tmp_path / "pkg")
    plain = corpus.build(tmp_path / "plain", root / "package", script="simplified")
    both = corpus.build(tmp_path / "both", root / "package", script="simplified", with_song=True)
    for name in ("vocab.json", "train.bin", "val.bin", "test.bin", "poems.train.jsonl", "poems.val.jsonl",
                 "poems.test.jsonl", "tones.json", corpus.GLYPHS_FILE):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "both" / name).read_bytes(), name
    assert plain.meta["song"] is None
    song = both.meta["song"]
    assert song["poems_read"] == 201 and song["poems"] == 200 and song["dropped"] == {"in_tang": 1}
    ids = [json.loads(line)["id"] for line in (tmp_path / "both" / "poems.song.jsonl").read_text().splitlines()]
    assert len(ids) == 200 and "song-copy-of-a-tang-val-poem" not in ids
    stream = load_split(tmp_path / "both", "song")
    assert stream.size == song["tokens"] > 0
    mixed = load_train(tmp_path / "both", "song+train")
    assert np.array_equal(mixed, np.concatenate([stream, load_split(tmp_path / "both", "train")]))
    corpus.build(tmp_path / "both", root / "package", script="simplified")  # again, without the 全宋诗
    assert not any((tmp_path / "both" / name).exists() for name in corpus.SONG_FILES)


def test_training_on_song_and_tang_then_fine_tuning_on_tang(tmp_path):
    root = package(tmp_path / "pkg", with_leak=False)
    data = tmp_path / "data"
    built = runner.invoke(app, ["corpus", "build", "--from", str(root / "package"), "--data-dir", str(data),
                                "--with-song", "--quiet"])
    assert built.exit_code == 0, built.stderr
    run = ["--data-dir", str(data), "--batch-size", "8", "--bptt", "16", "--eval-every", "5", "--quiet", "--json"]
    pre = runner.invoke(app, ["train", "--out", str(tmp_path / "pre"), "--train-split", "song+train",
                              "--max-steps", "10", "--preset", "tiny", "--hidden-size", "32", "--emb-size", "16",
                              *run])
    assert pre.exit_code == 0, pre.stderr
    assert json.loads(pre.stdout)["steps"] == 10
    fine = runner.invoke(app, ["train", "--out", str(tmp_path / "fine"), "--init-from",
                               str(tmp_path / "pre" / "best.pt"), "--max-steps", "5", *run])
    assert fine.exit_code == 0, fine.stderr


def test_with_song_on_a_package_without_it_fails_in_one_line_before_any_work(tmp_path):
    root = package(tmp_path / "pkg")
    for f in (root / "package" / "dist" / "quantangshi").glob("poet.song.*.json"):
        f.unlink()
    result = runner.invoke(app, ["corpus", "build", "--from", str(root / "package"), "--data-dir",
                                 str(tmp_path / "data"), "--with-song"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "poet.song" in result.stderr
    assert not (tmp_path / "data" / "meta.json").exists()
