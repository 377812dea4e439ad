from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

from synth import make_corpus  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_data(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's data: $POETGEN_DATA points at an empty folder."""
    monkeypatch.setenv("POETGEN_DATA", str(tmp_path_factory.mktemp("no-data")))
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture(scope="session")
def synthetic_package(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("pkg"), poems=400)


@pytest.fixture(scope="session")
def prepared(synthetic_package, tmp_path_factory) -> Path:
    """A prepared corpus built from the synthetic package."""
    from poetgen import corpus

    out = tmp_path_factory.mktemp("prepared")
    corpus.build(out, synthetic_package, script="traditional")
    return out
