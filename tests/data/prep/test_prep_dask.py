"""lm-prep on Apache Beam's Dask runner, against a local dask.distributed
cluster (a scheduler and two worker processes started here): the output is
byte-identical to the local runner's, and both workers share one input file
(read in ranges)."""

import dataclasses
import gzip
import os

import distributed

from lm.data.prep import driver, readers, synthetic
from lm.data.prep.config import PrepConfig, ReadConfig

from test_prep_pipeline import file_bytes, read_dir

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def test_dask_runner_output_equals_local_runner(tmp_path):
  corpus = synthetic.make_corpus(150, 10, 15, seed=5, words=(60, 90))
  synthetic.write_jsonl(corpus.docs, str(tmp_path / "in"), 1)
  (path,) = [os.path.join(tmp_path, "in", n)
             for n in os.listdir(tmp_path / "in")]
  plain = str(tmp_path / "corpus.jsonl")  # Uncompressed: byte ranges.
  with open(plain, "wb") as f:
    f.write(gzip.decompress(open(path, "rb").read()))
  cfg = PrepConfig(inputs=(plain,), output_dir=str(tmp_path / "local"),
                   num_shards=2)
  local = driver.run(cfg)  # One range: the file is below --range_bytes.
  size = os.path.getsize(plain)
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                processes=True, dashboard_address=None,
                                ) as cluster, distributed.Client(
                                    cluster) as client:
    with distributed.get_task_stream(client) as tasks:
      dask = driver.run(
          dataclasses.replace(cfg, output_dir=str(tmp_path / "dask"),
                              read=ReadConfig(range_bytes=size // 6)),
          [f"--runner={DASK_RUNNER}",
           f"--dask_client_address={cluster.scheduler_address}"])
  a = file_bytes(tmp_path / "local")
  assert len(a) == 4 and a == file_bytes(tmp_path / "dask")
  assert dask["output"] == local["output"]
  assert dask["removals"] == local["removals"]
  kept, removed = read_dir(tmp_path / "dask")
  assert set(kept) | set(removed) == {i for i, _ in corpus.docs}
  assert local["removals"]["exact_dup"] and local["removals"]["near_dup"]
  # The file was cut into 6 ranges (one Dask partition each, so one task
  # per range for every ParDo after the read) and both workers ran tasks.
  assert len(readers.plan_ranges([(0, plain, size)], size // 6)) == 6
  workers = {t["worker"] for t in tasks.data
             if "apply_dofn_to_bundle" in str(t["key"])}
  assert len(workers) == 2, workers
