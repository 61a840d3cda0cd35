"""Exact and near (MinHash-LSH) dedup.

Both work on "nodes" (doc key, doc id), where the key's order is the input
order, so "earliest wins" means the smallest node, and both return removal
decisions (doc key, (reason, id of the kept document)). Hashes and signatures
are spilled to files partitioned by key (spill.py), one partition is grouped
per call, and only the verified near-duplicate edges (a few per duplicate)
go through Beam groupings, for the connected components.
"""

import collections
import hashlib
import time

import apache_beam as beam
import numpy as np

from lm.data.prep import minhash, spill
from lm.data.prep.config import DedupConfig


def _partition(digest: bytes, num_parts: int) -> int:
  return int.from_bytes(digest[-8:], "little") % num_parts


def dedup_records(node, text: str, cfg: DedupConfig, num_parts: int, stats):
  """(partition, record) pairs for one kept document.

  Exact: ("x", text hash, node) in the hash's partition. Near: the MinHash
  signature goes to the partition of each of its LSH band keys, once per
  partition: ("n", node, signature bytes, [band keys]).
  """
  if cfg.exact:
    start = time.perf_counter()
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    stats["exact_dedup/seconds"] += time.perf_counter() - start
    yield _partition(digest, num_parts), ("x", digest, node)
  if cfg.near:
    start = time.perf_counter()
    sig = minhash.signature(text, cfg.ngram, cfg.num_perm, cfg.seed)
    by_part = collections.defaultdict(list)
    for key in minhash.band_keys(sig, cfg.bands, cfg.rows):
      by_part[_partition(key, num_parts)].append(key)
    stats["near_dedup/seconds"] += time.perf_counter() - start
    sig = sig.tobytes()
    for part, keys in sorted(by_part.items()):
      yield part, ("n", node, sig, keys)


def _exact_losers(nodes):
  nodes = sorted(nodes)
  winner_id = nodes[0][1]
  for key, _ in nodes[1:]:
    yield key, ("exact_dup_of", winner_id)


class DedupPartition(beam.DoFn):
  """(partition, spill paths) -> ("exact", decision) and ("edge", edge).

  Exact: every node of a text hash but the earliest loses. Near (LSH): a
  band bucket's members are paired with its smallest member (a star, linear
  in the bucket size) and the pair is an edge if the estimated Jaccard of
  their signatures reaches the threshold. All of a key's records are in one
  partition, so the result does not depend on how the records were spilled.
  """

  def __init__(self, cfg: DedupConfig):
    self._cfg = cfg

  def process(self, item):
    _, paths = item
    hashes = collections.defaultdict(list)
    buckets = collections.defaultdict(list)
    sigs = {}
    for path in sorted(paths):
      for record in spill.read_records(path):
        if record[0] == "x":
          hashes[record[1]].append(record[2])
        else:
          _, node, sig, keys = record
          sigs[node] = sig
          for key in keys:
            buckets[key].append(node)
    for nodes in hashes.values():
      for decision in _exact_losers(nodes):
        yield "exact", decision
    edges = set()
    for nodes in buckets.values():
      nodes = sorted(set(nodes))
      if len(nodes) < 2:
        continue
      anchor = nodes[0]
      anchor_sig = np.frombuffer(sigs[anchor], dtype=np.uint32)
      for member in nodes[1:]:
        if (member, anchor) not in edges and minhash.estimated_jaccard(
            np.frombuffer(sigs[member], dtype=np.uint32),
            anchor_sig) >= self._cfg.threshold:
          edges.add((member, anchor))
    for edge in sorted(edges):
      yield "edge", edge


def _both_directions(edge):
  yield edge
  yield edge[1], edge[0]


def _init_state(group):
  """(node, (label, neighbours, changed)), label = min(node, neighbours)."""
  node, neighbours = group
  neighbours = sorted(set(neighbours))
  return node, (min(node, neighbours[0]), neighbours, True)


def _messages(item):
  """The node's own state, and its label to each neighbour."""
  node, (label, neighbours, _) = item
  yield node, (label, neighbours)
  for neighbour in neighbours:
    yield neighbour, (label, None)


def _update(group):
  node, messages = group
  (label, neighbours), = [m for m in messages if m[1] is not None]
  new = min(m[0] for m in messages)
  return node, (new, neighbours, new != label)


class ConnectedComponents(beam.PTransform):
  """Min-label propagation over an edge list, `rounds` rounds unrolled.

  A node starts with the smallest of itself and its neighbours; each round
  (one keyed grouping) it takes the smallest label among its neighbours. Each
  node ends with the smallest node of its component once the component's
  radius is at most rounds + 1 (LSH stars are 1-2 hops). Returns (labels,
  number of labels that still changed in the last round: 0 = converged).
  """

  def __init__(self, rounds: int):
    super().__init__()
    self._rounds = rounds

  def expand(self, edges):
    state = (edges | "Undirected" >> beam.FlatMap(_both_directions)
             | "Adjacency" >> beam.GroupByKey()
             | "InitLabels" >> beam.Map(_init_state))
    # One grouping of one collection per round: a join (CoGroupByKey) would
    # flatten two, which doubles the Dask runner's partitions every round.
    for r in range(self._rounds):
      state = (state | f"Send{r}" >> beam.FlatMap(_messages)
               | f"Group{r}" >> beam.GroupByKey()
               | f"Update{r}" >> beam.Map(_update))
    # No default for an empty input: a default is a side input, which not
    # every runner supports (Dask); the report reads a missing count as 0.
    unconverged = (state | "Changed" >> beam.Map(lambda s: int(s[1][2]))
                   | "CountChanged" >> beam.CombineGlobally(
                       sum).without_defaults())
    labels = state | "Labels" >> beam.Map(lambda s: (s[0], s[1][0]))
    return labels, unconverged


def _near_decision(item):
  node, label = item
  if label != node:
    yield node[0], ("near_dup_of", label[1])


class NearDecisions(beam.PTransform):
  """Verified edges -> (decisions, unconverged count): each connected
  component keeps only its smallest (earliest) node."""

  def __init__(self, cc_rounds: int):
    super().__init__()
    self._rounds = cc_rounds

  def expand(self, edges):
    labels, unconverged = edges | "Components" >> ConnectedComponents(
        self._rounds)
    return labels | "NearLosers" >> beam.FlatMap(_near_decision), unconverged
