"""One-file checkpoints: weights, model config, vocabulary and metadata; atomic save, safe load."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import CheckpointError
from .model import LanguageModel, LSTMConfig
from .paths import atomic_path
from .vocab import Vocab

FORMAT = "poetgen-checkpoint"
FORMAT_VERSION = 1


def model_state(model: torch.nn.Module) -> dict:
    """The state dict of the uncompiled module (torch.compile would prefix `_orig_mod.`)."""
    model = getattr(model, "_orig_mod", model)
    tied = getattr(getattr(model, "config", None), "tie_weights", False)
    # a tied output matrix is the embedding: store it once
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not (tied and k == "head.weight")}


def load_weights(model: torch.nn.Module, weights: dict) -> None:
    """Load a state dict written by model_state (the tied output matrix comes with the embedding)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    allowed = {"head.weight"} if model.config.tie_weights else set()
    if unexpected or set(missing) - allowed:
        raise RuntimeError(f"state dict does not fit the model (missing {missing}, unexpected {unexpected})")


def save(path: str | os.PathLike, model: LanguageModel, vocab: Vocab, meta: dict, train_state: dict | None = None,
         half: bool = False) -> None:
    """Write a checkpoint atomically: a crash during the save leaves the previous file intact.
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
        "meta": meta,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, loaded with weights_only; CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass --checkpoint FILE (a poetgen .pt file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler fails on arbitrary bytes in many ways (IndexError, struct.error, ...)
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable poetgen checkpoint ({first}): pass a file that "
                              "`poetgen train` wrote") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a poetgen checkpoint: pass a file that `poetgen train` wrote")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is from a newer poetgen (format {version}): upgrade poetgen")
    for key in ("model_config", "state_dict", "vocab", "meta"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks {key!r}: the checkpoint is damaged, train or download it again")
    return payload


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LanguageModel, Vocab, dict]:
    """Rebuild (model in eval mode, vocab, meta) from a checkpoint; fp16-stored weights become fp32."""
    payload = load_payload(path)
    try:
        vocab = Vocab(payload["vocab"])
        config = LSTMConfig.from_dict(payload["model_config"])
        model = LanguageModel(config)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        load_weights(model, weights)
    except Exception as e:  # a damaged payload can fail in many ways; all mean the same to the user
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}): train or download it again") from None
    model.to(device).eval()
    return model, vocab, payload["meta"]


DEFAULT_NAME = "poetgen-default.pt"


def default_checkpoint() -> Path:
    """The shipped model: checkpoints/ of a source checkout, else the copy installed with the package."""
    from importlib import resources

    from .paths import checkout_root

    root = checkout_root()
    if root is not None and (root / "checkpoints" / DEFAULT_NAME).is_file():
        return root / "checkpoints" / DEFAULT_NAME
    try:
        installed = resources.files("poetgen.checkpoints") / DEFAULT_NAME
        if installed.is_file():
            return Path(str(installed))
    except (ModuleNotFoundError, TypeError):
        pass
    raise CheckpointError(f"no shipped model ({DEFAULT_NAME}) is installed: pass --checkpoint FILE, "
                          "or train one with `poetgen train`")
