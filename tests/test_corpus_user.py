"""A corpus from a user's own file (`corpus build --from FILE`): JSON lines and plain text, the same
pipeline and split, bad files refused with one line and nothing left behind, and a fine-tune from a
model whose vocabulary lacks some of the file's characters. Synthetic poems only."""

from __future__ import annotations

import json
import random

import pytest
from cli_helpers import cli, one_line_error, real_poetgen
from synth import ALPHABET, random_poem
from tiny import VOCAB, tiny_model

from poetgen import checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.vocab import USER_MIN_COUNT

NEW = [chr(0x5000 + k * 11) for k in range(12)]  # characters the tiny model's vocabulary lacks


def poems(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = random_poem(rng, i)
        lines = [x for para in p["paragraphs"] for x in para.replace("，", "，|").replace("。", "。|").split("|") if x]
        if i % 3 == 0:  # some lines hold characters outside the tiny vocabulary
            lines[0] = rng.choice(NEW) + lines[0][1:]
        out.append({"title": p["title"], "author": "某甲" if i % 2 else "某乙", "lines": lines})
    return out


def write_jsonl(path, items, extra: bool = True):
    with open(path, "w", encoding="utf-8") as f:
        for p in items:
            record = {"title": p["title"], "author": p["author"], "body": "\n".join(p["lines"])}
            if extra:
                record["source"] = "anthology"  # a key of the user's own, ignored
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_text(path, items, marks: bool = True):
    with open(path, "w", encoding="utf-8") as f:
        for p in items:
            lines = p["lines"] if marks else [x.rstrip("，。") for x in p["lines"]]
            f.write(f"《{p['title']}》\n" + "\n".join(lines) + "\n\n")
    return path


def test_json_lines_and_plain_text_build_the_same_poems_in_the_same_splits(tmp_path):
    items = poems(240)
    a = cli("corpus", "build", "--from", str(write_jsonl(tmp_path / "mine.jsonl", items)), "--data-dir",
            str(tmp_path / "a"))
    b = cli("corpus", "build", "--from", str(write_text(tmp_path / "mine.txt", items, marks=False)), "--data-dir",
            str(tmp_path / "b"))
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    assert "mine.jsonl" in a.stderr and "train" in a.stderr
    meta_a, meta_b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in "ab")
    assert meta_a["source"]["format"] == "jsonl" and meta_b["source"]["format"] == "text"
    assert len(meta_a["source"]["sha256"]) == 64 and meta_a["min_count"] == USER_MIN_COUNT
    assert meta_a["poems"] == meta_b["poems"] and meta_a["poems"]["val"] >= 12  # 10 percent of 240, about
    for split in ("train", "val"):
        body = [json.loads(x)["body"] for x in (tmp_path / "a" / f"poems.{split}.jsonl").read_text().splitlines()]
        text = [json.loads(x)["body"] for x in (tmp_path / "b" / f"poems.{split}.jsonl").read_text().splitlines()]
        assert body == text  # marks added by turns where plain text had none: the same bodies
    stats = cli("corpus", "stats", "--data-dir", str(tmp_path / "a"))
    assert stats.exit_code == 0 and "mine.jsonl" in stats.stdout
    assert json.loads(cli("corpus", "stats", "--data-dir", str(tmp_path / "a"), "--json").stdout)["source"][
        "file"] == "mine.jsonl"


