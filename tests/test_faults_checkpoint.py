"""Faults in checkpoint files: damage inside a valid file refused in one line by every command that
reads one, saves made durable before the rename, and no command writing over the checkpoint it reads."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from cli_helpers import cli, one_line_error, runner

from poetgen import checkpoint
from poetgen.checkpoint import ModelMeta
from poetgen.cli import app


def damaged_copies(tiny_checkpoint: Path, folder: Path) -> dict[str, Path]:
    """Five kinds of damage a checkpoint can have inside a valid file."""
    base = torch.load(tiny_checkpoint, weights_only=True)
    kinds = {
        "config": {**base, "model_config": {**base["model_config"], "hidden_size": 999}},
        "vocab_size": {**base, "vocab": base["vocab"][:-3]},
        "meta_type": {**base, "meta": {**base["meta"], "val": "fine", "step": "ten"}},
        "weights": {**base, "state_dict": {k: v[:1] for k, v in base["state_dict"].items()}},
        "missing": {k: v for k, v in base.items() if k != "vocab"},
        "two_character_token": {**base, "vocab": [*base["vocab"][:-1], "春风"]},
        "critic_wrong_type": {**base, "rerank": _critic(len(base["vocab"]), dropout="x")},
        "critic_missing_key": {**base, "rerank": _critic(None)},
        "tones_empty": {**base, "tones": {"chars": "", "counts": []}},
        "script_unknown": {**base, "meta": {**base["meta"], "script": "klingon"}},
        "tones_one": {**base, "tones": {"chars": "天", "counts": [3, 1]}},
    }
    paths = {}
    for name, payload in kinds.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(payload, paths[name])
    return paths


def _critic(vocab_size: int | None, **config) -> dict:
    """A critic entry whose config holds `config` (and a vocab_size unless None), without weights."""
    size = {} if vocab_size is None else {"vocab_size": vocab_size}
    return {"kind": "critic", "config": {**size, **config}, "state_dict": {}, "weight": 1.0}


def test_damaged_checkpoints_are_one_line_everywhere(tiny_checkpoint, prepared, tmp_path):
    for kind, path in damaged_copies(tiny_checkpoint, tmp_path).items():
        for args in (["info", "-c", str(path)], ["info", "-c", str(path), "--json"],
                     ["sample", "-c", str(path), "--seed", "1"], ["check", "-c", str(path), "一二三"],
                     ["train", "--init-from", str(path), "--out", str(tmp_path / f"w-{kind}"), "--data-dir",
                      str(prepared), "--max-steps", "1"]):
            if args[0] == "check" and kind in ("config", "weights", "critic_wrong_type", "critic_missing_key"):
                continue  # check reads the tone table only, which these leave intact
            result = runner.invoke(app, args)
            assert result.exit_code != 0, (kind, args, result.stdout)
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, (kind, args)
            if kind.startswith(("critic", "two", "tones", "script")):
                assert "damaged" in result.stderr and result.exit_code == 2, (kind, args, result.stderr)
            assert result.stdout == "", (kind, args)
        run = tmp_path / f"r-{kind}"
        run.mkdir()
        (run / "last.pt").write_bytes(path.read_bytes())
        result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--data-dir", str(prepared)])
        assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1, (kind, result.stderr)


def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch, tiny_model, tiny_vocab):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    checkpoint.save(tmp_path / "m.pt", tiny_model, tiny_vocab, ModelMeta())
    assert events == ["fsync", "replace"]


def test_an_output_that_is_an_input_is_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "m.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    result = cli("sample", "-c", str(copy), "-o", str(copy))
    assert result.exit_code == 2 and one_line_error(result)
    result = cli("export", "-c", str(copy), "-o", str(copy), "--no-test")
    assert result.exit_code == 2 and one_line_error(result)
    assert copy.read_bytes() == tiny_checkpoint.read_bytes()


def test_a_plain_pickle_is_one_line_without_torchs_warning(tmp_path):
    """A plain pickle (not torch's format): one line, not torch's multi-line warning first."""
    import pickle

    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": "poetgen-checkpoint", "format_version": 3}, protocol=4))
    for args in (["info", "-c", str(legacy)], ["sample", "-c", str(legacy)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and one_line_error(result) and "Warning" not in result.stderr, result.stderr


def test_one_flipped_bit_anywhere_is_damage_to_every_command(tiny_checkpoint, prepared, tmp_path):
    """Every part of a checkpoint (weights, tables, header) is checked against its checksum by the one
    reader all commands use: a single flipped bit in a weight is refused alike by sample, info, eval,
    export and check (which reads only the tone table), never other poems."""
    import zipfile

    with zipfile.ZipFile(tiny_checkpoint) as archive:
        parts = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64]
    for n, part in enumerate(parts[:3]):
        data = bytearray(tiny_checkpoint.read_bytes())
        at = part.header_offset + 30 + len(part.filename.encode()) + len(part.extra) + part.file_size // 2
        data[at] ^= 1 << (n % 8)
        flipped = tmp_path / f"flipped{n}.pt"
        flipped.write_bytes(bytes(data))
        for args in (["sample", "-c", str(flipped), "--seed", "1"], ["info", "-c", str(flipped)],
                     ["eval", "-c", str(flipped), "--split", "val", "--data-dir", str(prepared)],
                     ["export", "-c", str(flipped), "-o", str(tmp_path / "out.pt"), "--no-test"],
                     ["check", "-c", str(flipped), "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2 and "damaged" in result.stderr and "checksum" in result.stderr, (
                n, args, result.stderr)
            assert result.stdout == "" and not (tmp_path / "out.pt").exists()
