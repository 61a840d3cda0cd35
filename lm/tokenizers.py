"""Text in and out of a model directory, without TensorFlow or SeqIO.

A model directory keeps its tokenizer in MODEL_DIR/tokenizer/, as exactly one of:

  chars.json          {"chars": "..."}: lm.data.vocabularies.CharVocabulary's table (pad 0,
                      eos 1, unk 2, then the sorted characters from id 3)
  spm.model           a SentencePiece model (seqio.SentencePieceVocabulary's ids: the model's
                      own pad/eos/unk/bos, no extra ids)
  tokenizer.json      an HF `tokenizers` tokenizer, with tokenizer_config.json (special tokens,
                      chat template) and optionally special_tokens_map.json and
                      chat_template.jinja, as transformers writes them

and, beside chars.json or spm.model, optionally start.json {"bos_id": 0}: the run was trained on
documents or instructions, whose sequences all start with id 0 (DOCUMENT_START_ID, seqio's
decoder BOS), so that id is the model's BOS.

The start rule: `Tokenizer.start_ids` (what encode(add_special_tokens=True) puts before a text:
start.json's id, or the BOS an HF tokenizer's own post-processor adds, else nothing) begins every
text the model is given: a training sequence (lm.data.instruct, lm.finetuning.preference_data),
a text prompt, a scoring context (lm.api). A chat rendered by a chat template is whole: its
rendering writes any BOS itself. The first token of a sequence is an input only, never a
target; where there is nothing before a scored token (an empty context), the sequence starts
with `prefix_id` (the start id, else BOS, else EOS: lm-evaluation-harness' rule).

`load_tokenizer(model_dir)` returns the matching `Tokenizer`, or None when the directory has
none (the model then takes token ids only).
"""
import abc
import datetime
import functools
import json
import os

import jinja2
import jinja2.sandbox

from lm.errors import UserError

TOKENIZER_DIR = "tokenizer"
CHARS_FILE, SPM_FILE, HF_FILE = "chars.json", "spm.model", "tokenizer.json"
START_FILE = "start.json"
DOCUMENT_START_ID = 0  # seqio's decoder inputs start every document with it; saved in start.json
HF_CONFIG_FILE, HF_TEMPLATE_FILE = "tokenizer_config.json", "chat_template.jinja"
# Every file of an HF tokenizer that import-hf copies and export-hf writes back.
HF_TOKENIZER_FILES = (HF_FILE, HF_CONFIG_FILE, "special_tokens_map.json", HF_TEMPLATE_FILE)


