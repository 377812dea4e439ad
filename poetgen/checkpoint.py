"""One self-contained checkpoint file: weights, model config, vocabulary, script, tone table and
typed metadata; training adds its state for --resume. Atomic save, safe load.

Its format and checks are in payload.py, with `read_header`, which reads everything but the weights
without torch, so `poetgen check` stays fast."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig, TrainConfig
from .errors import BadCheckpoint, CheckpointError, UsageError
from .paths import atomic_path, shipped_file
from .payload import (
    FORMAT,
    FORMAT_VERSION,
    ModelMeta,
    damaged,
    missing,
    pack_tones,
    parse_parts,
    read_header,
    validate_payload,
    verify_archive,
)
from .vocab import Vocab

if TYPE_CHECKING:  # torch is imported by the functions that need it
    import torch

    from .model import LanguageModel

DEFAULT_NAME = "poetgen-default.pt"
VOCAB_ROWS = ("embed.weight", "head.weight", "head.bias")  # the weights with one row per token


@dataclass
class Checkpoint:
    """A checkpoint read from disk; `model` is built by `load`, not by `read`."""

    path: Path
    config: ModelConfig
    vocab: Vocab
    meta: ModelMeta
    tones: dict[str, list[int]] | None  # {char: [平 count, 仄 count]} of the training corpus
    state_dict: dict = field(repr=False)
    train_state: dict | None = field(default=None, repr=False)
    version: int = FORMAT_VERSION
    model: LanguageModel | None = field(default=None, repr=False)
    critic_payload: dict | None = field(default=None, repr=False)  # best-of-N's critic as stored (reranker())
    _reranker: object = field(default=None, repr=False)  # that payload built, once (read builds it to check it)
    doubles: dict[str, int] | None = field(default=None, repr=False)  # {char: 叠字 count} of the train split

    def reranker(self):
        """The model's critic as a rerank.Reranker, or None when it ships without one."""
        if self.critic_payload is not None and self._reranker is None:
            from .rerank import Reranker

            self._reranker = Reranker.from_payload(self.critic_payload, self.vocab)
        return self._reranker

    def require_vocab(self, vocab: Vocab, fix: str) -> None:
        """UsageError unless this model was trained on `vocab`."""
        if self.vocab.tokens != vocab.tokens:
            raise UsageError(f"{self.path} was trained on another vocabulary: {fix}")

    def require_shape(self, config: ModelConfig, fix: str) -> None:
        """UsageError unless this model's weights have the shape of `config`."""
        if self.config.shape() != config.shape():
            raise UsageError(f"{self.path} has another model shape: {fix}")


def default_checkpoint() -> Path:
    """The shipped model (checkpoints/ of a source checkout, else the copy installed with the package)."""
    path = shipped_file(DEFAULT_NAME)
    if path is None:
        raise CheckpointError(f"no shipped model ({DEFAULT_NAME}) is installed: pass --checkpoint FILE, "
                              "or train one with `poetgen train`")
    return path


# ---------------------------------------------------------------------------------------------
# Save


def model_state(model: torch.nn.Module) -> dict:
    """The state dict of the uncompiled module (torch.compile would prefix `_orig_mod.`);
    a tied output matrix is the embedding, so it is stored once."""
    model = getattr(model, "_orig_mod", model)
    tied = getattr(getattr(model, "config", None), "tie_weights", False)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not (tied and k == "head.weight")}


def load_weights(model: torch.nn.Module, weights: dict) -> None:
    """Load a state dict written by model_state (fp16-stored weights become the model's dtype)."""
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    allowed = {"head.weight"} if model.config.tie_weights else set()
    if unexpected or set(missing) - allowed:
        raise ValueError(f"state dict does not fit the model (missing {missing}, unexpected {unexpected})")


