"""Normalize stage: mojibake repair, Unicode NFKC, control characters, spaces."""

import html.parser
import re
import unicodedata

import ftfy

from lm.data.prep.config import NormalizeConfig

# ftfy does the encoding repair only; quotes, HTML entities and line breaks
# are left to the explicit, documented steps below.
_FTFY = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False,
                             fix_line_breaks=False, normalization=None)
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f\u200b\ufeff]")
_HSPACE = re.compile(r"[^\S\n]+")
_LINE_EDGES = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5",
               "h6", "section", "article", "blockquote", "pre", "table"}


class _TextExtractor(html.parser.HTMLParser):
  """Collects visible text; block elements become line breaks."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts, self._skip = [], 0

  def handle_starttag(self, tag, attrs):
    self._skip += tag in ("script", "style")
    if tag in _BLOCK_TAGS:
      self.parts.append("\n")

  def handle_endtag(self, tag):
    self._skip -= tag in ("script", "style") and self._skip > 0
    if tag in _BLOCK_TAGS:
      self.parts.append("\n")

  def handle_data(self, data):
    if not self._skip:
      self.parts.append(data)


def html_to_text(text: str) -> str:
  """Visible text of an HTML document (scripts and styles dropped)."""
  parser = _TextExtractor()
  parser.feed(text)
  parser.close()
  return "".join(parser.parts)


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
  """Returns `text` repaired and normalized according to `cfg`."""
  if cfg.html_to_text:
    text = html_to_text(text)
  if not text.isascii():  # ASCII has no mojibake and is NFKC already.
    if cfg.fix_mojibake:
      text = ftfy.fix_text(text, _FTFY)
    if cfg.unicode_form:
      text = unicodedata.normalize(cfg.unicode_form, text)
  text = _LINE_BREAKS.sub("\n", text)
  text = _CONTROL.sub("", text)
  text = _HSPACE.sub(" ", text)
  text = _LINE_EDGES.sub("\n", text)
  return _MANY_NEWLINES.sub("\n\n", text).strip()
