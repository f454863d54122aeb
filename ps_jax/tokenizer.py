"""Text tokenizers: the CLIP BPE tokenizer (via transformers) and a small word-level one.

Both produce fixed-length int32 ids padded with the end-of-text token, the layout the
model expects: pooling happens at the first position of the largest id (the EOT token),
so EOT must be the largest id of the vocabulary and padding must never exceed it.

Layer: foundation (transformers only, loaded when a CLIP tokenizer is).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from typing import Protocol, Sequence

import numpy as np

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
# Number of merges OpenAI's CLIP keeps from its BPE file: 49408 - 256 bytes x2 - 2 specials.
_CLIP_NUM_MERGES = 49152 - 256 - 2


class Tokenizer(Protocol):
  """What the data pipeline and the model need from a tokenizer."""

  vocab_size: int
  bos_id: int
  eos_id: int

  def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (ids int32[B, max_len], attention_mask int32[B, max_len])."""


def pad_and_truncate(token_lists: Sequence[Sequence[int]], max_len: int, bos_id: int,
                     eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Frames each token list with BOS/EOS, truncates keeping EOS, pads with EOS.

  Args:
    token_lists: B lists of content token ids (no special tokens).
    max_len: fixed output length L (>= 2).

  Returns:
    ids: int32[B, L]; attention_mask: int32[B, L] (1 on BOS, content and the first EOS).
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 to hold BOS and EOS, got {max_len}")
  ids = np.full((len(token_lists), max_len), eos_id, np.int32)
  mask = np.zeros((len(token_lists), max_len), np.int32)
  for row, tokens in enumerate(token_lists):
    body = [bos_id, *list(tokens)[:max_len - 2], eos_id]
    ids[row, :len(body)] = body
    mask[row, :len(body)] = 1
  return ids, mask


# ----------------------------------------------------------------------------- CLIP BPE


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP byte -> printable unicode table, in CLIP's vocabulary order.

  Printable bytes map to themselves and come first; the other 68 bytes map to code
  points from 256 on and come after them.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  others = [b for b in range(256) if b not in printable]
  table = {b: chr(b) for b in printable}
  table.update({b: chr(256 + i) for i, b in enumerate(others)})
  return table


def write_clip_tokenizer_files(bpe_path: str, out_dir: str) -> list[str]:
  """Writes standard CLIP tokenizer files from OpenAI's BPE merges file.

  Produces `vocab.json` (49408 entries, `<|endoftext|>` = 49407), `merges.txt`,
  `tokenizer_config.json` and `special_tokens_map.json` in `out_dir`, which lets
  `transformers.CLIPTokenizer.from_pretrained(out_dir)` work offline. Existing files
  with other names are left alone.

  Args:
    bpe_path: path to `bpe_simple_vocab_16e6.txt.gz` (gzip) or its plain-text form.
    out_dir: directory to write into (created if needed).

  Returns:
    The paths written.
  """
  opener = gzip.open if bpe_path.endswith(".gz") else open
  try:
    with opener(bpe_path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"Cannot read CLIP BPE merges file {bpe_path!r}: {e}") from e
  merges = [tuple(line.split()) for line in lines[1:1 + _CLIP_NUM_MERGES]]
  if len(merges) != _CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(f"{bpe_path!r} is not a CLIP BPE merges file: expected "
                     f"{_CLIP_NUM_MERGES} merge lines of two symbols after the header")
  byte_chars = list(_bytes_to_unicode().values())
  tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
  tokens += [CLIP_BOS, CLIP_EOS]
  vocab = {tok: i for i, tok in enumerate(tokens)}
  assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)

  os.makedirs(out_dir, exist_ok=True)
  written = []

  def dump(name, text):
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    written.append(path)

  dump("vocab.json", json.dumps(vocab, ensure_ascii=False))
  dump("merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  specials = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS,
              "pad_token": CLIP_EOS}
  dump("special_tokens_map.json", json.dumps(specials, indent=2))
  dump("tokenizer_config.json", json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
       "do_lower_case": True, **specials}, indent=2))
  return written


