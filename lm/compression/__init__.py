"""Model compression: post-training weight quantization (int8 / int4) and pruning (magnitude,
Wanda; unstructured or 2:4) with masks that recovery training keeps. See docs/compression.md."""
