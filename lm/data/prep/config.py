"""Options of every `lm-prep` stage, with their documented defaults.

One frozen dataclass per stage keeps the per-document functions pure (they take
their config as an argument) and lets the whole configuration be pickled to
Beam workers and written verbatim into report.json.
"""

import dataclasses
from typing import Optional, Tuple

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """How input files become documents."""
  text_key: str = "text"
  split: str = "file"  # .txt only: "file" (one doc per file) or "paragraphs".
  on_decode_error: str = "drop"  # "drop" (reason decode_error) or "replace".
  # .jsonl(.gz) (and paragraph-split .txt) files are read in ranges of this
  # many decompressed bytes.
  range_bytes: int = 8 << 20


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
  enabled: bool = True
  unicode_form: str = "NFKC"
  fix_mojibake: bool = True  # ftfy.
  html_to_text: bool = False


@dataclasses.dataclass(frozen=True)
class CleanConfig:
  """C4 line cleaning (tensorflow_datasets' c4_utils.clean_page)."""
  enabled: bool = False
  min_words_per_line: int = 5
  min_num_sentences: int = 3
  max_word_length: int = 1000


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """MassiveText (Gopher, Rae et al. 2021, appendix A) quality rules."""
  enabled: bool = True
  min_words: int = 50
  max_words: int = 100_000
  min_mean_word_length: float = 3.0
  max_mean_word_length: float = 10.0
  max_symbol_word_ratio: float = 0.1  # '#' and '...' each, per word.
  max_bullet_lines: float = 0.9
  max_ellipsis_lines: float = 0.3
  min_alpha_words: float = 0.8
  stop_words: Tuple[str, ...] = STOP_WORDS
  min_stop_words: int = 2
  max_dup_line_frac: float = 0.30
  max_dup_para_frac: float = 0.30
  max_dup_line_char_frac: float = 0.20
  max_dup_para_char_frac: float = 0.20
  # Characters in the most frequent 2-, 3-, 4-gram.
  max_top_ngram_char_frac: Tuple[Tuple[int, float], ...] = (
      (2, 0.20), (3, 0.18), (4, 0.16))
  # Characters in all duplicated 5- ... 10-grams.
  max_dup_ngram_char_frac: Tuple[Tuple[int, float], ...] = (
      (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
  languages: Tuple[str, ...] = ()  # e.g. ("en",); empty: no language filter.


@dataclasses.dataclass(frozen=True)
class PiiConfig:
  enabled: bool = True


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  """Exact dedup on a text hash, then MinHash-LSH near dedup."""
  exact: bool = True
  near: bool = True
  ngram: int = 3  # Word n-grams, taken within a line (line order is ignored).
  bands: int = 20
  rows: int = 5
  threshold: float = 0.6  # Estimated Jaccard a candidate pair must reach.
  seed: int = 1
  cc_rounds: int = 4  # Label-propagation rounds for connected components.

  @property
  def num_perm(self) -> int:
    return self.bands * self.rows


@dataclasses.dataclass(frozen=True)
class PrepConfig:
  """Everything `run_pipeline` needs besides the Beam pipeline options."""
  inputs: Tuple[str, ...]
  output_dir: str
  read: ReadConfig = ReadConfig()
  normalize: NormalizeConfig = NormalizeConfig()
  clean: CleanConfig = CleanConfig()
  quality: QualityConfig = QualityConfig()
  pii: PiiConfig = PiiConfig()
  dedup: DedupConfig = DedupConfig()
  decontaminate: Tuple[str, ...] = ()  # Evaluation files; 13-gram overlap.
  decontam_ngram: int = 13
  audit_terms: Optional[str] = None  # JSON file; None: built-in lists.
  num_shards: int = 0  # 0: one per 16 MB of input files (pipeline.SHARD_BYTES).
  spm_vocab_size: int = 0  # 0: no SentencePiece model.
  spm_sample_chars: int = 20_000_000
  validation_fraction: float = 0.02
  overwrite: bool = False

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
