"""Training throughput (tokens/s) of poetgen's own loop on random tokens of the corpus's vocabulary size.

    python benchmarks/train_throughput.py --preset small --seconds 60
    python benchmarks/train_throughput.py --hidden 1024 --emb 512 --batch 128 --bptt 128 --device cuda \\
        --ref path/to/ref_lstm.py          # also runs the reference loop, same sizes, same command
    python benchmarks/train_throughput.py --data corpus --sampled-softmax 1024 --ref path/to/ref_lstm.py

The reference loop is not part of poetgen; pass its path to compare side by side. Prints JSON lines."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from poetgen.corpus import load_split
from poetgen.device import use_bf16
from poetgen.model import PRESETS, ModelConfig
from poetgen.train import TrainConfig, Trainer
from poetgen.vocab import SPECIALS, Vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--emb", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=7865)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 on CUDA, fp32 elsewhere; both loops use the same")
    ap.add_argument("--ref", help="path of the reference loop ref_lstm.py to run with the same sizes")
    ap.add_argument("--locked-dropout", action="store_true", help="AWD-LSTM locked dropout (layer by layer)")
    ap.add_argument("--char-dropout", type=float, default=0.0)
    ap.add_argument("--weight-drop", type=float, default=0.0)
    ap.add_argument("--sampled-softmax", type=int, default=0, metavar="K",
                    help="train with a sampled softmax of K negatives (needs --data: its cost depends on the text)")
    ap.add_argument("--data", type=Path, metavar="DIR",
                    help="train on this prepared corpus's train split instead of random tokens (the vocabulary "
                         "size stays --vocab, so the output layer is the reference's)")
    args = ap.parse_args()

    shape = dict(PRESETS[args.preset], locked_dropout=args.locked_dropout, char_dropout=args.char_dropout,
                 weight_drop=args.weight_drop)
    for key, value in (("emb_size", args.emb), ("hidden_size", args.hidden), ("num_layers", args.layers)):
        if value is not None:
            shape[key] = value
    vocab = Vocab([*SPECIALS, *(chr(0x4E00 + i) for i in range(args.vocab - len(SPECIALS)))])
    rng = np.random.default_rng(0)
    if args.data:
        train = load_split(args.data, "train")
        if train.max() >= args.vocab:
            ap.error(f"--vocab {args.vocab} is smaller than the corpus's vocabulary")
    else:
        if args.sampled_softmax:
            ap.error("--sampled-softmax needs --data: on random tokens every batch holds most of the vocabulary")
        train = rng.integers(0, args.vocab, 3_200_000).astype(np.uint16)
    val = rng.integers(0, args.vocab, 4096).astype(np.uint16)
    marks: dict[str, float] = {}

    def on_step(trainer: Trainer) -> None:
        if trainer.position.step == 3:  # after warm-up (allocator, kernels)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            marks["t0"], marks["tokens0"] = time.perf_counter(), trainer.position.tokens_seen
        if "t0" in marks and time.perf_counter() - marks["t0"] > args.seconds:
            raise StopIteration

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(batch_size=args.batch, bptt=args.bptt, max_steps=10**9, eval_every=10**9,
                          device=args.device, log_every=10**9, precision=args.precision,
                          sampled_softmax=args.sampled_softmax)
        trainer = Trainer(ModelConfig(len(vocab), **shape), cfg, vocab, train, val, Path(out))
        try:
            trainer.run(on_step=on_step)
        except StopIteration:
            pass
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - marks["t0"]
        tokens = trainer.position.tokens_seen - marks["tokens0"]
    dtype = "bf16" if use_bf16(trainer.device, args.precision) else "fp32"
    result = {
        "loop": "poetgen", "device": str(trainer.device), "threads": torch.get_num_threads(), **shape,
        "batch": args.batch, "bptt": args.bptt, "params_M": round(trainer.model.num_parameters() / 1e6, 2),
        "seconds": round(elapsed, 1), "tokens_per_s": round(tokens / elapsed),
        "dtype": dtype, "sampled_softmax": args.sampled_softmax, "data": str(args.data or "random"),
    }
    print(json.dumps(result), flush=True)
    if args.ref:
        device = trainer.device.type
        cmd = [sys.executable, args.ref, "--synthetic", "1", "--layers", str(shape["num_layers"]),
               "--hidden", str(shape["hidden_size"]), "--emb", str(shape["emb_size"]), "--batch", str(args.batch),
               "--bptt", str(args.bptt), "--seconds", str(args.seconds), "--device", device,
               "--dtype", dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps({"loop": "reference", **ref}), flush=True)
        print(json.dumps({"speedup_vs_reference": round(result["tokens_per_s"] / ref["tok_per_s"], 3)}))


if __name__ == "__main__":
    main()