class Tokenizer(abc.ABC):
  """str <-> token ids for one model."""

  chat_template: str | None = None

  @abc.abstractmethod
  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`. add_special_tokens: what the tokenizer adds around a text (an HF
    BOS; for char and SentencePiece tokenizers the start.json BOS, else nothing), as in
    training."""

  def encode_continuation(self, text: str) -> list[int]:
    """Token ids of `text` where it follows other text: nothing added before it (no BOS, no
    SentencePiece dummy-prefix space), so that a text encoded piece after piece, its first
    piece with encode(add_special_tokens=False), decodes to itself."""
    return self.encode(text, add_special_tokens=False)

  @property
  def start_ids(self) -> list[int]:
    """What encode(add_special_tokens=True) puts before a text (the start rule, above)."""
    return self.encode("", add_special_tokens=True)

  @property
  def prefix_id(self) -> int | None:
    """The token an empty context becomes: the start id where there is one (so a sequence
    begins alike with or without a context), else BOS, else EOS (lm-evaluation-harness)."""
    start = self.start_ids
    if start:
      return start[-1]
    return self.bos_id if self.bos_id is not None else self.eos_id

  @abc.abstractmethod
  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    """Text of `ids`; pad/eos/unk-like control ids are dropped (unless skip_special_tokens=False
    for an HF tokenizer)."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int | None:
    """The end-of-sequence id, None where the tokenizer has none."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    """The beginning-of-sequence id, None where the tokenizer has none."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, special tokens included (the model's vocab_size may be padded above it)."""

  def special_tokens(self) -> dict[str, str]:
    """{"bos_token": "<s>", ...}: what a chat template may refer to."""
    return {}

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text of a chat ([{"role": ..., "content": ...}]) rendered as transformers does.

    The text already holds any BOS the template writes: encode it with
    add_special_tokens=False (as transformers' apply_chat_template(tokenize=True) does).
    """
    if not self.chat_template:
      raise UserError("this model's tokenizer has no chat template")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent,
                                                                    ensure_ascii=False, **kw)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
      return env.from_string(self.chat_template).render(
          messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
          documents=None, **self.special_tokens())
    except jinja2.TemplateError as e:
      raise UserError(f"chat template: {e}") from None


def _raise(message):
  raise jinja2.TemplateError(message)


class CharTokenizer(Tokenizer):
  """One id per character: the ids of lm.data.vocabularies.CharVocabulary."""
  PAD_ID, EOS_ID, UNK_ID, NUM_SPECIAL = 0, 1, 2, 3

  def __init__(self, chars: str, bos_id: int | None = None):
    self.chars = "".join(sorted(set(chars)))
    self._index = {c: i + self.NUM_SPECIAL for i, c in enumerate(self.chars)}
    self._start = bos_id  # start.json's

  def encode(self, text, add_special_tokens=True):
    start = [self._start] if add_special_tokens and self._start is not None else []
    return start + [self._index.get(c, self.UNK_ID) for c in text]

  def decode(self, ids, skip_special_tokens=True):
    n = self.NUM_SPECIAL
    return "".join(self.chars[i - n] for i in map(int, ids) if n <= i < self.vocab_size)

  @property
  def eos_id(self):
    return self.EOS_ID

  @property
  def bos_id(self):
    return self._start

  @property
  def vocab_size(self):
    return len(self.chars) + self.NUM_SPECIAL


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece .model (a path, or its bytes as model_proto): the ids of
  seqio.SentencePieceVocabulary (without extra ids)."""

  def __init__(self, path: str | None = None, bos_id: int | None = None,
               model_proto: bytes | None = None):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    if model_proto is None:
      with open(path, "rb") as f:
        model_proto = f.read()
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    self._proto = model_proto
    self._start = bos_id  # start.json's: prepended by encode (the model's own BOS is not)
    self._continuation = None

  def encode(self, text, add_special_tokens=True):
    start = [self._start] if add_special_tokens and self._start is not None else []
    return start + self._sp.EncodeAsIds(text)

  def encode_continuation(self, text):
    if self._continuation is None:  # the same model without its dummy-prefix space
      import sentencepiece  # pylint: disable=import-outside-toplevel
      from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
      proto = sentencepiece_model_pb2.ModelProto()
      proto.ParseFromString(self._proto)
      proto.normalizer_spec.add_dummy_prefix = False
      self._continuation = sentencepiece.SentencePieceProcessor(
          model_proto=proto.SerializeToString())
    return self._continuation.EncodeAsIds(text)

  def decode(self, ids, skip_special_tokens=True):
    unk, n = self._sp.unk_id(), self.vocab_size
    return self._sp.DecodeIds([int(i) if 0 <= i < n else unk for i in map(int, ids)])

  @property
  def eos_id(self):
    return _id_or_none(self._sp.eos_id())

  @property
  def bos_id(self):
    return self._start if self._start is not None else _id_or_none(self._sp.bos_id())

  @property
  def vocab_size(self):
    return self._sp.GetPieceSize()


def _id_or_none(i: int) -> int | None:
  return None if i < 0 else i


class HFTokenizer(Tokenizer):
  """An HF tokenizer.json (`tokenizers` library) with its tokenizer_config.json."""

  def __init__(self, directory: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self._tok = tokenizers.Tokenizer.from_file(os.path.join(directory, HF_FILE))
    config = {}
    for name in ("special_tokens_map.json", HF_CONFIG_FILE):  # the config wins
      path = os.path.join(directory, name)
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          config.update(json.load(f))
    self._special = {k: _token_text(config[k]) for k in
                     ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
      template = {t["name"]: t["template"] for t in template}.get("default")
    path = os.path.join(directory, HF_TEMPLATE_FILE)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        template = f.read()
    self.chat_template = template
    self._continuation = None

  def encode(self, text, add_special_tokens=True):
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_continuation(self, text):
    if self._continuation is None:  # the same tokenizer without what adds a leading space
      import tokenizers  # pylint: disable=import-outside-toplevel
      spec = json.loads(self._tok.to_str())
      for part in ("normalizer", "pre_tokenizer"):
        spec[part] = _no_prefix_space(spec.get(part))
      self._continuation = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return self._continuation.encode(text, add_special_tokens=False).ids

  @functools.cached_property
  def start_ids(self):
    encoding = self._tok.encode("x", add_special_tokens=True)  # the ids before its sequence
    return encoding.ids[:next((i for i, s in enumerate(encoding.sequence_ids) if s is not None),
                              len(encoding.ids))]

  def decode(self, ids, skip_special_tokens=True):
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def _id(self, name):
    token = self._special.get(name)
    return None if token is None else self._tok.token_to_id(token)

  @property
  def eos_id(self):
    return self._id("eos_token")

  @property
  def bos_id(self):
    return self._id("bos_token")

  @property
  def vocab_size(self):
    return self._tok.get_vocab_size(with_added_tokens=True)

  def special_tokens(self):
    return dict(self._special)


def _no_prefix_space(spec):
  """A tokenizer.json normalizer or pre-tokenizer that adds no space before a text: without
  Prepend normalizers, Metaspace prepend_scheme "never", ByteLevel add_prefix_space off."""
  if not isinstance(spec, dict):
    return spec
  if spec.get("type") == "Prepend":
    return None
  spec = dict(spec)
  for key in ("normalizers", "pretokenizers"):  # a Sequence
    if key in spec:
      spec[key] = [p for p in map(_no_prefix_space, spec[key]) if p is not None]
  if "add_prefix_space" in spec:
    spec["add_prefix_space"] = False
  if "prepend_scheme" in spec:
    spec["prepend_scheme"] = "never"
  return spec


def _token_text(token) -> str:
  """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
  return token["content"] if isinstance(token, dict) else token


def tokenizer_dir(model_dir: str) -> str:
  return os.path.join(model_dir, TOKENIZER_DIR)


def load_tokenizer(model_dir: str) -> Tokenizer | None:
  """The tokenizer saved in MODEL_DIR/tokenizer/, or None if there is none."""
  directory = tokenizer_dir(model_dir)
  if os.path.exists(os.path.join(directory, HF_FILE)):
    return HFTokenizer(directory)
  bos_id = None
  if os.path.exists(os.path.join(directory, START_FILE)):
    with open(os.path.join(directory, START_FILE), encoding="utf-8") as f:
      bos_id = json.load(f)["bos_id"]
  if os.path.exists(os.path.join(directory, SPM_FILE)):
    return SentencePieceTokenizer(os.path.join(directory, SPM_FILE), bos_id)
  if os.path.exists(os.path.join(directory, CHARS_FILE)):
    with open(os.path.join(directory, CHARS_FILE), encoding="utf-8") as f:
      return CharTokenizer(json.load(f)["chars"], bos_id)
  return None
