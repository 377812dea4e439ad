"""The checkpoint file's payload: its format and version, typed metadata, the checks every read makes,
and `read_header`, which reads everything but the weights without torch (fast: `poetgen check`).

Format 3 is written; format 2 files are read as well; an older file is refused with a BadCheckpoint
that says so."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import BadCheckpoint
from .text import SCRIPTS
from .vocab import Vocab

FORMAT = "poetgen-checkpoint"


FORMAT_VERSION = 3  # 3: the tone table packed (poetgen 0.5); format 2 files are read as well


OLDEST_FORMAT = 2


@dataclass
class ModelMeta:
    """What a checkpoint records about its model's training and figures."""

    script: str | None = None  # simplified | traditional: the script of the corpus it was trained on
    corpus_hash: str | None = None
    corpus_source: dict | None = None
    step: int = 0
    epoch: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float | None = None  # nats/char over whole records, the figure best.pt is chosen by
    val: dict | None = None  # evaluate.evaluate_stream figures on the val split
    test: dict | None = None  # the same on the test split (measured by `poetgen export`)
    train_config: dict | None = None
    device: str | None = None
    time: str | None = None
    exported_from: str | None = None
    software: dict | None = None  # what trained it: {"poetgen": version, "torch": version, "commit": sha or None}
    poets: dict | None = None  # {name: train poems} of the poets its records name (poetgen.plan)

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        """Typed metadata; ValueError naming the first field of the wrong type."""
        kinds = {"str": str, "dict": dict, "int": int, "float": (int, float)}
        out = {}
        for f in fields(cls):
            if f.name not in d or d[f.name] is None:
                continue
            value = d[f.name]
            kind = kinds[str(f.type).split(" |")[0]]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"metadata field {f.name} is {type(value).__name__}")
            if f.name in ("val", "test") and not all(isinstance(value.get(k), dict) for k in ("record",)):
                raise ValueError(f"metadata field {f.name} has no figures")
            if f.name == "script" and value not in SCRIPTS:
                raise ValueError(f"metadata field script is {value!r}, not one of {', '.join(SCRIPTS)}")
            if f.name == "poets" and not all(isinstance(k, str) and k and type(n) is int for k, n in value.items()):
                raise ValueError("metadata field poets is not a table of names and counts")
            out[f.name] = value
        return cls(**out)


def pack_tones(tones: dict[str, list[int]] | None) -> dict | None:
    """The tone table as a checkpoint stores it: {"chars": one string, "counts": [平, 仄, 平, 仄, …]}.
    Two objects instead of one list per character: a third of the time a checkpoint takes to unpickle."""
    if tones is None or "chars" in tones:
        return tones
    return {"chars": "".join(tones), "counts": [n for pair in tones.values() for n in pair]}


def unpack_tones(stored: Any) -> dict[str, list[int]] | None:
    """A stored tone table (packed, or one list per character as before 0.5) as {char: [平, 仄]}; None
    when it is malformed."""
    if isinstance(stored, dict) and set(stored) == {"chars", "counts"}:
        chars, counts = stored["chars"], stored["counts"]
        if (isinstance(chars, str) and isinstance(counts, list) and len(counts) == 2 * len(chars)
                and len(set(chars)) == len(chars) and all(type(n) is int and n >= 0 for n in counts)):
            return {c: counts[2 * i:2 * i + 2] for i, c in enumerate(chars)}
        return None
    if isinstance(stored, dict) and all(isinstance(v, list) and len(v) == 2
                                        and all(type(n) is int and n >= 0 for n in v) for v in stored.values()):
        return stored
    return None


def damaged(path: Path, what: str) -> BadCheckpoint:
    return BadCheckpoint(f"{path} is damaged ({what}): train, export or download it again")


def missing(path: Path) -> BadCheckpoint:
    if path.is_dir():
        return BadCheckpoint(f"--checkpoint {path} is a folder: pass a .pt file (e.g. {path}/best.pt)")
    return BadCheckpoint(f"no checkpoint at {path}: pass --checkpoint FILE (a poetgen .pt file)")


