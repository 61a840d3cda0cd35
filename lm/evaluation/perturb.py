"""Seeded, deterministic text perturbations for prompt-robustness evaluation.

Every function maps (text, seed) to one perturbed text: the same inputs give the same output
on every machine (numpy's PCG64 seeded with (seed, salt) -- never Python's salted `hash`).

  character level  typo(text, rate, seed, kind): `rate` of the eligible words (alphabetic, at
                   least 3 letters) get exactly one edit each: 'swap' two adjacent different
                   letters, 'delete' one letter, 'insert' one letter (a QWERTY neighbour of the
                   letter it follows), 'keyboard' replace one letter by a QWERTY neighbour
                   (case kept); 'mixed' draws one of the four per word.
  word level       synonym_swap(text, rate, seed): `rate` of the words listed in
                   assets/synonyms.tsv (Apache-2.0, written for lm) become one of their listed
                   synonyms; capitalisation is kept.
  sentence level   distract(text, seed, kind): appends one distracting suffix, StressTest's
                   tautologies ('stress', Naik et al. 2018) or CheckList's irrelevant URL/handle
                   ('checklist', Ribeiro et al. 2020).
  prompt template  paraphrase(prompt, variant): rewrites the template's cue words
                   ("Question:" -> "Q:", "Answer:" -> "A:", ...) and/or prepends an
                   instruction, leaving the task's own text alone.

The number of words perturbed is round(rate * eligible), at least one when rate > 0 and any
word is eligible, chosen without replacement: the rate is exact, not a per-word coin flip.
"""
import functools
import importlib.resources
import re

import numpy as np

KINDS = ("swap", "delete", "insert", "keyboard")
_WORD = re.compile(r"[A-Za-z]+")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
  """Letters adjacent on a (staggered) QWERTY keyboard: same row +-1, the row above at the
  same and next column, the row below at the previous and same column."""
  out = {}
  for r, row in enumerate(_ROWS):
    for c, ch in enumerate(row):
      near = []
      for dr, dc in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
        rr, cc = r + dr, c + dc
        if 0 <= rr < len(_ROWS) and 0 <= cc < len(_ROWS[rr]):
          near.append(_ROWS[rr][cc])
      out[ch] = "".join(near)
  return out


NEIGHBOURS = _keyboard_neighbours()


Seed = int | tuple[int, ...]


def rng_for(seed: Seed, salt: int) -> np.random.Generator:
  """A generator determined by the seed (an int or a tuple such as (seed, document index))
  and a salt that differs per perturbation family."""
  return np.random.default_rng([*((seed,) if isinstance(seed, int) else seed), salt])


def _count(rate: float, eligible: int) -> int:
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must be in [0, 1], got {rate}")
  if rate == 0.0 or eligible == 0:
    return 0
  return min(eligible, max(1, int(rate * eligible + 0.5)))


def _typo_positions(word: str, kind: str) -> list[int]:
  """Positions at which `kind` changes the word (empty: not applicable)."""
  if kind == "swap":
    return [i for i in range(len(word) - 1) if word[i].lower() != word[i + 1].lower()]
  if kind == "delete":
    return list(range(len(word)))
  if kind == "insert":  # insert after letter i
    return list(range(len(word)))
  if kind == "keyboard":
    return list(range(len(word)))
  raise ValueError(f"unknown typo kind {kind!r}; expected one of {KINDS} or 'mixed'")


def _apply_typo(word: str, kind: str, rng: np.random.Generator) -> str:
  i = int(rng.choice(_typo_positions(word, kind)))
  if kind == "swap":
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]
  if kind == "delete":
    return word[:i] + word[i + 1:]
  near = NEIGHBOURS[word[i].lower()]
  ch = _match_case(near[int(rng.integers(len(near)))], word[i])
  if kind == "insert":
    return word[:i + 1] + ch + word[i + 1:]
  return word[:i] + ch + word[i + 1:]  # keyboard


def _replace_words(text: str, spans: list[tuple[int, int]], new: list[str]) -> str:
  out, last = [], 0
  for (start, end), word in zip(spans, new):
    out += [text[last:start], word]
    last = end
  return "".join(out) + text[last:]


def _words(text: str, protect: re.Pattern | None):
  """The word matches of `text` outside the spans `protect` matches."""
  blocked = [m.span() for m in protect.finditer(text)] if protect is not None else []
  return [m for m in _WORD.finditer(text)
          if not any(s < m.end() and m.start() < e for s, e in blocked)]


