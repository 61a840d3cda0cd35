"""Reading and writing safetensors files with numpy only; pickled checkpoints are refused.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name
to its dtype, shape and byte range, then the raw bytes. Reading memory-maps the file, so a
tensor is only read when used; bfloat16 comes from ml_dtypes (a JAX dependency), which the
safetensors package's numpy API does not support.
"""
import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

from lm.errors import UserError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX = "model.safetensors.index.json"


def read_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file, as read-only memory-mapped arrays."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    dtype = _DTYPES[info["dtype"]]
    tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
  return tensors


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
    tensors.update(read_file(os.path.join(directory, name)))
  return tensors


def write_file(path: str, tensors: dict[str, np.ndarray]):
  """Writes one .safetensors file (metadata format=pt, which transformers expects)."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
  for name, t in arrays.items():
    header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                    "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for t in arrays.values():
      f.write(t.tobytes())
