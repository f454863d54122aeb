"""CLIP tokenizer files derived offline from the BPE merges; fixed-length padding."""

import json
import os

import numpy as np
import pytest

from ps_jax import tokenizer


def test_known_clip_ids(clip_tokenizer_dir):
  tok = tokenizer.ClipTokenizer(clip_tokenizer_dir)
  assert tok.vocab_size == 49408 and tok.bos_id == 49406 and tok.eos_id == 49407
  ids, mask = tok(["a photo of a cat"], max_len=10)
  assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407, 49407]
  assert mask[0].tolist() == [1] * 7 + [0] * 3
  with open(os.path.join(clip_tokenizer_dir, "vocab.json")) as f:
    vocab = json.load(f)
  assert len(vocab) == 49408 and vocab["<|endoftext|>"] == 49407 and vocab["a</w>"] == 320


def test_truncation_keeps_eot(clip_tokenizer_dir):
  tok = tokenizer.ClipTokenizer(clip_tokenizer_dir)
  ids, mask = tok(["a photo of a cat sitting on a very long sofa in the sun"], max_len=5)
  assert ids[0].tolist() == [49406, 320, 1125, 539, 49407]
  assert mask.sum() == 5


def test_word_tokenizer_round_trip(tmp_path):
  tok = tokenizer.WordTokenizer.from_texts(["a red circle moves left", "A blue square."])
  ids, mask = tok(["a red square moves up"], max_len=8)
  assert ids.dtype == np.int32 and ids[0, 0] == tok.bos_id
  assert tok.eos_id == tok.vocab_size - 1 == ids.max()
  assert tok.decode(ids[0]) == "a red square moves <unk>"
  path = str(tmp_path / "vocab.json")
  tok.save(path)
  assert tokenizer.load_tokenizer(path)(["a red circle"], 6)[0].tolist() == tok(
      ["a red circle"], 6)[0].tolist()


def test_bad_inputs_name_the_file(tmp_path):
  bad = tmp_path / "merges.txt"
  bad.write_text("#version\nonly one line\n")
  with pytest.raises(ValueError, match="merges.txt"):
    tokenizer.write_clip_tokenizer_files(str(bad), str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="write_clip_tokenizer_files"):
    tokenizer.ClipTokenizer(str(tmp_path))
