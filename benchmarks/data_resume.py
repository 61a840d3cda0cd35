"""Input-pipeline resume time: seconds from "restore the data position of step N" to its batch.

  python benchmarks/data_resume.py [--step 10000]

For the bundled corpus task (the CPU recipe's tiny_shakespeare_char, batch 12, length 64 + 1,
random windows) and a JSONL files task (2,000 synthetic documents in 4 files, batch 8, length
256, packed), the script reads N batches, takes the reader's `state` through JSON as a
checkpoint would, then times a fresh reader's `restore(state)` and first batch, next to the
time a fresh reader takes to its first batch at step 0.
"""
import argparse
import json
import os
import random
import tempfile
import time

from lm.data import tasks
from lm.data.inputs import InputConfig, make_batches
from lm.data.prep import synthetic


def _files_task(directory: str) -> str:
  rng = random.Random(0)
  vocab = synthetic._vocabulary(rng, 5000)
  for f in range(4):
    with open(os.path.join(directory, f"part-{f}.jsonl"), "w") as out:
      for _ in range(500):
        out.write(json.dumps({"text": synthetic.make_document(rng, vocab, 300)}) + "\n")
  return tasks.register_files_task("resume_bench", {"train": os.path.join(directory, "*.jsonl")},
                                   tasks.shakespeare_char_vocabulary(), "jsonl")


def _first_batch_seconds(cfg: InputConfig, state=None) -> float:
  start = time.perf_counter()
  batches = make_batches(cfg, "train")
  if state is not None:
    batches.restore(state)
  next(batches)
  return time.perf_counter() - start


def measure(cfg: InputConfig, step: int) -> dict:
  batches = make_batches(cfg, "train")
  start = time.perf_counter()
  for _ in range(step):
    next(batches)
  read = time.perf_counter() - start
  state = json.loads(json.dumps(batches.state))
  return {"read_s": read, "state_bytes": len(json.dumps(state)),
          "fresh_s": _first_batch_seconds(cfg), "resume_s": _first_batch_seconds(cfg, state)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--step", type=int, default=10_000)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    runs = {
        "tiny_shakespeare_char (corpus)": InputConfig(batch_size=12, seq_len=64, continuous=True),
        "JSONL files task": InputConfig(task=_files_task(tmp), batch_size=8, seq_len=256),
    }
    print(f"| task | read {args.step} batches s | state bytes | first batch at step 0 s | "
          f"resume at step {args.step} s |\n|---|---|---|---|---|")
    for name, cfg in runs.items():
      r = measure(cfg, args.step)
      print(f"| {name} | {r['read_s']:.1f} | {r['state_bytes']:,} | {r['fresh_s']:.2f} | "
            f"{r['resume_s']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
