"""Log-likelihoods from full forward passes (no KV cache), with lm-evaluation-harness semantics.

forward: one request (context, continuation) per row, rolling windows for long texts;
packed: multiple-choice items packed so that each shared context runs once.
`lm.api.LoadedModel.score`, `score_rolling` and `score_choices` drive them on a model.
"""
