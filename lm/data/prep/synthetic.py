"""Synthetic corpora with planted duplicates, for tests and the benchmark.

Documents are English-looking prose (Zipfian pseudo-words mixed with common
function words, so they pass the Gopher rules) with shared boilerplate lines.
Planted copies come after all originals, so the original is always the
earliest document of its group:
  exact copies: the same text;
  near copies:  `edit_fraction` of the words replaced, and either two lines
                swapped or all lines shuffled.
"""

import dataclasses
import gzip
import json
import os
import random
from typing import Dict, List, Tuple

_FUNCTION_WORDS = ("the the the of of and and to to a a in is that for it "
                   "with as was on be by at this have from or an they which "
                   "one you were her all she there would their we him been "
                   "has when who will more no if out so said what up its "
                   "about into than them can only other new some could time "
                   "these two may then do first any my now such like our over "
                   "man me even most made after also did many before must "
                   "through back years where much your way well down should "
                   "because each just those people how too little state good "
                   "very make world still own see men work long get here "
                   "between both life being under never day same another know "
                   "while last might us great old year off come since against "
                   "go came right used take three").split()
_SYLLABLES = ("ka ri to mu sen da lo vi ne sha por tel gan mi ru fe do ba "
              "lin cor ast ven tra mol pe sur gi hal nor ent").split()
BOILERPLATE = (
    "Subscribe to our newsletter for the latest news and updates from the team.",
    "All rights reserved and no part of this page may be copied without consent.",
    "Share this story with your friends and family on your favourite networks.",
    "Read more articles like this one in the archive section of the website.",
)


@dataclasses.dataclass
class Corpus:
  docs: List[Tuple[str, str]]  # (id, text), in input order.
  exact_of: Dict[str, str]  # planted exact copy id -> original id
  near_of: Dict[str, str]  # planted near copy id -> original id


def _vocabulary(rng: random.Random, size: int) -> List[str]:
  words = set()
  while len(words) < size:
    words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))))
  return sorted(words)


def _sentence(rng, vocab) -> str:
  n = rng.randint(8, 16)
  words = [rng.choice(_FUNCTION_WORDS) if rng.random() < 0.45 else
           vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)
                 if rng.random() < 0.3 else rng.randrange(len(vocab))]
           for _ in range(n)]
  return " ".join(words).capitalize() + "."


def make_document(rng: random.Random, vocab: List[str], words: int,
                  boilerplate: bool = True) -> str:
  """About `words` words of prose, one sentence per line, in paragraphs."""
  lines, count = [], 0
  while count < words:
    lines.append(_sentence(rng, vocab))
    count += len(lines[-1].split())
    if rng.random() < 0.15:
      lines.append("")  # Paragraph break.
  if boilerplate:
    lines = [rng.choice(BOILERPLATE)] + lines + ["", rng.choice(BOILERPLATE)]
  return "\n".join(lines).strip()


def near_copy(rng: random.Random, text: str, vocab: List[str],
              edit_fraction: float, shuffle_all: bool) -> str:
  """`text` with `edit_fraction` of its words replaced and lines reordered."""
  lines = [l.split(" ") for l in text.split("\n") if l]
  positions = [(i, j) for i, l in enumerate(lines) for j in range(len(l))]
  for i, j in rng.sample(positions, max(1, round(edit_fraction * len(positions)))):
    lines[i][j] = rng.choice(vocab)
  if shuffle_all:
    rng.shuffle(lines)
  else:
    a, b = rng.sample(range(len(lines)), 2)
    lines[a], lines[b] = lines[b], lines[a]
  return "\n".join(" ".join(l) for l in lines)


def make_corpus(num_distinct: int, num_exact: int, num_near: int,
                seed: int = 0, words: Tuple[int, int] = (100, 400),
                edit_range: Tuple[float, float] = (0.01, 0.05),
                shuffle_all_prob: float = 0.5) -> Corpus:
  """Distinct documents, then exact and near copies of random originals."""
  rng = random.Random(seed)
  vocab = _vocabulary(rng, 20000)
  docs = [(f"doc{i:07d}", make_document(rng, vocab, rng.randint(*words)))
          for i in range(num_distinct)]
  exact_of, near_of = {}, {}
  for i in range(num_exact):
    orig_id, text = docs[rng.randrange(num_distinct)]
    exact_of[f"exact{i:07d}"] = orig_id
    docs.append((f"exact{i:07d}", text))
  for i in range(num_near):
    orig_id, text = docs[rng.randrange(num_distinct)]
    near_of[f"near{i:07d}"] = orig_id
    docs.append((f"near{i:07d}", near_copy(
        rng, text, vocab, rng.uniform(*edit_range), rng.random() < shuffle_all_prob)))
  return Corpus(docs, exact_of, near_of)


def write_jsonl(docs, directory: str, num_files: int) -> List[str]:
  """Writes `docs` as contiguous .jsonl.gz shards; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  per_file = -(-len(docs) // num_files)
  paths = []
  for f in range(num_files):
    path = os.path.join(directory, f"part-{f:05d}.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
      for doc_id, text in docs[f * per_file:(f + 1) * per_file]:
        out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    paths.append(path)
  return paths
