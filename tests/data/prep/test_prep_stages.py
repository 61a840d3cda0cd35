"""Per-document stages of lm-prep, without Beam."""

import random

import numpy as np
import pytest

from lm.data.prep import minhash, synthetic
from lm.data.prep.config import CleanConfig, NormalizeConfig, ReadConfig
from lm.data.prep.normalize import normalize_text
from lm.data.prep.pii import scrub_pii
from lm.data.prep.readers import plan_ranges, read_file, read_range


def test_pii_planted_values_are_replaced():
  text = ("Write to jane.doe+news@example.co.uk or ADMIN@mail.example.org. "
          "Servers 192.168.0.12 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334. "
          "Call +1 415 555 0199, (212) 555-0100 or 650.555.0123 today.")
  scrubbed, counts = scrub_pii(text)
  assert counts == {"email": 2, "ip": 2, "phone": 3}
  for secret in ("jane", "ADMIN", "192.168", "2001:", "415", "212", "650"):
    assert secret not in scrubbed


def test_pii_ordinary_numbers_and_dates_survive():
  text = ("On 2023-01-15 at 12:30 we sold 1,234,567 units at $12.50 (3.14159 "
          "per cent, up 15%); version 1.2.3, ISBN 978-3-16-148410-0, "
          "12/05/2021, year 1999, 10.0.0.256 and room 555.")
  scrubbed, counts = scrub_pii(text)
  assert scrubbed == text and sum(counts.values()) == 0


def test_normalize_repairs_mojibake_nfkc_controls_and_spaces():
  raw = "Caf\u00c3\u00a9 \uff21\uff22\r\nline\x00two \u00a0  x\t\n\n\n\nend "
  assert normalize_text(raw, NormalizeConfig()) == "Café AB\nlinetwo x\n\nend"


def test_html_to_text_drops_markup_and_scripts():
  html = "<p>Hello &amp; <b>welcome</b></p><script>var x = 1;</script><div>bye"
  assert normalize_text(html, NormalizeConfig(html_to_text=True)
                        ) == "Hello & welcome\n\nbye"


def test_clean_lines_uses_c4_rules_offline():
  from lm.data.prep.clean import clean_lines
  good = "This line has plenty of words and ends well. It has two sentences!"
  text = "\n".join(["Home | About", good,
                    "This website uses cookies to improve your experience.",
                    "Please enable JavaScript in your browser to continue.",
                    good.replace("two", "three") + " Third one here."])
  cleaned, reason, counts = clean_lines(text, CleanConfig(enabled=True))
  assert reason is None
  assert cleaned.split("\n") == [good, good.replace("two", "three") +
                                 " Third one here."]
  assert counts["line-filtered:policy"] == 1
  assert counts["line-filtered:javascript"] == 1
  assert clean_lines("Lorem ipsum dolor sit amet, consectetur elit.",
                     CleanConfig(enabled=True))[1] == "clean:loremipsum"


def test_minhash_ignores_line_order_and_tracks_jaccard():
  rng = random.Random(0)
  vocab = synthetic._vocabulary(rng, 5000)
  text = synthetic.make_document(rng, vocab, 300, boilerplate=False)
  lines = text.split("\n")
  sig = lambda t: minhash.signature(t, 3, 128, 1)
  assert np.array_equal(sig(text), sig("\n".join(reversed(lines))))
  other = synthetic.make_document(rng, vocab, 300, boilerplate=False)
  assert minhash.estimated_jaccard(sig(text), sig(other)) < 0.2
  copy = synthetic.near_copy(rng, text, vocab, 0.03, shuffle_all=True)
  a, b = (set(minhash.shingle_hashes(t, 3, 1).tolist()) for t in (text, copy))
  true_j = len(a & b) / len(a | b)
  assert abs(minhash.estimated_jaccard(sig(text), sig(copy)) - true_j) < 0.15
  assert true_j > 0.7


def _write(path, data: bytes):
  path.write_bytes(data)
  return (0, str(path), len(data))


@pytest.mark.parametrize("on_error,reasons", [
    ("drop", [None, "decode_error", "parse_error", None]),
    ("replace", [None, None, "parse_error", None])])
def test_read_jsonl_decode_and_parse_errors(tmp_path, on_error, reasons):
  f = _write(tmp_path / "a.jsonl",
             b'{"id": "x", "text": "fine", "url": "u"}\n'
             b'{"text": "bad \xff byte"}\n'
             b'not json\n\n'
             b'{"text": "no id"}\n')
  docs = list(read_file(f, ReadConfig(on_decode_error=on_error)))
  assert [d["reason"] for d in docs] == reasons
  assert docs[0]["id"] == "x" and docs[0]["extra"] == {"url": "u"}
  assert docs[1]["text"] == "bad \ufffd byte"
  assert docs[3]["id"] == f"{tmp_path}/a.jsonl#4"


