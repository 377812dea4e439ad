"""poetgen: a character-level LSTM language model of Tang poetry."""

__version__ = "0.1.0"