def test_a_small_file_is_built_and_said_to_be_small(tmp_path):
    result = cli("corpus", "prepare", "--from", str(write_jsonl(tmp_path / "few.jsonl", poems(40))), "--data-dir",
                 str(tmp_path / "c"))  # prepare: nothing to fetch for a file
    assert result.exit_code == 0, result.stderr
    assert "a small file" in result.stderr
    assert not (tmp_path / "c" / "cache").exists()


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"", "is empty"),
    (b"\n  \n", "is empty"),
    (b'{"title": "x"}\n', "no \"body\""),
    (b'{"body": "\xe4\xb8\x80"\n', "not JSON"),
    (b'["a list"]\n', "not a JSON object"),
    (b"abc def\n\nxyz uvw\n", "no usable poem"),
    ("一二三四五，六七八九十。\n".encode(), "at least 20"),
    (("一" * 30_000).encode(), "characters, more than any poem"),
])
def test_bad_files_are_one_line_errors_that_leave_nothing_behind(tmp_path, content, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    out = tmp_path / "corpus"
    result = real_poetgen("corpus", "build", "--from", str(path), "--data-dir", str(out))
    assert result.returncode == 2 and words in result.stderr.decode() and one_line_error(result), result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_folder_that_is_no_package_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    result = cli("corpus", "build", "--from", str(tmp_path / "folder"), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 2 and one_line_error(result) and "own poems" in result.stderr, result.stderr


def test_with_song_needs_the_package(tmp_path):
    result = cli("corpus", "build", "--from", str(write_jsonl(tmp_path / "m.jsonl", poems(30))), "--with-song",
                 "--data-dir", str(tmp_path / "e"))
    assert result.exit_code == 2 and one_line_error(result) and "--with-song" in result.stderr


def test_a_fine_tune_keeps_the_model_characters_and_adds_the_file(tmp_path):
    data = tmp_path / "mine"
    assert cli("corpus", "build", "--from", str(write_jsonl(tmp_path / "m.jsonl", poems(120))), "--data-dir",
               str(data), "--script", "traditional").exit_code == 0  # the tiny model's script
    base = tmp_path / "base.pt"
    checkpoint.save(base, tiny_model(), VOCAB, ModelMeta(script="traditional", poets={"某丙": 40}),
                    tones={c: [9, 0] for c in ALPHABET[:20]} | {c: [0, 9] for c in ALPHABET[20:50]})
    result = cli("train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--init-from", str(base),
                 "--batch-size", "4", "--bptt", "8", "--max-steps", "3", "--eval-every", "3")
    assert result.exit_code == 0, result.stderr
    ft = checkpoint.load(tmp_path / "run" / "best.pt")
    corpus_tokens = json.loads((data / "vocab.json").read_text())
    assert ft.vocab.tokens[:len(corpus_tokens)] == corpus_tokens  # the corpus's ids unchanged
    assert set(VOCAB.tokens) <= set(ft.vocab.tokens)  # every character the model had
    added = [t for t in ft.vocab.tokens if t not in VOCAB.stoi]
    assert set(added) >= set(NEW[:4]) and f"{len(added):,} new ones" in result.stderr, result.stderr
    assert ft.tones is not None  # the file has no tones: the model keeps its table
    assert {"某丙", "某甲", "某乙"} <= set(ft.meta.poets)  # the poets it knew, and the file's
    sampled = cli("sample", "-c", str(tmp_path / "run" / "best.pt"), "--form", "wujue", "--seed", "1")
    assert sampled.exit_code == 0, sampled.stderr


def test_eval_file_reads_a_users_file_in_either_format(tmp_path, tiny_checkpoint):
    items = poems(30, seed=3)
    figures = []
    for path in (write_jsonl(tmp_path / "p.jsonl", items), write_text(tmp_path / "p.txt", items)):
        result = cli("eval", "-c", str(tiny_checkpoint), "--file", str(path), "--json")
        assert result.exit_code == 0, result.stderr
        figures.append(json.loads(result.stdout))
    assert figures[0]["record"] == figures[1]["record"] and figures[0]["unknown"] == figures[1]["unknown"] > 0
    one_a_line = tmp_path / "lines.txt"  # the older format: one poem a line, title<TAB>body
    one_a_line.write_text("".join(f"{p['title']}\t{''.join(p['lines'])}\n" for p in items), encoding="utf-8")
    result = json.loads(cli("eval", "-c", str(tiny_checkpoint), "--file", str(one_a_line), "--json").stdout)
    assert result["record"] == figures[0]["record"]


def test_plain_text_marks_titles_and_a_missing_file(tmp_path):
    from poetgen.corpus.user import parse_poems

    text = "《甲》\n\n一二三四五\n六七八九十\n甲乙丙丁戊\n\n白日青山远，黄河落照间\n孤舟寒水上\n"
    assert parse_poems(text, "x") == [("甲", "一二三四五，六七八九十。甲乙丙丁戊。"),
                                      ("", "白日青山远，黄河落照间。孤舟寒水上。")]
    result = cli("corpus", "build", "--from", str(tmp_path / "missing.txt"), "--data-dir", str(tmp_path / "m"))
    assert result.exit_code == 2 and one_line_error(result) and "no such file" in result.stderr
    assert not (tmp_path / "m").exists()


def test_eval_file_keeps_one_poem_a_line_with_a_stray_blank_line(tmp_path, tiny_checkpoint):
    items = poems(6, seed=4)
    rows = [f"{p['title']}\t{''.join(p['lines'])}" for p in items]
    plain, gap = tmp_path / "a.txt", tmp_path / "b.txt"
    plain.write_text("\n".join(rows) + "\n", encoding="utf-8")
    gap.write_text("\n".join(rows[:3]) + "\n\n" + "\n".join(rows[3:]) + "\n", encoding="utf-8")
    a, b = (json.loads(cli("eval", "-c", str(tiny_checkpoint), "--file", str(f), "--json").stdout)
            for f in (plain, gap))
    assert a["record"] == b["record"] and a["chars"] == b["chars"]
