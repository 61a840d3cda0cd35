"""Start-up noise: what C++ libraries (TensorFlow, XLA, absl) log is kept off the terminal.

On a CPU machine TensorFlow's and XLA's native code prints pages of INFO/WARNING lines (CUDA
not found, oneDNN, absl's "before InitializeLog" banner) while lm-train imports and sets up;
absl ignores TF_CPP_MIN_LOG_LEVEL for lines logged before its initialization, so the only
reliable switch is the file descriptor. `hide_native_logs` points fd 2 at a temporary file
while Python's sys.stderr (our messages, warnings, tracebacks, the progress bar) keeps writing
to the terminal; `show_native_logs` puts fd 2 back once training starts (so a native error
during training, e.g. a collective's timeout, is still seen), replaying the hidden lines when
the start failed unexpectedly. lm-train --verbose skips all this.
"""
import os
import sys
import tempfile

_hidden = None  # (dup of the terminal's fd 2, sys.stderr before, the capture file)


def hide_native_logs():
  """Sends native writes to fd 2 into a temporary file until show_native_logs()."""
  global _hidden
  if _hidden is not None:
    return
  sys.stderr.flush()
  terminal = os.dup(2)
  capture = tempfile.TemporaryFile()
  before = sys.stderr
  if sys.stderr is sys.__stderr__:  # (under pytest's capsys, sys.stderr is not fd 2 anyway)
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=before.encoding,
                      errors="backslashreplace")
  os.dup2(capture.fileno(), 2)
  _hidden = (terminal, before, capture)


def show_native_logs(replay: bool = False):
  """Restores fd 2 (a no-op when nothing is hidden); replay: print what was hidden."""
  global _hidden
  if _hidden is None:
    return
  terminal, before, capture = _hidden
  _hidden = None
  sys.stderr.flush()  # the replacement stays open: a progress bar may hold it
  sys.stderr = before
  os.dup2(terminal, 2)
  os.close(terminal)
  if replay:
    capture.seek(0)
    sys.stderr.flush()
    os.write(2, capture.read())
  capture.close()


def exit_now(message: str, code: int):
  """Prints `message` and ends the process at once, silencing every other writer.

  After a failed checkpoint write, Orbax's writers still pending fail one by one, printing
  asyncio tracebacks from their threads until the interpreter is gone. What is on disk is
  final (the earlier checkpoints), so the process ends without its teardown.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  terminal = os.fdopen(os.dup(2), "w")
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
  sys.stderr = open(os.devnull, "w")
  print(message, file=terminal, flush=True)
  os._exit(code)
