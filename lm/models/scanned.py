"""Scanned layers (ModelConfig.scan_layers) <-> one subtree per layer.

A scanned model keeps its blocks' params in one `layers` subtree whose arrays lead with a layer
axis; an unscanned one has `layer_0` .. `layer_{num_layers - 1}`. Converters (lm.convert) and
calibration (lm.compression) move between the two with these.
"""
import jax
import numpy as np


def stack_layers(params: dict, num_layers: int) -> dict:
  """layer_0..layer_{num_layers - 1} -> one `layers` subtree with a leading layer axis (a new
  dict)."""
  params = dict(params)
  layers = [params.pop(f"layer_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return params


def unstack_layers(params: dict, num_layers: int) -> dict:
  """The inverse of stack_layers (a new dict; each layer's arrays are slices of `layers`')."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
