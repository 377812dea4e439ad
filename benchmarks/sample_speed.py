"""Sampling speed: characters/s at batch 1 (free form), and the time for 100 七律 in one batch: plain
(best of 1) and as `poetgen sample --form qilv --num 100` runs by default (best of 8, rhyme, no 重字).

    python benchmarks/sample_speed.py                       # a random 2x512 model, vocab 7,271
    python benchmarks/sample_speed.py --checkpoint checkpoints/poetgen-default.pt

Also times a naive loop (one nn.LSTM module call per character) on the same model for comparison.
Prints one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from poetgen import checkpoint
from poetgen.forms import FORMS
from poetgen.model import LanguageModel, ModelConfig
from poetgen.sample import Generator, Request, SampleOptions, prepare
from poetgen.vocab import SPECIALS, Vocab


def random_model(vocab_size: int, emb: int, hidden: int, layers: int) -> tuple[LanguageModel, Vocab]:
    chars = [chr(0x4E00 + i) for i in range(vocab_size - len(SPECIALS) - 6)] + list("，。？！；：")
    vocab = Vocab([*SPECIALS, *chars])
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(len(vocab), emb, hidden, layers)).eval(), vocab


@torch.inference_mode()
def naive_chars_per_s(model: LanguageModel, steps: int) -> float:
    x = torch.tensor([[1]])
    state = None
    t = time.perf_counter()
    for _ in range(steps):
        logits, state = model(x, state)
        x = torch.multinomial(logits[0, -1].softmax(-1), 1)[None]
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a poetgen checkpoint (default: a random model of the given size)")
    ap.add_argument("--emb", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=7271)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.checkpoint:
        loaded = checkpoint.load(args.checkpoint)
        model, vocab = loaded.model, loaded.vocab
    else:
        model, vocab = random_model(args.vocab, args.emb, args.hidden, args.layers)
    load_s = time.perf_counter() - t0
    gen = Generator(model, vocab)

    best_cps = 0.0
    for r in range(args.repeats):
        t = time.perf_counter()
        poem = gen.generate(SampleOptions(seed=r, max_chars=400, title="", best_of=1))[0]
        best_cps = max(best_cps, (len(poem.body) + 1) / (time.perf_counter() - t))  # +1: the end token

    best_batch = float("inf")
    for r in range(args.repeats):
        t = time.perf_counter()
        poems = gen.generate(SampleOptions(seed=r, num=100, form=FORMS["qilv"], best_of=1))
        best_batch = min(best_batch, time.perf_counter() - t)
    assert len(poems) == 100

    default = SampleOptions(num=100, form=FORMS["qilv"])  # best of SampleOptions.best_of; rhymed, no 重字
    verse = None  # (with a checkpoint: as `poetgen sample --form qilv --num 100` decodes)
    if args.checkpoint:
        gen, default, verse = prepare(loaded, default, Request())
    best_default = float("inf")
    for r in range(args.repeats):
        t = time.perf_counter()
        gen.generate(replace(default, seed=r), verse=verse)
        best_default = min(best_default, time.perf_counter() - t)

    naive = naive_chars_per_s(model, 300)
    print(json.dumps({
        "model": f"{model.config.num_layers}x{model.config.hidden_size} {model.config.cell}, emb "
                 f"{model.config.emb_size}, vocab {len(vocab)}",
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 3),
        "chars_per_s_batch1": round(best_cps, 1),
        "naive_chars_per_s_batch1": round(naive, 1),
        "speedup_vs_naive": round(best_cps / naive, 2),
        "qilv_100_s": round(best_batch, 3),
        "poems_per_s_batch100": round(100 / best_batch, 1),
        f"qilv_100_best_of_{default.best_of}_s": round(best_default, 3),
        "qilv_100_verse_rules": verse is not None,
    }))


if __name__ == "__main__":
    main()
