from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synth import make_corpus  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_click_command_per_app():
    """typer's CliRunner.invoke rebuilds the app's whole click command tree each time (~0.1 s: the type
    hints of every option of every command); the tests invoke the app hundreds of times, so build it once.
    The tree holds no state between invocations (each makes its own click Context)."""
    import typer.testing

    build = getattr(typer.testing, "_get_command", None)
    if build is None:  # another typer: nothing to speed up
        yield
        return
    built: dict[int, tuple] = {}

    def once(app):
        if id(app) not in built:
            built[id(app)] = (app, build(app))  # app kept alive so its id stays its own
        return built[id(app)][1]

    typer.testing._get_command = once
    yield
    typer.testing._get_command = build


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


# --- tiny models (tests/tiny.py builds them) ---------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_vocab():
    """The synthetic alphabet, the specials and the marks."""
    from tiny import VOCAB

    return VOCAB


@pytest.fixture(scope="session")
def tiny_model(tiny_vocab):
    """A random two-layer LSTM (12/16) over tiny_vocab in eval mode. Shared: a test that changes its
    weights builds its own with tiny.tiny_model()."""
    from tiny import tiny_model

    return tiny_model(0, tiny_vocab)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tiny_vocab, tmp_path_factory) -> Path:
    """tiny_model saved as a traditional-script checkpoint with a made-up tone table (tiny.TONE_COUNTS).
    Read it, never write to it: copy it first."""
    from tiny import TONE_COUNTS, save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny.pt", tiny_model, tiny_vocab, tones=TONE_COUNTS)


@pytest.fixture(scope="session")
def untoned_checkpoint(tiny_model, tiny_vocab, tmp_path_factory) -> Path:
    """tiny_model saved without a tone table (what --strict refuses)."""
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "untoned.pt", tiny_model, tiny_vocab)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """The sampling tests' model (tiny_sampling.tiny_model(0), over tiny_sampling.VOCAB) saved as a
    simplified-script checkpoint without a tone table. Read it, never write to it."""
    import tiny
    from tiny_sampling import VOCAB, tiny_model

    return tiny.save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model(0), VOCAB, "simplified")