def carry_vocab(weights: dict, old: Vocab, new: Vocab, fresh: dict) -> tuple[dict, int]:
    """`weights` (a state dict over vocabulary `old`) re-indexed to vocabulary `new`: the tensors
    with one row per token (VOCAB_ROWS) take the old row of each token both hold; a token `old` lacks
    starts from the mean of the carried rows (`fresh`'s row when none is carried), so a new character
    begins as an average one rather than as noise. Returns the new state dict and the number of tokens
    carried over."""
    import torch

    pairs = [(i, old.stoi[t]) for i, t in enumerate(new.tokens) if t in old.stoi]
    to_new = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    from_old = torch.tensor([j for _, j in pairs], dtype=torch.long)
    out = {}
    for name, value in weights.items():
        if name in VOCAB_ROWS:
            rows = fresh[name].detach().clone().to(value.dtype)
            if len(pairs):
                rows[:] = value[from_old].float().mean(0).to(value.dtype)
            rows[to_new] = value[from_old]
            value = rows
        out[name] = value
    return out, len(pairs)


def save(path: str | os.PathLike, model: LanguageModel, vocab: Vocab, meta: ModelMeta,
         tones: dict | None = None, train_state: dict | None = None, half: bool = False,
         critic: dict | None = None, doubles: dict | None = None) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename): a crash leaves the previous file intact.
    `half` stores floating-point weights as fp16 (a shipped model); they load back as fp32."""
    weights = model_state(model)
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": weights,
        "vocab": vocab.tokens,
        "tones": pack_tones(tones),
        "meta": asdict(meta),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    if critic is not None:
        payload["rerank"] = critic  # the file's key for the critic since format 3
    if doubles is not None:
        payload["doubles"] = doubles
    _write(path, payload)


def _write(path: str | os.PathLike, payload: dict) -> None:
    """torch.save through a temp file and a rename."""
    import torch

    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (RuntimeError, OSError) as e:  # torch reports a full disk as a RuntimeError from its zip writer
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the disk is full or not writable"
        raise CheckpointError(f"cannot write {path} ({reason}; the previous file, if any, is intact): free some "
                              "space or write it to another folder") from None


# ---------------------------------------------------------------------------------------------
# Read


def tone_counts(path: str | os.PathLike | None = None, data_dir: Path | None = None) -> dict[str, list[int]]:
    """The tone counts `poetgen check` reads tones by: the prepared corpus's in `data_dir` if given, else
    those stored in the checkpoint at `path` (the shipped model when None), read without torch."""
    from .prosody import load_tone_counts

    if data_dir is not None:
        return load_tone_counts(Path(data_dir) / "tones.json")
    path = Path(path) if path is not None else default_checkpoint()
    counts = read_header(path)[3]
    if counts is None:
        raise UsageError(f"{path} has no tone table: export it with `poetgen export`, or pass --data-dir")
    return counts


def read(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint's contents, loaded with weights_only and checked for consistency (model not built)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise missing(path)
    verify_archive(path)
    try:
        with warnings.catch_warnings():  # a legacy file's torch warning is not ours to print: the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the unpickler fails on foreign bytes in many ways
        raise BadCheckpoint(f"{path} is not a readable poetgen checkpoint (not a file `poetgen train` wrote, "
                              "or cut short): pass a file that `poetgen train` wrote") from None
    payload = validate_payload(path, payload)
    config, vocab, meta = parse_parts(path, payload)
    if not isinstance(payload["state_dict"], dict):
        raise damaged(path, "no weights")
    if _weight_shapes(payload["state_dict"]) != _expected_shapes(config):
        raise damaged(path, "its weights do not fit its config")
    train_state = payload.get("train_state")
    if train_state is not None and not isinstance(train_state, dict):
        raise damaged(path, "its training state is malformed")
    if not all(torch.isfinite(v.sum(dtype=torch.float32)) for v in payload["state_dict"].values()
               if v.is_floating_point()):  # one pass each: a NaN or an infinity makes the sum non-finite
        raise damaged(path, "its weights are not finite numbers")
    critic, reranker = payload.get("rerank"), None
    if critic is not None:
        from .rerank import Reranker

        try:
            reranker = Reranker.from_payload(critic, vocab)
        except ValueError as e:
            raise damaged(path, str(e)) from None
        except (TypeError, KeyError, AttributeError, RuntimeError):  # a config or weight of the wrong kind
            raise damaged(path, "its critic is malformed") from None
    return Checkpoint(path, config, vocab, meta, payload.get("tones"), payload["state_dict"], train_state,
                      payload["format_version"], critic_payload=critic, _reranker=reranker,
                      doubles=payload.get("doubles"))


def _weight_shapes(state_dict: dict) -> dict | None:
    try:
        return {k: tuple(v.shape) for k, v in state_dict.items()}
    except AttributeError:
        return None


def _expected_shapes(config: ModelConfig) -> dict:
    """The shapes a checkpoint's weights must have for `config` (the tied head is stored once)."""
    from .model import LanguageModel

    return {k: v for k, v in LanguageModel.weight_shapes(config).items()
            if not (config.tie_weights and k == "head.weight")}


