"""Train/validation assignment of a prepared document, by a hash of its id.

Shared by the pipeline (token counts per split) and `task.py` (the SeqIO
task), so both always agree on which document is in which split.
"""

import hashlib

TRAIN, VALIDATION = "train", "validation"


def stable_hash(text: str) -> int:
  """A 64-bit hash that is the same in every process (unlike `hash`)."""
  return int.from_bytes(
      hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def split_of(doc_id: str, validation_fraction: float) -> str:
  """Returns "validation" for about `validation_fraction` of the ids."""
  bucket = stable_hash("split:" + doc_id) % 1_000_000
  return VALIDATION if bucket < validation_fraction * 1_000_000 else TRAIN
