"""Launching a sweep: one `lm-train` subprocess per grid point, N at a time, resumable.

Each point's run directory OUT_DIR/<name>/ is lm-train's MODEL_DIR; the sweep adds
`sweep_run.json` (the point, the command, one record per launch) and `train.log` (every
launch's output, appended). Re-running the same sweep skips finished runs and relaunches the
others with the same command, which makes lm-train resume from their latest checkpoint.

Stopping: each run is started in its own session, so a terminal's Ctrl-C (SIGINT to the
foreground process group) reaches the sweep only, and the sweep passes every SIGINT / SIGTERM
it receives on to each running run exactly once: one signal makes lm-train save at its current
step and exit, a second aborts it (lm.training.preemption). Were the signal to reach a run
twice (from the terminal and from the sweep), the second would abort its save. The sweep then
waits for the runs to exit. Should the sweep itself die, each run gets SIGTERM (Linux: the
parent-death signal) and saves, and the runs keep the sweep's lock until they exit.
"""
import ctypes
import datetime
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import time

from lm.errors import UserError
from lm.jsonl import read_json
from lm.sweep import grid, results

SWEEP_JSON = "sweep.json"
LOCK = ".sweep.lock"
MAX_EXIT_STATUS = 100  # exit status = failed runs, capped below the shell's special codes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def prepare(gin_files: list[str], grid_specs: list[str], out_dir: str, zipped: bool = False,
            bindings: list[str] = ()) -> list[dict]:
  """Checks the sweep's flags and returns its runs ({name, point, command}); writes nothing."""
  if not gin_files:
    raise UserError("give at least one --gin_file")
  for path in gin_files:
    if not os.path.isfile(path):
      raise UserError(f"gin file not found: {path}")
  if not grid_specs:
    raise UserError("give at least one --grid NAME=[values]")
  points = grid.expand([grid.parse_grid(s) for s in grid_specs], zipped)
  base = [sys.executable, "-m", "lm.cli.train"]
  base += [f"--gin_file={os.path.abspath(p)}" for p in gin_files]
  runs = []
  for name, point in zip(grid.run_names(points), points):
    model_dir = os.path.join(os.path.abspath(out_dir), name)
    # The progress bar would flood train.log; the grid values come last and win.
    command = (base + [f"--model_dir={model_dir}", "--gin.train.progress=False"] + list(bindings)
               + [grid.gin_binding(k, v) for k, v in point.items()])
    runs.append({"name": name, "point": point, "command": command})
  return runs


def run_sweep(runs: list[dict], out_dir: str, parallel: int = 1, spec: dict | None = None,
              wandb_group: str | None = None,
              log=functools.partial(print, flush=True)) -> int:
  """Runs every unfinished point, `parallel` at a time; returns how many runs failed.

  A failing run (error, crash, non-finite loss) is recorded and the others go on. The
  report (results.csv, results.md, curves.png) is rewritten at the end. Holding a lock on
  OUT_DIR (the runs hold it too), so that two sweeps never launch the same runs. SIGINT /
  SIGTERM: passed on once to each running run (see the module doc), no run is started after
  it, and KeyboardInterrupt is raised once the runs have exited and been recorded.
  """
  if parallel < 1:
    raise UserError(f"--parallel must be >= 1, got {parallel}")
  os.makedirs(out_dir, exist_ok=True)
  lock = open(os.path.join(out_dir, LOCK), "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise UserError(f"another lm-sweep (or a run it started) is running in {out_dir}") from None
  if spec is not None:
    _write_json(os.path.join(out_dir, SWEEP_JSON), spec)
  env = dict(os.environ)
  # Weights & Biases (when the runs enable it) groups them by the sweep's name and names each
  # by its run directory (wandb.init reads these variables).
  env["WANDB_RUN_GROUP"] = wandb_group or os.path.basename(os.path.abspath(out_dir))
  todo = []
  for index, run in enumerate(runs):
    run_dir = os.path.join(out_dir, run["name"])
    status = results.run_status(run_dir)
    if status["status"] == "done":
      log(f"skip {run['name']}: finished ({status['step']} steps)")
      continue
    todo.append((index, run, run_dir))
  running = []
  received = []  # the stop signals, in order: the handler only notes them, the loop passes them on
  previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
              for s in STOP_SIGNALS}
  try:
    while (todo and not received) or running:
      while todo and not received and len(running) < parallel:
        running.append(_launch(*todo.pop(0), env=env, lock=lock, log=log))
      _pass_on(received, running, log)
      time.sleep(0.2)
      for job in [j for j in running if j["proc"].poll() is not None]:
        running.remove(job)
        _finish(job, log, stopped=_stopped(job["proc"].returncode, received))
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  interrupted = bool(received)
  rows = results.write_report(out_dir)
  failed = sum(r["status"] == "failed" for r in rows)
  log(f"{len(rows)} runs: {sum(r['status'] == 'done' for r in rows)} done, {failed} failed"
      f"{', interrupted' if interrupted else ''}; report in {out_dir}/results.md")
  lock.close()
  if interrupted:
    raise KeyboardInterrupt
  return min(failed, MAX_EXIT_STATUS)


