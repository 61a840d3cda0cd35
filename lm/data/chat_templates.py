"""Chat templates that mark what trains: a conversation -> segments of (text or token id, trains).

A conversation is a list of {"role", "content"} messages ending with an assistant message. Its
rendering is a list of segments; an assistant turn's content and the end-of-sequence marker that
closes it train (weight 1), everything else (system text, user turns, role headers) does not.

Templates (chosen by name in gin):
  plain       "User: {user}\\nAssistant: " + {assistant} + EOS id; a system message is its text and
              a blank line; a newline separates an assistant turn's EOS from the next message.
  completion  the messages' texts end to end, every assistant one followed by the EOS id (for
              prompt/response records: prompt + response + EOS, nothing added).
  llama3      Meta's Llama 3 format: <|begin_of_text|> then, per message,
              <|start_header_id|>{role}<|end_header_id|>\\n\\n{content, trimmed}<|eot_id|>;
              <|eot_id|> closes (and trains with) each assistant turn.
  model       the chat template of the model's own tokenizer (lm.tokenizers, e.g. an HF import's
              tokenizer_config.json): rendered turn by turn, each assistant turn trains up to and
              including the tokenizer's EOS token text.

`encode_conversation` turns a conversation into the (ids, loss weights) that SFT
(lm.data.instruct) and preference tuning (lm.finetuning.preference_data) train on, by the start
rule of lm.tokenizers: a plain or completion rendering is a text prompt, so it follows the
tokenizer's start_ids (what generate() puts before a text prompt); a llama3 or model rendering
is a chat prompt, whole (generate() of a chat encodes its rendering with nothing added). The
rendered text is encoded run by run (consecutive segments that train alike form one run; a
token id such as EOS is its own): the first run as a text, as a prompt is, each later run as
its continuation (lm.tokenizers' encode_continuation: no SentencePiece dummy-prefix space), so
the ids decode to exactly the rendered text and a prompt's ids are exactly those generate()
feeds.

Imports neither TensorFlow nor SeqIO.
"""
from lm.errors import UserError

TEMPLATES = ("plain", "completion", "llama3", "model")
CHAT_PROMPT_TEMPLATES = ("llama3", "model")  # rendered whole, as a chat prompt: no start ids
LLAMA3_BOS, LLAMA3_EOT = "<|begin_of_text|>", "<|eot_id|>"

Segment = tuple[str | int, bool]  # (text, or a token id such as EOS; whether it trains)


def record_messages(record) -> list[dict]:
  """The conversation of a JSONL record: {"prompt", "response"} (optionally "system"), or
  {"messages": [{"role", "content"}, ...]}. Raises ValueError saying what is wrong."""
  if not isinstance(record, dict):
    raise ValueError("not a JSON object")
  if "messages" in record:
    messages = record["messages"]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and
        isinstance(m.get("content"), str) for m in messages):
      raise ValueError('"messages" is not a list of {"role": str, "content": str} objects')
  elif isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
    messages = [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["response"]}]
    if isinstance(record.get("system"), str):
      messages.insert(0, {"role": "system", "content": record["system"]})
  else:
    raise ValueError('neither {"prompt": str, "response": str} nor {"messages": [...]}')
  if not messages or messages[-1]["role"] != "assistant":
    raise ValueError("the conversation does not end with an assistant message")
  return messages


def render(messages: list[dict], template: str, eos_id: int | None = None,
           tokenizer=None) -> list[Segment]:
  """The segments of a conversation (see the module docstring).

  eos_id: the vocabulary's EOS (plain, completion); tokenizer: an lm.tokenizers.Tokenizer with
  a chat template (model).
  """
  if template in ("plain", "completion"):
    if eos_id is None:
      raise UserError(f"chat template {template!r} needs a vocabulary with an EOS id")
    return (_plain if template == "plain" else _completion)(messages, eos_id)
  if template == "llama3":
    return _llama3(messages)
  if template == "model":
    if tokenizer is None or not tokenizer.chat_template:
      raise UserError("chat template 'model' needs a vocabulary from a model directory whose "
                      "tokenizer has a chat template (model_vocabulary of an HF import)")
    return _model(messages, tokenizer)
  raise UserError(f"unknown chat template {template!r}; choose one of {TEMPLATES}")