def test_read_txt_paragraphs_and_empty_file(tmp_path):
  f = _write(tmp_path / "a.txt", b"one\ntwo\n\n  \nthree\n\n\n")
  docs = list(read_file(f, ReadConfig(split="paragraphs")))
  assert [d["text"] for d in docs] == ["one\ntwo", "three"]
  assert [d["id"] for d in docs] == [f"{tmp_path}/a.txt#0",
                                     f"{tmp_path}/a.txt#1"]
  empty = _write(tmp_path / "e.txt", b"")
  assert [d["text"] for d in read_file(empty, ReadConfig())] == [""]
  assert list(read_file(_write(tmp_path / "e.jsonl", b""), ReadConfig())) == []


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
@pytest.mark.parametrize("range_bytes", [97, 1000, 30_000])
def test_ranges_read_the_same_documents_as_the_whole_file(tmp_path, name,
                                                          range_bytes):
  import gzip
  rng = random.Random(range_bytes)
  lines = [b"", b"   ", b"not json", b'{"id": 7, "text": "x"}'] + [
      ('{"text": "%s"}' % ("w " * rng.randint(0, 200))).encode()
      for _ in range(300)]
  rng.shuffle(lines)
  data = b"\n".join(lines)  # No final newline.
  raw = gzip.compress(data) if name.endswith(".gz") else data
  f = _write(tmp_path / name, raw)
  ranges = plan_ranges([f], range_bytes)
  # Ranges tile the decompressed file (a file under range_bytes / 4 on disk
  # is one range); every line is read exactly once, with the key and id of
  # a whole-file read.
  step = range_bytes if len(raw) > range_bytes // 4 else len(data)
  assert [r[1] for r in ranges] == list(range(0, len(data), step))
  assert [r[2] for r in ranges] == [r[1] for r in ranges[1:]] + [None]
  whole = list(read_file(f, ReadConfig()))
  assert len(whole) == 300 + 2
  assert [d for r in ranges for d in read_range(r, ReadConfig())] == whole


# Words (one with UTF-8) and every kind of whitespace, line break and blank
# line run that _BLANK_LINE knows (CRLF, whitespace-only lines, \v and \f).
_TXT_PIECES = [b"word", b"\xc3\xa9t\xc3\xa9", b" ", b"\t", b"\r", b"\f", b"\v",
               b"\n", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\n \t\n",
               b"\n\n\n\n", b"\n\x0b\n  "]


@pytest.mark.parametrize("seed,chunk", [(0, 1), (1, 7), (2, 64), (3, 1 << 20)])
def test_txt_ranges_read_the_same_blocks_as_the_whole_file(
    tmp_path, monkeypatch, seed, chunk):
  from lm.data.prep import readers
  monkeypatch.setattr(readers, "_CHUNK", chunk)  # Separators across chunks.
  rng = random.Random(seed)
  data = ([b"", b"\n\n \n", b" \r\n"][seed % 3]  # Leading blank lines.
          + b"".join(rng.choice(_TXT_PIECES) for _ in range(2000))
          + [b"", b"\n", b"\n\n", b" \n\t"][seed])  # No final newline, ...
  f = _write(tmp_path / "r.txt", data)
  cfg = ReadConfig(split="paragraphs")
  whole = [(d["id"], d["text"]) for d in read_file(f, cfg)]
  assert len(whole) > 100
  ends = [m.end() for m in readers._BLANK_LINE.finditer(data)]
  for range_bytes in (1, 10, 100, 1000, len(data) - 1, len(data)):
    ranges = plan_ranges([f], range_bytes, "paragraphs")
    # Independently: cut at the first separator end range_bytes or more after
    # the range's start, none at the end of the file.
    starts = [0]
    for end in ends:
      if starts[-1] + range_bytes <= end < len(data):
        starts.append(end)
    assert [r[1] for r in ranges] == starts
    assert [r[2] for r in ranges] == starts[1:] + [None]
    assert [(d["id"], d["text"]) for r in ranges
            for d in read_range(r, cfg)] == whole
  assert len(plan_ranges([f], 100, "paragraphs")) > 10
  # One document per file: never cut.
  assert plan_ranges([f], 1) == plan_ranges([f], 1, "file") == [(f, 0, None, 0)]


def test_read_truncated_gzip_is_a_recorded_error(tmp_path):
  import gzip
  data = gzip.compress(b'{"text": "a"}\n' * 1000)
  docs = list(read_file(_write(tmp_path / "t.jsonl.gz", data[:len(data) // 2]),
                        ReadConfig()))
  assert docs[-1]["reason"] == "read_error"


def test_decontamination_matches_13_grams(tmp_path):
  from lm.data.prep import decontam
  question = ("which river flows through the ancient city of babylon in the "
              "land between the two rivers")
  (tmp_path / "eval.txt").write_text(question + "\n")
  grams = decontam.load_eval_ngrams([str(tmp_path / "eval.txt")], 13)
  leaked = "Trivia night! " + question.upper() + "? Nobody knew."
  assert decontam.contaminated(leaked, grams, 13) == "decontam"
  twelve = " ".join(question.split()[:12])
  assert decontam.contaminated(twelve + " and more", grams, 13) is None


def test_language_filter_uses_bundled_model():
  from lm.data.prep.quality import language_reason
  assert language_reason("The quick brown fox jumps over the lazy dog and "
                         "keeps running into the forest.", ("en",)) is None
  assert language_reason("Der schnelle braune Fuchs springt über den faulen "
                         "Hund und läuft in den Wald.", ("en",)) == "language:de"