def load_hf_clip_tokenizer(hf_dir: str):
  """Loads `transformers.CLIPTokenizer` from a local directory (never from a hub)."""
  import transformers  # pylint: disable=g-import-not-at-top

  missing = [n for n in ("vocab.json", "merges.txt")
             if not os.path.exists(os.path.join(hf_dir, n))]
  if missing:
    raise FileNotFoundError(
        f"{hf_dir!r} has no tokenizer files ({', '.join(missing)} missing); complete it "
        "offline with ps_jax.tokenizer.write_clip_tokenizer_files(bpe_path, hf_dir)")
  return transformers.CLIPTokenizer.from_pretrained(hf_dir, local_files_only=True)


class ClipTokenizer:
  """CLIP BPE tokenizer producing fixed-length, EOS-padded ids."""

  def __init__(self, hf_dir: str):
    self.hf = load_hf_clip_tokenizer(hf_dir)
    # Texts are encoded whole and truncated by `pad_and_truncate` (EOS kept); a long
    # paragraph is no error, so no "sequence length is longer" warning.
    self.hf.model_max_length = 1 << 30
    self.vocab_size = len(self.hf)
    self.bos_id = self.hf.convert_tokens_to_ids(CLIP_BOS)
    self.eos_id = self.hf.convert_tokens_to_ids(CLIP_EOS)
    self.path = hf_dir

  def encode(self, text: str) -> list[int]:
    """Content token ids of one text, without BOS/EOS."""
    return self.hf(text, add_special_tokens=False)["input_ids"]

  def __call__(self, texts: Sequence[str], max_len: int = 77):
    """Returns (ids int32[B, max_len], attention_mask int32[B, max_len]); the batch is
    tokenized by one call of the Hugging Face tokenizer."""
    texts = list(texts)
    tokens = self.hf(texts, add_special_tokens=False)["input_ids"] if texts else []
    return pad_and_truncate(tokens, max_len, self.bos_id, self.eos_id)


# ----------------------------------------------------------------------------- word-level

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
  """Lower-cases and splits into words and single punctuation marks."""
  return _WORD_RE.findall(text.lower())


class WordTokenizer:
  """Word-level tokenizer for small synthetic vocabularies (built offline).

  Ids: 0 = unknown word, 1..V-3 = words in the given order, V-2 = BOS, V-1 = EOS, so EOS
  is the largest id as CLIP's pooling requires.
  """

  def __init__(self, words: Sequence[str]):
    self.words = list(dict.fromkeys(words))
    self._ids = {w: i + 1 for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words) + 3
    self.bos_id = self.vocab_size - 2
    self.eos_id = self.vocab_size - 1
    self.unk_id = 0

  @classmethod
  def from_texts(cls, texts: Sequence[str]) -> "WordTokenizer":
    """Vocabulary of every word in `texts`, sorted for determinism."""
    return cls(sorted({w for t in texts for w in split_words(t)}))

  @classmethod
  def load(cls, path: str) -> "WordTokenizer":
    """Reads a vocabulary written by `save` (a JSON list of words)."""
    try:
      with open(path, encoding="utf-8") as f:
        words = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"Cannot read word vocabulary {path!r}: {e}") from e
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
      raise ValueError(f"{path!r} must hold a JSON list of words")
    return cls(words)

  def save(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.words, f)

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(w, self.unk_id) for w in split_words(text)]

  def decode(self, ids: Sequence[int]) -> str:
    out = []
    for i in ids:
      if i == self.eos_id:
        break
      if i != self.bos_id:
        out.append(self.words[i - 1] if 0 < i <= len(self.words) else "<unk>")
    return " ".join(out)

  def __call__(self, texts: Sequence[str], max_len: int = 77):
    """Returns (ids int32[B, max_len], attention_mask int32[B, max_len])."""
    return pad_and_truncate([self.encode(t) for t in texts], max_len, self.bos_id, self.eos_id)


def load_tokenizer(path: str) -> Tokenizer:
  """A directory with vocab.json + merges.txt -> ClipTokenizer; a `.json` word list -> WordTokenizer."""
  if os.path.isdir(path):
    return ClipTokenizer(path)
  if path.endswith(".json"):
    return WordTokenizer.load(path)
  raise ValueError(f"Unknown tokenizer path {path!r}: expected a directory with CLIP "
                   "tokenizer files or a word-vocabulary .json file")