def _pass_on(received: list[int], running: list[dict], log):
  """Sends each running run the signals in `received` it has not been sent yet."""
  for job in running:
    for signum in received[job["signalled"]:]:
      job["proc"].send_signal(signum)
    if job["signalled"] < len(received) == 1:
      log(f"{signal.Signals(received[0]).name}: stopping {job['name']} (it saves a checkpoint "
          "at its current step; a second signal aborts it without saving)")
    elif job["signalled"] < len(received):
      log(f"{signal.Signals(received[-1]).name}: aborting {job['name']} without saving")
    job["signalled"] = len(received)


def _stopped(returncode: int, received: list[int]) -> bool:
  """Whether a run exited because of a signal passed on to it (128 + signal, as lm-train
  exits after saving, or killed by it)."""
  return any(returncode in (128 + s, -s) for s in received)


def _stop_with_the_sweep(sweep_pid: int):
  """A run's preexec_fn: it gets SIGTERM when the sweep dies (Linux), so that it saves and stops."""
  if _LIBC is not None:
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != sweep_pid:  # the sweep died before prctl: no such signal will come
      os._exit(1)


def _launch(index: int, run: dict, run_dir: str, env: dict, lock, log) -> dict:
  os.makedirs(run_dir, exist_ok=True)
  info = read_json(os.path.join(run_dir, results.RUN_RECORD)) or {"attempts": []}
  info.update(name=run["name"], index=index, point=run["point"], command=run["command"])
  start_step = results.checkpoint_step(run_dir)
  info["attempts"].append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), "start_step": start_step, "returncode": None, "wall_s": None,
      "error": None})
  _write_json(os.path.join(run_dir, results.RUN_RECORD), info)
  log_path = os.path.join(run_dir, results.TRAIN_LOG)
  offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
  with open(log_path, "ab") as out:
    out.write(f"$ {' '.join(run['command'])}\n".encode())
    out.flush()
    # Own session: out of reach of the terminal's signals. The lock's descriptor is inherited:
    # a run left behind by a dead sweep keeps the directory locked until it exits.
    proc = subprocess.Popen(run["command"], stdout=out, stderr=subprocess.STDOUT,
                            env={**env, "WANDB_NAME": run["name"]}, start_new_session=True,
                            pass_fds=(lock.fileno(),),
                            preexec_fn=functools.partial(_stop_with_the_sweep, os.getpid()))
  log(f"start {run['name']}" + (f" (resuming at step {start_step})" if start_step else ""))
  return {"proc": proc, "run_dir": run_dir, "info": info, "offset": offset, "name": run["name"],
          "t0": time.monotonic(), "signalled": 0}


def _finish(job: dict, log, stopped: bool = False):
  """Records a launch's exit status, wall time and error line in sweep_run.json.

  stopped: the sweep itself was interrupted and ended the run, which stays unfinished (no
  exit status, no error) and resumes next time.
  """
  code = None if stopped else job["proc"].returncode
  attempt = job["info"]["attempts"][-1]
  attempt.update(returncode=code, wall_s=round(time.monotonic() - job["t0"], 1))
  if code:
    attempt["error"] = _error_line(os.path.join(job["run_dir"], results.TRAIN_LOG),
                                   job["offset"], code)
  _write_json(os.path.join(job["run_dir"], results.RUN_RECORD), job["info"])
  status = results.run_status(job["run_dir"])
  log(f"{status['status']} {job['name']}"
      + (f": {status['error']}" if status["status"] == "failed" else ""))


def _error_line(log_path: str, offset: int, code: int) -> str:
  """lm-train's `error: ...` line, else the last line of its output (a traceback's last)."""
  with open(log_path, "rb") as f:
    f.seek(offset)
    lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  if errors:
    return errors[-1][len("error:"):].strip()
  if code < 0:
    return f"killed by signal {-code}"
  return lines[-1] if lines else f"exit status {code}"


def _write_json(path: str, obj: dict):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
