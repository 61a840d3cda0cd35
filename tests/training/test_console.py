"""lm.training.console: native start-up lines are hidden, and shown when the start fails."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # subprocesses

# A process that hides native output as lm-train does, then writes to fd 2 as C++ code does.
_PROLOGUE = """
import os, sys
from lm.training import console
console.hide_native_logs()
os.write(2, b"I0000 native start-up noise\\n")
"""


def _run(body: str) -> subprocess.CompletedProcess:
  # capture_output reads until every writer of the pipe (the keeper too) has closed it.
  return subprocess.run([sys.executable, "-c", _PROLOGUE + body], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


def test_a_native_fatal_error_during_start_up_is_shown():
  # A native abort (absl's LOG(FATAL), an unknown XLA flag) runs no Python after it.
  out = _run('os.write(2, b"F0000 Unknown flag in XLA_FLAGS: --xla_bogus\\n"); os.abort()')
  assert out.returncode < 0
  assert out.stderr.splitlines()[-2:] == ["I0000 native start-up noise",
                                          "F0000 Unknown flag in XLA_FLAGS: --xla_bogus"]


def test_a_good_start_drops_the_hidden_lines_and_restores_fd_2():
  out = _run('print("python line", file=sys.stderr); console.show_native_logs()\n'
             'os.write(2, b"native line during training\\n")')
  assert out.returncode == 0, out.stderr
  assert out.stderr.splitlines() == ["python line", "native line during training"]


def test_a_failed_start_replays_the_hidden_lines_before_what_follows():
  out = _run('console.show_native_logs(replay=True); print("error line", file=sys.stderr)')
  assert out.returncode == 0, out.stderr
  assert out.stderr.splitlines() == ["I0000 native start-up noise", "error line"]
