"""Exact and near (MinHash-LSH) dedup as Beam transforms on light records.

Both take "nodes" (doc key, doc id), where the key's order is the input order,
so "earliest wins" means the smallest node, and both return removal decisions
(doc key, (reason, id of the kept document)). Only hashes, signatures and
nodes are shuffled; the document texts never go through these groupings.
"""

import apache_beam as beam
import numpy as np

from lm.data.prep import minhash
from lm.data.prep.config import DedupConfig


def _exact_losers(group):
  _, nodes = group
  nodes = sorted(nodes)
  winner_id = nodes[0][1]
  for key, _ in nodes[1:]:
    yield key, ("exact_dup_of", winner_id)


class ExactDedup(beam.PTransform):
  """(text hash, node) -> decisions for every node but the earliest per hash."""

  def expand(self, hashed):
    return (hashed | "GroupByHash" >> beam.GroupByKey()
            | "ExactLosers" >> beam.FlatMap(_exact_losers))


def _bucket_pairs(group):
  """(member, anchor) for every member of an LSH bucket but its smallest."""
  _, nodes = group
  nodes = sorted(set(nodes))
  for member in nodes[1:]:
    yield member, nodes[0]


def _attach_member_sig(group):
  member, joined = group
  for sig in joined["sig"]:
    for anchor in set(joined["anchor"]):
      yield anchor, (member, sig)


def _verified_edges(group, threshold):
  anchor, joined = group
  for anchor_sig in joined["sig"]:
    anchor_sig = np.frombuffer(anchor_sig, dtype=np.uint32)
    for member, sig in joined["member"]:
      sig = np.frombuffer(sig, dtype=np.uint32)
      if minhash.estimated_jaccard(sig, anchor_sig) >= threshold:
        yield member, anchor


def _both_directions(edge):
  yield edge
  yield edge[1], edge[0]


def _propagate(group):
  """Sends a node's label to itself and to each neighbour."""
  node, joined = group
  label = min(joined["label"])
  yield node, label
  for neighbour in joined["adj"]:
    yield neighbour, label


def _changed(group):
  _, joined = group
  return int(set(joined["old"]) != set(joined["new"]))


class ConnectedComponents(beam.PTransform):
  """Min-label propagation over an edge list, `rounds` rounds unrolled.

  Each node ends with the smallest node of its component once `rounds` is at
  least the component's radius (LSH stars are 1-2 hops, so the default 6 is
  generous). Returns (labels, number of labels still changing in the last
  round: 0 means converged), both as PCollections.
  """

  def __init__(self, rounds: int):
    super().__init__()
    self._rounds = rounds

  def expand(self, edges):
    adj = edges | "Undirected" >> beam.FlatMap(_both_directions)
    labels = (adj | "SelfOrNeighbour" >> beam.Map(lambda e: (e[0], min(e)))
              | "Init" >> beam.CombinePerKey(min))
    previous = labels
    for r in range(self._rounds):
      previous = labels
      labels = ({"label": labels, "adj": adj}
                | f"Join{r}" >> beam.CoGroupByKey()
                | f"Send{r}" >> beam.FlatMap(_propagate)
                | f"Min{r}" >> beam.CombinePerKey(min))
    unconverged = ({"old": previous, "new": labels}
                   | "CompareLast" >> beam.CoGroupByKey()
                   | "Changed" >> beam.Map(_changed)
                   | "CountChanged" >> beam.CombineGlobally(sum))
    return labels, unconverged


def _near_decision(item):
  node, label = item
  if label != node:
    yield node[0], ("near_dup_of", label[1])


class NearDedup(beam.PTransform):
  """(node, signature bytes) -> (decisions, unconverged count).

  LSH: every band of every signature is a key; a bucket's members are paired
  with its smallest member (a star, linear in the bucket size), the pair is
  kept if the estimated Jaccard reaches the threshold, and each connected
  component of kept pairs keeps only its smallest (earliest) node.
  """

  def __init__(self, cfg: DedupConfig):
    super().__init__()
    self._cfg = cfg

  def expand(self, sigs):
    cfg = self._cfg
    pairs = (sigs
             | "Bands" >> beam.FlatMap(lambda ns: [
                 (k, ns[0]) for k in minhash.band_keys(
                     np.frombuffer(ns[1], dtype=np.uint32), cfg.bands,
                     cfg.rows)])
             | "GroupByBand" >> beam.GroupByKey()
             | "BucketPairs" >> beam.FlatMap(_bucket_pairs))
    with_member_sig = ({"sig": sigs, "anchor": pairs}
                       | "JoinMemberSig" >> beam.CoGroupByKey()
                       | "MemberSig" >> beam.FlatMap(_attach_member_sig))
    edges = ({"sig": sigs, "member": with_member_sig}
             | "JoinAnchorSig" >> beam.CoGroupByKey()
             | "Verify" >> beam.FlatMap(_verified_edges, cfg.threshold))
    labels, unconverged = edges | "Components" >> ConnectedComponents(
        cfg.cc_rounds)
    return labels | "NearLosers" >> beam.FlatMap(_near_decision), unconverged
