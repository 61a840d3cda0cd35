"""A small notebook API: `lm.load(model_dir)` -> a model with .config, .params and .logits."""
import dataclasses
import json
import os

import jax
import numpy as np

from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.sampling import generate
from lm.sharding import make_mesh
from lm.training import checkpoints
from lm.training.state import param_shardings, with_shardings


@dataclasses.dataclass
class LoadedModel:
  """A trained model's config and params, with jitted forward and sampling."""
  config: ModelConfig
  params: dict
  task: str | None = None

  def __post_init__(self):
    self.module = Transformer(self.config)
    self._logits = jax.jit(lambda params, tokens: self.module.apply({"params": params}, tokens))

  def logits(self, tokens) -> jax.Array:
    """int tokens [batch, length] -> float32 logits [batch, length, vocab]."""
    return self._logits(self.params, np.asarray(tokens, np.int32))

  def sample(self, prompt_tokens, num_steps: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0) -> np.ndarray:
    """Continues each row of `prompt_tokens` [batch, length] by num_steps sampled tokens."""
    prompt = np.asarray(prompt_tokens, np.int32)
    window = self.config.max_len if self.config.positions == "learned" else 1024
    return np.asarray(generate(self.module, self.params, prompt, jax.random.PRNGKey(seed),
                               num_steps=num_steps, temperature=temperature, top_k=top_k,
                               window=min(window, prompt.shape[1] + num_steps)))


def load(model_dir: str, step: int | None = None) -> LoadedModel:
  """Loads the params of the latest (or given) checkpoint of a run directory."""
  path = os.path.join(model_dir, "model.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{model_dir} is not an lm run directory (no model.json)")
  with open(path) as f:
    saved = json.load(f)
  config = ModelConfig(**saved["model"])
  # Restore onto this process's first device, whatever mesh the run was saved from.
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  abstract, shardings = param_shardings(Transformer(config), mesh, seq_len=1)
  abstract = with_shardings(abstract, shardings)
  params = checkpoints.restore_params(os.path.join(model_dir, "checkpoints"), step, abstract)
  return LoadedModel(config=config, params=params, task=saved.get("task"))
