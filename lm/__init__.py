"""lm: a small JAX/Flax research codebase for language models."""
__version__ = "0.1.0"


def load(model_dir: str, step: int | None = None, mesh_shape=None):
  """Loads a model directory (a run or an import) onto a mesh: see lm.api.load."""
  from lm.api import load as _load  # lazy: `import lm` stays cheap
  return _load(model_dir, step, mesh_shape)


def evaluate(model, tasks, **kwargs) -> dict:
  """Runs evaluation tasks on a loaded model: see lm.evaluation.runner.evaluate."""
  from lm.evaluation.runner import evaluate as _evaluate  # lazy, as load
  return _evaluate(model, tasks, **kwargs)
