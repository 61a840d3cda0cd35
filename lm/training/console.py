"""Start-up noise: what C++ libraries (TensorFlow, XLA, absl) log is kept off the terminal.

On a CPU machine TensorFlow's and XLA's native code prints pages of INFO/WARNING lines (CUDA
not found, oneDNN, absl's "before InitializeLog" banner) while lm-train imports and sets up;
absl ignores TF_CPP_MIN_LOG_LEVEL for lines logged before its initialization, so the only
reliable switch is the file descriptor. `hide_native_logs` points fd 2 at a pipe read by a
small keeper process, while Python's sys.stderr (our messages, warnings, tracebacks, the
progress bar) keeps writing to the terminal; `show_native_logs` puts fd 2 back once training
starts (so a native error during training, e.g. a collective's timeout, is still seen) and
tells the keeper to drop the hidden lines, or to print them when the start failed
unexpectedly. A native fatal error (absl's CHECK, an unknown XLA flag) ends the process without
running any Python: the keeper, left without an answer, prints what it kept, so the native
message still reaches the terminal (a moment after the process ended: a shell prompt may come
first; a pipe's reader sees it before the end of its input). lm-train --verbose skips all this.
"""
import os
import select
import sys

_hidden = None  # (dup of the terminal's fd 2, sys.stderr before, the keeper's control pipe,
#                  the keeper process)


def hide_native_logs():
  """Sends native writes to fd 2 to a keeper process until show_native_logs()."""
  global _hidden
  if _hidden is not None:
    return
  import subprocess  # (the keeper itself needs only os, select and sys)
  sys.stderr.flush()
  terminal = os.dup(2)
  data_r, data_w = os.pipe()
  control_r, control_w = os.pipe()
  try:
    # Its own session: a Ctrl-C at the terminal reaches lm-train, not the keeper of its logs.
    keeper = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(data_r), str(control_r)],
        pass_fds=(data_r, control_r), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=terminal, start_new_session=True)
  except OSError:  # no keeper: the native lines stay on the terminal
    for fd in (terminal, data_r, data_w, control_r, control_w):
      os.close(fd)
    return
  os.close(data_r)
  os.close(control_r)
  before = sys.stderr
  if sys.stderr is sys.__stderr__:  # (under pytest's capsys, sys.stderr is not fd 2 anyway)
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=before.encoding,
                      errors="backslashreplace")
  os.dup2(data_w, 2)
  os.close(data_w)
  _hidden = (terminal, before, control_w, keeper)


def show_native_logs(replay: bool = False):
  """Restores fd 2 (a no-op when nothing is hidden); replay: print what was hidden."""
  global _hidden
  if _hidden is None:
    return
  terminal, before, control_w, keeper = _hidden
  _hidden = None
  sys.stderr.flush()  # the replacement stays open: a progress bar may hold it
  sys.stderr = before
  os.dup2(terminal, 2)  # (closes this process's end of the pipe: all it wrote is in there)
  os.close(terminal)
  try:
    os.write(control_w, b"1" if replay else b"0")
  except OSError:  # the keeper is gone (killed): nothing to replay
    pass
  os.close(control_w)
  keeper.wait()  # the replayed lines come before whatever is printed next


def _keep(data: int, control: int):
  """The keeper: reads native lines from `data` until one byte on `control` says to drop them
  (b"0") or print them (b"1"); end of file there (lm-train died) prints them too."""
  kept, verdict, watched = [], b"", [data, control]
  while control in watched:
    for fd in select.select(watched, [], [])[0]:
      chunk = os.read(fd, 1 << 16)
      if fd == control:
        verdict = chunk
        watched.remove(control)
      elif chunk:
        kept.append(chunk)
      else:
        watched.remove(data)
  os.set_blocking(data, False)  # what is already in the pipe (a child may still hold it open)
  try:
    while chunk := os.read(data, 1 << 16):
      kept.append(chunk)
  except BlockingIOError:
    pass
  if verdict != b"0" and kept:
    try:
      sys.stderr.buffer.write(b"".join(kept))
      sys.stderr.flush()
    except OSError:  # no terminal left to print to
      pass


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


if __name__ == "__main__":  # the keeper process (see hide_native_logs)
  _keep(int(sys.argv[1]), int(sys.argv[2]))