def typo(text: str, rate: float, seed: Seed, kind: str = "mixed",
         protect: re.Pattern | None = None) -> str:
  """`text` with one typo in each of round(rate * n) of its n eligible words (see module doc).

  A word is eligible if it has at least 3 letters, lies outside the matches of `protect`
  (e.g. a template's cue words) and, for 'swap', has two adjacent different letters.
  Non-letters (spaces, punctuation, digits, newlines) are never touched.
  """
  kinds = KINDS if kind == "mixed" else (kind,)
  for k in kinds:
    _typo_positions("ab", k)  # validates the kind
  rng = rng_for(seed, 0)
  words = [m for m in _words(text, protect) if len(m.group()) >= 3
           and any(_typo_positions(m.group(), k) for k in kinds)]
  chosen = sorted(rng.choice(len(words), _count(rate, len(words)), replace=False).tolist())
  spans, new = [], []
  for j in chosen:
    word = words[j].group()
    usable = [k for k in kinds if _typo_positions(word, k)]
    new.append(_apply_typo(word, usable[int(rng.integers(len(usable)))], rng))
    spans.append(words[j].span())
  return _replace_words(text, spans, new)


@functools.lru_cache(maxsize=None)
def load_synonyms(path: str | None = None) -> dict[str, tuple[str, ...]]:
  """{word: synonyms} from a TSV (`word<TAB>syn1,syn2`, '#' comments); default: the bundled
  lm/evaluation/assets/synonyms.tsv."""
  if path is None:
    text = importlib.resources.files("lm.evaluation").joinpath(
        "assets/synonyms.tsv").read_text(encoding="utf-8")
  else:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  table = {}
  for line in text.splitlines():
    if line.strip() and not line.startswith("#"):
      word, synonyms = line.split("\t")
      table[word.strip().lower()] = tuple(s.strip() for s in synonyms.split(","))
  return table


def _match_case(new: str, like: str) -> str:
  """`new` in the case of `like`: all caps, capitalised or as is."""
  if like.isupper() and len(like) > 1:
    return new.upper()
  if like[0].isupper():
    return new[0].upper() + new[1:]
  return new


def synonym_swap(text: str, rate: float, seed: Seed,
                 table: dict[str, tuple[str, ...]] | None = None,
                 protect: re.Pattern | None = None) -> str:
  """`text` with round(rate * n) of its n listed words (outside `protect`'s matches)
  replaced by one of their synonyms."""
  table = load_synonyms() if table is None else table
  rng = rng_for(seed, 1)
  words = [m for m in _words(text, protect) if m.group().lower() in table]
  chosen = sorted(rng.choice(len(words), _count(rate, len(words)), replace=False).tolist())
  spans, new = [], []
  for j in chosen:
    word = words[j].group()
    options = table[word.lower()]
    new.append(_match_case(options[int(rng.integers(len(options)))], word))
    spans.append(words[j].span())
  return _replace_words(text, spans, new)


# StressTest (Naik et al. 2018): tautologies that change nothing; CheckList (Ribeiro et al.
# 2020): an irrelevant URL or handle, as its robustness tests append.
STRESS_SUFFIXES = (" and true is true.", " and false is not true.",
                   " and true is true and true is true and true is true.",
                   " and true is true and false is not true.")
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SUFFIX_KINDS = ("stress", "checklist")


def distract(text: str, seed: Seed, kind: str = "stress") -> str:
  """`text` followed by one distracting suffix (the text itself is unchanged)."""
  rng = rng_for(seed, 2)
  if kind == "stress":
    return text + STRESS_SUFFIXES[int(rng.integers(len(STRESS_SUFFIXES)))]
  if kind == "checklist":
    token = "".join(_ALNUM[int(i)] for i in rng.integers(len(_ALNUM), size=10))
    return text + (f" https://t.co/{token}" if rng.integers(2) else f" @{token}")
  raise ValueError(f"unknown suffix kind {kind!r}; expected one of {SUFFIX_KINDS}")


# Template paraphrases: each is (cue rewrites, instruction prefix). Cues are matched at the
# start of a line only, so the task's own text is never rewritten.
PARAPHRASES = {
    "short_cues": ({"Question:": "Q:", "Answer:": "A:"}, ""),
    "long_cues": ({"Question:": "Query:", "Answer:": "Response:", "Q:": "Query:",
                   "A:": "Response:"}, ""),
    "instruction": ({}, "Answer the following question.\n\n"),
    "instruction_short_cues": ({"Question:": "Q:", "Answer:": "A:"},
                               "Read the text and choose the best answer.\n\n"),
}


def paraphrase(prompt: str, variant: str) -> str:
  """`prompt` rendered with an equivalent template: line-initial cue words rewritten per
  PARAPHRASES[variant] and its instruction prepended."""
  if variant not in PARAPHRASES:
    raise ValueError(f"unknown paraphrase {variant!r}; expected one of {sorted(PARAPHRASES)}")
  cues, prefix = PARAPHRASES[variant]
  if cues:
    pattern = re.compile(r"(?m)^(" + "|".join(map(re.escape, cues)) + ")")
    prompt = pattern.sub(lambda m: cues[m.group(1)], prompt)
  return prefix + prompt
