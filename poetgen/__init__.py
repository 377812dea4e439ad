"""poetgen: a character-level LSTM language model of Tang poetry.

    import poetgen
    model = poetgen.load()
    print(model.generate(form="qijue", prompt="春", seed=1)[0])
    print(poetgen.check("床前明月光，疑是地上霜。举头望明月，低头思故乡。").ok)

The API lives in poetgen.api; importing poetgen itself loads nothing heavy (torch comes with load)."""

__version__ = "0.8.1"

__all__ = ["__version__", "check", "load"]


def __getattr__(name: str):
    if name in ("load", "check", "Model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'poetgen' has no attribute {name!r}")
