"""Runs HF datatrove's closest equivalent of lm-prep on a JSONL corpus.

Gopher quality + repetition filters, then its 4-step MinHash dedup at its
defaults (word 5-grams, 14 buckets x 8 hashes). Run with the Python of a
separate venv that has datatrove; prints one JSON line with timings and the
kept ids file. Not imported by lm.
Usage: python datatrove_run.py INPUT_DIR WORK_DIR TASKS
"""

import gzip
import json
import os
import sys
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import (MinhashConfig,
                                              MinhashDedupBuckets,
                                              MinhashDedupCluster,
                                              MinhashDedupFilter)
from datatrove.pipeline.filters import (GopherQualityFilter,
                                        GopherRepetitionFilter)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer


class WhitespaceTokenizer(WordTokenizer):
  """datatrove's English tokenizer needs spaCy; split on spaces instead
  (lm-prep does the same, so both measure the same words)."""

  def word_tokenize(self, text):
    return text.split()

  def sent_tokenize(self, text):
    return text.split("\n")

  def span_tokenize(self, text):
    spans, pos = [], 0
    for word in text.split():
      pos = text.index(word, pos)
      spans.append((pos, pos + len(word)))
      pos += len(word)
    return spans


def main(input_dir, work, tasks):
  cfg, tok = MinhashConfig(), WhitespaceTokenizer("en")
  times = {}

  def run(name, steps, n_tasks):
    start = time.time()
    LocalPipelineExecutor(steps, tasks=n_tasks, workers=tasks,
                          logging_dir=f"{work}/logs/{name}").run()
    times[name] = time.time() - start

  run("quality", [JsonlReader(input_dir, glob_pattern="*.jsonl.gz"),
                  GopherRepetitionFilter(language=tok),
                  GopherQualityFilter(language=tok),
                  JsonlWriter(f"{work}/filtered")], tasks)
  run("signatures", [JsonlReader(f"{work}/filtered"),
                     MinhashDedupSignature(f"{work}/sigs", config=cfg,
                                           language=tok)], tasks)
  run("buckets", [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets",
                                      config=cfg)], cfg.num_buckets)
  run("cluster", [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove",
                                      config=cfg)], 1)
  run("filter", [JsonlReader(f"{work}/filtered"),
                 MinhashDedupFilter(f"{work}/remove"),
                 JsonlWriter(f"{work}/out")], tasks)
  kept = []
  for name in sorted(os.listdir(f"{work}/out")):
    with gzip.open(f"{work}/out/{name}", "rt") as f:
      kept += [json.loads(l)["id"] for l in f]
  with open(f"{work}/kept_ids.json", "w") as f:
    json.dump(kept, f)
  print(json.dumps({"seconds": times, "kept_ids": f"{work}/kept_ids.json"}))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
