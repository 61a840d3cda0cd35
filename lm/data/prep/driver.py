"""`run`: check inputs and output, run the Beam pipeline into a temp dir next
to the output, add the SentencePiece model and the report, then rename.

A failed run removes its temp dir, so DIR either does not exist or is
complete (report.json is written last, before the rename).
"""

import json
import os
import shutil
import time
import uuid
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions,
                                                  WorkerOptions)

from lm.data.prep import audit, pipeline, readers, report, spm
from lm.data.prep.config import PrepConfig
from lm.errors import UserError


class OutputError(UserError, ValueError):
  """The output directory cannot be used (reported as one line)."""


def pipeline_options(beam_args: List[str], num_workers: int
                     ) -> PipelineOptions:
  """Standard Beam options; without --runner, Beam's local FnApiRunner with
  `num_workers` processes (1: in-process, fastest to start). Not
  "DirectRunner": it first tries to download the Prism runner. On the Dask
  runner each input range is its own task unless --dask_npartitions or
  --dask_partition_size says otherwise."""
  options = PipelineOptions(beam_args)
  runner = options.view_as(StandardOptions).runner
  if runner and runner.endswith("DaskRunner"):
    from apache_beam.runners.dask.dask_runner import DaskOptions
    dask = options.view_as(DaskOptions)
    if not (dask.npartitions or dask.partition_size):
      dask.partition_size = 1
  if not runner:
    options.view_as(StandardOptions).runner = "FnApiRunner"
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers = num_workers
    direct.direct_running_mode = ("multi_processing" if num_workers > 1
                                  else "in_memory")
    workers = options.view_as(WorkerOptions)
    # Local worker processes otherwise log every harness step at INFO.
    workers.default_sdk_harness_log_level = (
        workers.default_sdk_harness_log_level or "WARNING")
  return options


def check_config(cfg: PrepConfig) -> None:
  """Raises readers.InputError for options that would otherwise fail (or do
  nothing) inside Beam workers: unreadable side files, degenerate LSH."""
  for path in cfg.decontaminate:
    try:
      with open(path, "rb"):
        pass
    except OSError as e:
      raise readers.InputError(f"--decontaminate {path}: {e.strerror}") from None
  if cfg.audit_terms:
    try:
      audit.load_terms(cfg.audit_terms)
    except (OSError, ValueError) as e:
      raise readers.InputError(f"--audit_terms {cfg.audit_terms}: {e}") from None
  if cfg.read.range_bytes < 1:
    raise readers.InputError(
        f"--range_bytes must be >= 1, not {cfg.read.range_bytes}")
  d = cfg.dedup
  if d.near and min(d.bands, d.rows, d.ngram) < 1:
    raise readers.InputError(
        f"near dedup needs --near_bands, --near_rows and --near_ngram >= 1 "
        f"(got {d.bands}, {d.rows}, {d.ngram}); use --no_near_dedup to switch "
        "it off")
  if d.near and not 0 < d.threshold <= 1:
    raise readers.InputError(f"--near_threshold must be in (0, 1], not {d.threshold}")


def _is_local(path: str) -> bool:
  return "://" not in path


def _exists(path: str) -> bool:
  if _is_local(path):
    return os.path.exists(path)
  return bool(FileSystems.match([f"{path}/**"])[0].metadata_list)


def _make_temp_dir(out: str, overwrite: bool) -> str:
  if _exists(out) and not overwrite:
    raise OutputError(f"{out} already exists (pass --overwrite to replace it)")
  tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    FileSystems.mkdirs(tmp)
    FileSystems.mkdirs(f"{tmp}/removed")
    FileSystems.mkdirs(f"{tmp}/{pipeline.WORK_DIR}")
  except Exception as e:  # Permission, missing parent, bad bucket...
    raise OutputError(f"cannot create {tmp} next to the output dir: {e}"
                      ) from None
  return tmp


