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


def _init_state(group):
  """(node, (label, neighbours, changed)), label = min(node, neighbours)."""
  node, neighbours = group
  neighbours = sorted(set(neighbours))
  return node, (min(node, neighbours[0]), neighbours, True)


def _send_label(item):
  _, (label, neighbours, _) = item
  for neighbour in neighbours:
    yield neighbour, label


def _update(group):
  node, joined = group
  (label, neighbours, _), = joined["state"]
  new = min([label] + list(joined["label"]))
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
    for r in range(self._rounds):
      state = ({"state": state,
                "label": state | f"Send{r}" >> beam.FlatMap(_send_label)}
               | f"Join{r}" >> beam.CoGroupByKey()
               | f"Update{r}" >> beam.Map(_update))
    unconverged = (state | "Changed" >> beam.Map(lambda s: int(s[1][2]))
                   | "CountChanged" >> beam.CombineGlobally(sum))
    labels = state | "Labels" >> beam.Map(lambda s: (s[0], s[1][0]))
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