def _plain(messages, eos_id) -> list[Segment]:
  headers = {"user": "User: ", "assistant": "Assistant: "}
  segments = []
  for i, m in enumerate(messages):
    if m["role"] == "system":
      segments.append((m["content"] + "\n\n", False))
    elif m["role"] == "user":
      segments.append((headers["user"] + m["content"] + "\n", False))
    elif m["role"] == "assistant":
      segments += [(headers["assistant"], False), (m["content"], True), (eos_id, True)]
      if i + 1 < len(messages):
        segments.append(("\n", False))
    else:
      raise UserError(f"chat template 'plain' knows roles system/user/assistant, not "
                      f"{m['role']!r}")
  return segments


def _completion(messages, eos_id) -> list[Segment]:
  segments = []
  for m in messages:
    trains = m["role"] == "assistant"
    segments.append((m["content"], trains))
    if trains:
      segments.append((eos_id, True))
  return segments


def _llama3(messages) -> list[Segment]:
  segments, text = [], LLAMA3_BOS
  for m in messages:
    text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
    if m["role"] == "assistant":
      segments += [(text, False), (m["content"].strip() + LLAMA3_EOT, True)]
      text = ""
    else:
      text += m["content"].strip() + LLAMA3_EOT
  return segments  # a conversation ends with an assistant turn: nothing is left in `text`


def _model(messages, tokenizer) -> list[Segment]:
  eos = tokenizer.special_tokens().get("eos_token")
  if not eos:
    raise UserError("chat template 'model': the tokenizer names no eos_token")
  segments, done = [], ""
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
    if not (prompt.startswith(done) and full.startswith(prompt)):
      raise UserError("chat template 'model' does not render a conversation turn by turn "
                      "(an earlier rendering is not a prefix of a later one)")
    reply = full[len(prompt):]
    end = reply.find(eos, reply.find(m["content"].strip()) if m["content"].strip() else 0)
    if end < 0:
      raise UserError(f"chat template 'model' does not close assistant turns with the EOS "
                      f"token {eos!r}")
    end += len(eos)
    segments += [(prompt[len(done):], False), (reply[:end], True)]
    if reply[end:]:
      segments.append((reply[end:], False))
    done = full
  return [s for s in segments if s[0] != ""]


def encode(segments: list[Segment], tokenizer) -> tuple[list[int], list[int]]:
  """(token ids, loss weights) of a rendering, run by run (see the module docstring).

  tokenizer: an lm.tokenizers.Tokenizer. No token straddles a boundary between what trains and
  what does not.
  """
  runs: list[list] = []  # [text or token id, trains]
  for piece, trains in segments:
    if runs and isinstance(piece, str) and isinstance(runs[-1][0], str) and runs[-1][1] == trains:
      runs[-1][0] += piece
    else:
      runs.append([piece, trains])
  ids, weights, first = [], [], True
  for piece, trains in runs:
    if isinstance(piece, int):
      piece_ids = [piece]
    else:
      piece_ids = (tokenizer.encode(piece, add_special_tokens=False) if first
                   else tokenizer.encode_continuation(piece))
      first = False
    ids += piece_ids
    weights += [int(trains)] * len(piece_ids)
  return ids, weights


def encode_conversation(messages: list[dict], template: str, tokenizer
                        ) -> tuple[list[int], list[int]]:
  """(ids, loss weights) of a conversation rendered with `template` as a model trains on it and
  is prompted with it (the module docstring): the start ids first (none for a chat prompt
  template); where the first token would train (nothing before it), the tokenizer's prefix_id.
  """
  segments = render(messages, template, tokenizer.eos_id, tokenizer)
  ids, weights = encode(segments, tokenizer)
  start = [] if template in CHAT_PROMPT_TEMPLATES else list(tokenizer.start_ids)
  if not start and weights and weights[0] and tokenizer.prefix_id is not None:
    start = [tokenizer.prefix_id]  # an empty context, as `score` makes it
  return start + ids, [0] * len(start) + weights