def validate_payload(path: Path, payload: Any) -> dict:
    """The payload checked for consistency; CheckpointError otherwise."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadCheckpoint(f"{path} is not a poetgen checkpoint: pass a file that `poetgen train` wrote")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise damaged(path, "no format version")
    if version > FORMAT_VERSION:
        raise BadCheckpoint(f"{path} is from a newer poetgen (format {version}): upgrade poetgen")
    if version < OLDEST_FORMAT:
        raise BadCheckpoint(f"{path} is from an older poetgen (format {version}; this one reads formats "
                              f"{OLDEST_FORMAT} to {FORMAT_VERSION}): train or export the model again")
    for key in ("model_config", "state_dict", "vocab", "meta"):
        if key not in payload:
            raise damaged(path, f"no {key}")
    if not isinstance(payload["model_config"], dict) or not isinstance(payload["meta"], dict):
        raise damaged(path, "its config or metadata is not a table")
    if not isinstance(payload["vocab"], list) or not all(isinstance(t, str) for t in payload["vocab"]):
        raise damaged(path, "its vocabulary is not a list of tokens")
    if payload.get("tones") is not None:
        payload["tones"] = unpack_tones(payload["tones"])
        if payload["tones"] is None:
            raise damaged(path, "its tone table is malformed")
        if not all(any(counts[k] > counts[1 - k] for counts in payload["tones"].values()) for k in (0, 1)):
            raise damaged(path, "its tone table has no character that usually reads 平, or none 仄")
    doubles = payload.get("doubles")
    if doubles is not None and not (isinstance(doubles, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in doubles.items())):
        raise damaged(path, "its 叠字 table is malformed")
    return payload


class _HeaderUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's pickle without torch: tensors become None, nothing else is built."""

    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _placeholder
        if (module, name) in self.SAFE:
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid):
        return None


def _placeholder(*args, **kwargs):
    return None


def parse_parts(path: Path, payload: dict) -> tuple[ModelConfig, Vocab, ModelMeta]:
    """The config, vocabulary and metadata of a checked payload; CheckpointError ("damaged") when they
    do not hold together."""
    try:
        config = ModelConfig.from_dict(payload["model_config"]).validate()
        vocab = Vocab(payload["vocab"])
        meta = ModelMeta.from_dict(payload["meta"])
    except Exception as e:  # noqa: BLE001 - any inconsistency means the same to the user
        raise damaged(path, str(e).split(":")[0]) from None
    if config.vocab_size != len(vocab):
        raise damaged(path, f"its vocabulary has {len(vocab)} tokens but the model {config.vocab_size}")
    return config, vocab, meta


def verify_archive(path: Path) -> None:
    """BadCheckpoint "damaged" when any part of the checkpoint (its weights, tables or header) is not the
    bytes written: every member of the file's zip archive carries the CRC-32 of its bytes, checked here
    against them (some 40 ms for the shipped model), by every command that reads a checkpoint. A file
    that is no zip archive is left to the reader to refuse."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return
    if bad is not None:
        raise damaged(path, f"its stored part {bad.rsplit('/', 1)[-1]} fails its checksum")


def read_header(path: str | os.PathLike) -> tuple[ModelConfig, Vocab, ModelMeta, dict | None]:
    """(config, vocabulary, meta, tone table) of a checkpoint, read without torch (fast), its bytes
    checked first (verify_archive)."""
    path = Path(path)
    if not path.is_file():
        raise missing(path)
    verify_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            payload = _HeaderUnpickler(io.BytesIO(archive.read(name))).load()
    except (OSError, zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError,
            TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError):
        raise BadCheckpoint(f"{path} is not a readable poetgen checkpoint: pass a file that `poetgen train` "
                              "wrote") from None
    payload = validate_payload(path, payload)
    config, vocab, meta = parse_parts(path, payload)
    return config, vocab, meta, payload.get("tones")