def _publish(tmp: str, out: str) -> None:
  """Moves the finished temp dir to `out`, replacing an old one.

  Locally one atomic directory rename; on object stores (no directories)
  file by file, with report.json last so that it marks a complete output.
  """
  if _is_local(out):
    old = f"{out}.old-{uuid.uuid4().hex[:8]}"
    if os.path.exists(out):
      os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return
  if _exists(out):
    FileSystems.delete([out])
  sources = [m.path for m in FileSystems.match([f"{tmp}/**"])[0].metadata_list]
  sources.sort(key=lambda path: path.endswith("report.json"))
  for source in sources:  # One by one, in this order.
    FileSystems.rename([source], [out + source[len(tmp):]])
  FileSystems.delete([tmp])


def _kept_files(tmp: str) -> List[str]:
  return sorted(m.path for m in FileSystems.match(
      [f"{tmp}/data-*.jsonl.gz"])[0].metadata_list)


def _read_json(path: str) -> dict:
  with FileSystems.open(path, compression_type="uncompressed") as f:
    return json.loads(f.read())


def _pipeline(options: PipelineOptions) -> beam.Pipeline:
  """A pipeline; the local FnApiRunner gets the options the way the
  DirectRunner passes them, so that its worker processes see them (e.g. the
  harness log level)."""
  if options.view_as(StandardOptions).runner != "FnApiRunner":
    return beam.Pipeline(options=options)
  info = beam_provision_api_pb2.ProvisionInfo(
      pipeline_options=JobServiceHandle.encode_pipeline_options(
          options.get_all_options()))
  return beam.Pipeline(runner=fn_runner.FnApiRunner(
      provision_info=fn_runner.ExtendedProvisionInfo(info)), options=options)


def _run(p: beam.Pipeline) -> None:
  """Runs `p` to the end; closes the Dask runner's client (it would try to
  reconnect to a cluster that goes away)."""
  result = p.run()
  try:
    result.wait_until_finish()
  finally:
    client = getattr(result, "client", None)
    if client is not None:
      client.close()


def run(cfg: PrepConfig, beam_args: Optional[List[str]] = None,
        num_workers: int = 1) -> dict:
  """Runs the whole preparation; returns the report (also in report.json).

  Raises readers.InputError / OutputError for user errors, before any work.
  """
  start = time.time()
  check_config(cfg)
  files = readers.expand_inputs(cfg.inputs)
  out = cfg.output_dir.rstrip("/")
  out = os.path.abspath(out) if _is_local(out) else out
  tmp = _make_temp_dir(out, cfg.overwrite)
  options = pipeline_options(beam_args or [], num_workers)
  try:
    num_shards = cfg.num_shards or pipeline.auto_num_shards(files)
    num_parts = pipeline.auto_num_shards(files, pipeline.PARTITION_BYTES)
    ranges = readers.plan_ranges(files, cfg.read.range_bytes, cfg.read.split)
    p = _pipeline(options)
    pipeline.build(p, cfg, ranges, tmp, num_shards, num_parts)
    _run(p)
    stats_file = f"{tmp}/{pipeline.STATS_FILE}"
    stats = (_read_json(stats_file) if FileSystems.exists(stats_file)
             else {})  # No documents at all.
    FileSystems.delete([path for path in (stats_file,
                                          f"{tmp}/{pipeline.WORK_DIR}")
                        if FileSystems.exists(path)])
    if cfg.spm_vocab_size:
      model = f"{tmp}/{spm.SPM_FILE}"
      spm.train_spm(_kept_files(tmp), model, cfg.spm_vocab_size,
                    int(stats.get("output/chars_out", 0)),
                    cfg.spm_sample_chars)
      p = _pipeline(options)
      _ = (spm.count_tokens(p, _kept_files(tmp), model,
                            cfg.validation_fraction)
           | beam.Map(pipeline.write_json, f"{tmp}/_tokens.json"))
      _run(p)
      if FileSystems.exists(f"{tmp}/_tokens.json"):  # Else no kept files.
        stats.update(_read_json(f"{tmp}/_tokens.json"))
        FileSystems.delete([f"{tmp}/_tokens.json"])
    rep = report.build_report(stats, cfg, files, time.time() - start,
                              num_shards)
    report.write_report(rep, tmp)
    _publish(tmp, out)
    return rep
  except BaseException:
    try:
      FileSystems.delete([tmp])
    except Exception:  # Best effort; the original error matters more.
      pass
    raise