_INIT_NAMES = ("uniform_", "normal_", "zeros_", "kaiming_uniform_", "xavier_uniform_")
_skip_init = threading.local()  # per thread: whether torch.nn.init's functions leave tensors as they are
_switch_lock = threading.Lock()


def _install_init_switch() -> None:
    """Wrap torch.nn.init's functions once per process so that a thread can switch them off for itself
    (_without_init); every other thread, and this one outside, gets the real functions."""
    from torch.nn import init

    with _switch_lock:
        if getattr(init, "_poetgen_switch", False):
            return
        for name in _INIT_NAMES:
            original = getattr(init, name)

            def switched(tensor, *args, _original=original, **kwargs):
                return tensor if getattr(_skip_init, "depth", 0) else _original(tensor, *args, **kwargs)

            setattr(init, name, functools.wraps(original)(switched))
        init._poetgen_switch = True


@contextlib.contextmanager
def _without_init():
    """Modules this thread builds inside skip their random initialization (a third of a second for a
    2x1024), for a model whose weights are all loaded next. (Building on the meta device would
    import torch's reference ops: seconds.)"""
    _install_init_switch()
    _skip_init.depth = getattr(_skip_init, "depth", 0) + 1
    try:
        yield
    finally:
        _skip_init.depth -= 1


def build_model(ckpt: Checkpoint, device: str | torch.device = "cpu") -> LanguageModel:
    """The model of a checkpoint in eval mode on `device`."""
    from .model import LanguageModel

    try:
        with _without_init():  # every weight comes from the file
            model = LanguageModel(ckpt.config)
        load_weights(model, ckpt.state_dict)
    except Exception:  # noqa: BLE001 - shapes or names that do not fit
        raise damaged(ckpt.path, "its weights do not fit its config") from None
    return model.to(device).eval()


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint and build its model (eval mode, fp32) on `device`."""
    ckpt = read(path)
    ckpt.model = build_model(ckpt, device)
    return ckpt




def attach_critic(source: Path, output: Path, critic: dict) -> Checkpoint:
    """Write `output`: the checkpoint `source` as it is, with `critic` (a Reranker's payload) as its critic."""
    return attach(source, output, critic=critic)


def attach(source: Path, output: Path, **parts) -> Checkpoint:
    """Write `output` atomically: the checkpoint `source` as it is, with the optional parts given
    (critic: a Reranker's payload; doubles: a 叠字 table) set or replaced; checked on the way in and out."""
    import torch

    unknown = set(parts) - {"critic", "doubles"}
    if unknown:
        raise ValueError(f"not an optional part of a checkpoint: {', '.join(sorted(unknown))}")
    read(source)  # checked like any checkpoint
    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload.update({"rerank" if name == "critic" else name: part for name, part in parts.items()})
    payload["tones"] = pack_tones(payload.get("tones"))  # a format 2 file gets the packed table, and format 3
    payload["format_version"] = FORMAT_VERSION
    _write(output, payload)
    return read(output)


def train_config_of(ckpt: Checkpoint) -> TrainConfig:
    """The training configuration a last.pt was written with."""
    if ckpt.train_state is None:
        raise UsageError(f"{ckpt.path} holds no training state (a best.pt or shipped model): resume from the "
                         "last.pt `poetgen train` wrote")
    try:
        return TrainConfig.from_dict(ckpt.train_state["train_config"])
    except (KeyError, TypeError):
        raise damaged(ckpt.path, "its training state is malformed") from None
