"""Each Gopher rule with a document just inside and just outside its bound.

Every rule is tested alone (the others made permissive), so the document
only needs to control the one value the rule measures.
"""

import dataclasses
import math

import pytest

from lm.data.prep.config import QualityConfig
from lm.data.prep.quality import quality_reason

DEFAULT = QualityConfig()
PERMISSIVE = QualityConfig(
    min_words=1, max_words=10**9, min_mean_word_length=0,
    max_mean_word_length=10**9, max_symbol_word_ratio=10**9,
    max_bullet_lines=1.0, max_ellipsis_lines=1.0, min_alpha_words=0.0,
    min_stop_words=0, max_dup_line_frac=1.0, max_dup_para_frac=1.0,
    max_dup_line_char_frac=1.0, max_dup_para_char_frac=1.0,
    max_top_ngram_char_frac=(), max_dup_ngram_char_frac=())


def only(**fields) -> QualityConfig:
  """PERMISSIVE with the given rule(s) at their default (or given) values."""
  return dataclasses.replace(PERMISSIVE, **{
      k: getattr(DEFAULT, k) if v is None else v for k, v in fields.items()})


def word(i: int, length: int = 4) -> str:
  """The i-th unique lower-case word (3-letter base-26 stem, padded)."""
  stem = "".join(chr(97 + (i // 26**p) % 26) for p in range(3))
  return (stem + "x" * length)[:length] if length >= 3 else "zz"[:length]


def words(n: int, start: int = 0, length: int = 4):
  return [word(start + i, length) for i in range(n)]


def unique_chars(total: int, start: int):
  """Unique words whose lengths add up to exactly `total` (>= 5)."""
  out, i = [], start
  while total > 9:
    out.append(word(i, 5))
    total, i = total - 5, i + 1
  return out + [word(i, total)] if total >= 3 else out


def check(text, cfg, rule, passes):
  assert quality_reason(text, cfg) == (None if passes else rule)


def test_natural_document_passes_defaults_and_tiny_one_fails():
  from lm.data.prep import synthetic
  import random
  rng = random.Random(0)
  text = synthetic.make_document(rng, synthetic._vocabulary(rng, 500), 300)
  assert quality_reason(text, DEFAULT) is None
  assert quality_reason("the cat and the dog.", DEFAULT) == "word_count"


@pytest.mark.parametrize("n,passes", [(50, True), (49, False)])
def test_min_words(n, passes):
  check(" ".join(words(n)), only(min_words=None), "word_count", passes)


@pytest.mark.parametrize("n,passes", [(60, True), (61, False)])
def test_max_words(n, passes):
  check(" ".join(words(n)), only(max_words=60), "word_count", passes)


@pytest.mark.parametrize("short,passes", [(0, True), (1, False)])
def test_min_mean_word_length(short, passes):
  # 100 words of 3 letters: mean 3.0; one 2-letter word: 2.99.
  text = " ".join(words(100 - short, length=3) + ["zz"] * short)
  check(text, only(min_mean_word_length=None), "mean_word_length", passes)


@pytest.mark.parametrize("long,passes", [(0, True), (1, False)])
def test_max_mean_word_length(long, passes):
  # 100 words of 10 letters: mean 10.0; one of 11: 10.01.
  text = " ".join(words(100 - long, length=10) + words(long, 500, 11))
  check(text, only(max_mean_word_length=None), "mean_word_length", passes)


@pytest.mark.parametrize("symbol", ["#", "..."])
@pytest.mark.parametrize("k,passes", [(10, True), (11, False)])
def test_symbol_ratio(symbol, k, passes):
  ws = words(100)
  ws[:k] = [w + symbol for w in ws[:k]]  # 10 per 100 words = 0.1 passes.
  check(" ".join(ws), only(max_symbol_word_ratio=None), "symbol_ratio", passes)


@pytest.mark.parametrize("k,passes", [(18, True), (19, False)])
def test_bullet_lines(k, passes):
  lines = [("- " if i < k else "") + " ".join(words(5, 5 * i))
           for i in range(20)]
  check("\n".join(lines), only(max_bullet_lines=None), "bullet_lines", passes)


@pytest.mark.parametrize("k,passes", [(6, True), (7, False)])
def test_ellipsis_lines(k, passes):
  lines = [" ".join(words(5, 5 * i)) + ("..." if i < k else ".")
           for i in range(20)]
  check("\n".join(lines), only(max_ellipsis_lines=None), "ellipsis_lines",
        passes)


@pytest.mark.parametrize("k,passes", [(20, True), (21, False)])
def test_alpha_words(k, passes):
  tokens = words(100 - k) + [str(1000 + i) for i in range(k)]
  check(" ".join(tokens), only(min_alpha_words=None), "alpha_words", passes)


@pytest.mark.parametrize("stops,passes", [(["the", "and"], True),
                                          (["the", "the"], False)])
def test_stop_words(stops, passes):
  check(" ".join(stops + words(60)), only(min_stop_words=None), "stop_words",
        passes)


@pytest.mark.parametrize("sep,field,rule", [
    ("\n", "max_dup_line_frac", "dup_line_frac"),
    ("\n\n", "max_dup_para_frac", "dup_para_frac")])
@pytest.mark.parametrize("dups,passes", [(3, True), (4, False)])
def test_duplicate_line_and_paragraph_fraction(sep, field, rule, dups, passes):
  # 10 lines (paragraphs) of which `dups` repeat an earlier one: 0.3 passes.
  units = [" ".join(words(5, 5 * i)) for i in range(10 - dups)]
  units += [units[0]] * dups
  check(sep.join(units), only(**{field: None}), rule, passes)


@pytest.mark.parametrize("sep,field,rule", [
    ("\n", "max_dup_line_char_frac", "dup_line_char_frac"),
    ("\n\n", "max_dup_para_char_frac", "dup_para_char_frac")])
@pytest.mark.parametrize("extra,passes", [(0, True), (1, False)])
def test_duplicate_line_and_paragraph_chars(sep, field, rule, extra, passes):
  # A 100-character unit repeated once in a 500-character text: 0.2 passes;
  # a 101-character one in 502 characters is just over.
  dup = "d" * (100 + extra)
  rest = 500 - 200 - 4 * len(sep)  # Characters of the three other units.
  units = ["q" * (rest // 3 + (i < rest % 3) - 1) + str(i) for i in range(3)]
  text = sep.join([units[0], dup, units[1], dup, units[2]])
  assert len(text) == 500 + 2 * extra
  check(text, only(**{field: None}), rule, passes)


def _repeated_ngram_doc(n: int, unique_total: int) -> str:
  """An n-gram of 4-letter words twice, plus unique words of given chars."""
  gram = words(n, 20000)
  return " ".join(gram + unique_chars(unique_total, 0) + gram)


@pytest.mark.parametrize("n,limit", DEFAULT.max_top_ngram_char_frac)
@pytest.mark.parametrize("passes", [True, False])
def test_top_ngram_char_fraction(n, limit, passes):
  # The top n-gram covers 2 * 4n chars: frac = 8n / (8n + U) <= limit.
  u = math.ceil(8 * n / limit - 8 * n - 1e-9) - (0 if passes else 1)
  check(_repeated_ngram_doc(n, u), only(max_top_ngram_char_frac=((n, limit),)),
        f"top_{n}gram", passes)


@pytest.mark.parametrize("n,limit", DEFAULT.max_dup_ngram_char_frac)
@pytest.mark.parametrize("passes", [True, False])
def test_duplicated_ngram_char_fraction(n, limit, passes):
  # The repeat (not the first occurrence) covers 4n chars: 4n / (8n + U).
  u = math.ceil(4 * n / limit - 8 * n - 1e-9) - (0 if passes else 1)
  check(_repeated_ngram_doc(n, u), only(max_dup_ngram_char_frac=((n, limit),)),
        f"dup_{n}gram", passes)
