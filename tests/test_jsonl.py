"""lm.jsonl.read_jsonl: line numbers, blank lines, and one clear error per problem."""
import pytest

from lm.errors import UserError
from lm.jsonl import read_jsonl


def test_values_with_their_line_numbers_blank_lines_skipped(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('{"a": 1}\n\n  \n"text"\n[1, 2]\n')
  assert read_jsonl(str(path)) == [(1, {"a": 1}), (4, "text"), (5, [1, 2])]


@pytest.mark.parametrize("content, message", [
    (b'{"a": 1}\n{"a": \n', "a.jsonl:2: not JSON"),
    (b'{"a": 1}\n"\xff"\n', "a.jsonl: invalid UTF-8"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, message):
  path = tmp_path / "a.jsonl"
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    read_jsonl(str(path))


def test_missing_file_message(tmp_path):
  with pytest.raises(UserError, match="file not found"):
    read_jsonl(str(tmp_path / "none.jsonl"))
  with pytest.raises(UserError, match="^no prompts here$"):
    read_jsonl(str(tmp_path / "none.jsonl"), missing="no prompts here")


def test_gzipped_files_and_truncated_ones(tmp_path):
  import gzip
  path = tmp_path / "a.jsonl.gz"
  data = gzip.compress(b'{"text": "x"}\n\n[1]\n')
  path.write_bytes(data)
  assert read_jsonl(str(path)) == [(1, {"text": "x"}), (3, [1])]
  path.write_bytes(data[:-6])
  with pytest.raises(UserError, match="a.jsonl.gz: not a complete gzip file"):
    read_jsonl(str(path))
