"""The shipped model files (installed as poetgen.checkpoints)."""
