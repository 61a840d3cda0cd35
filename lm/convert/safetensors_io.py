"""Reading and writing HF safetensors checkpoints (safetensors' numpy API); pickles are refused.

bfloat16 tensors come back as ml_dtypes.bfloat16 arrays (a JAX dependency), so no torch is
needed to read or write them.
"""
import glob
import json
import os

import numpy as np
from safetensors import numpy as safetensors_numpy

from lm.errors import UserError

INDEX = "model.safetensors.index.json"


def read_dir(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of an HF checkpoint directory: model.safetensors or a sharded index."""
  index = os.path.join(directory, INDEX)
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(directory, "*.safetensors")))
  if not files:
    pickles = [p for ext in ("bin", "pt", "pth", "ckpt")
               for p in glob.glob(os.path.join(directory, f"*.{ext}"))]
    if pickles:
      raise UserError(f"{directory} holds only pickle checkpoints ({os.path.basename(pickles[0])}"
                      "): they can run arbitrary code when loaded and are refused. Convert "
                      "them to safetensors first (e.g. transformers' save_pretrained with "
                      "safe_serialization=True, in a sandbox you trust).")
    raise UserError(f"no *.safetensors files in {directory}")
  tensors = {}
  for name in files:
    tensors.update(safetensors_numpy.load_file(os.path.join(directory, name)))
  return tensors


def write_file(path: str, tensors: dict[str, np.ndarray]):
  """Writes one .safetensors file (metadata format=pt, which transformers expects)."""
  safetensors_numpy.save_file({name: np.ascontiguousarray(t) for name, t in tensors.items()},
                              path, metadata={"format": "pt"})
