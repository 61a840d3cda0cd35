"""Models, training, sampling and conversion import without TensorFlow/SeqIO (GPU images)."""
import subprocess
import sys

import pytest

BLOCK_TF = """
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None  # any import of them now raises ImportError
import lm, lm.api, lm.decoding.windowed, lm.training.loop, lm.convert.hf, lm.cli.train, lm.cli.info
print("ok")
"""


@pytest.mark.slow
def test_core_imports_without_tensorflow():
  out = subprocess.run([sys.executable, "-c", BLOCK_TF], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"
