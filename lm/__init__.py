"""lm: a small JAX/Flax research codebase for language models."""
__version__ = "0.1.0"


def load(model_dir: str, step: int | None = None):
  """Loads a trained run: see lm.api.load."""
  from lm.api import load as _load  # lazy: `import lm` stays cheap
  return _load(model_dir, step)
