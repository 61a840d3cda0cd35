"""`lm-prep`: turn a raw text corpus into a clean, deduplicated, tokenized one.

The pipeline runs on Apache Beam (`pipeline.py`); each stage lives in its own
module and is a pure per-document function, so it can be unit-tested without
Beam. `task.py` registers a prepared directory as a SeqIO task.

Nothing is imported here on purpose: `task.py` needs only seqio, the pipeline
needs apache_beam (the `prep` extra), and neither should pay for the other.
"""
