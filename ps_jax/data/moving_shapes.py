"""moving_shapes: a procedurally rendered text-video benchmark whose answers need frame order.

Every clip shows one coloured shape (or a few) on a noisy gradient background doing one
temporal event: moving left / right / up / down, growing or shrinking. Captions name
colour, kind and event with paraphrases ("a red circle moves left", "the red circle
slides to the left", ...). Clips come in twins: a clip and the same frames in reverse
order, whose events are the opposite ones (left <-> right, up <-> down, grows <->
shrinks). The SET of frames of a twin pair is identical, so any model that pools frames
without looking at their order (mean pooling of per-frame features) cannot tell the
twins apart: only temporal modelling recovers the direction.

Everything is deterministic from the seed; clip i of a split depends only on (seed,
split, i // 2). Sizes: `SIZES["demo"]` (cheap enough to train a tiny CLIP on a 2-core
CPU in minutes) and `SIZES["tiny"]` (unit tests). `write_mp4_dataset` writes the clips
as real .mp4 files plus `moving_shapes.json` and the word vocabulary so the PyAV path
of the prepare step can be exercised; the prepare step can also render in memory.

CLI: `python -m ps_jax.data.moving_shapes --out_dir DIR [--size demo] [--seed 0]`
writes DIR/videos/*.mp4, DIR/moving_shapes.json and DIR/vocab.json.

Layer: data (imports `builders`, `video` and `ps_jax.tokenizer`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
from typing import Iterator, Sequence

import numpy as np

from ps_jax import tokenizer as tokenizer_lib
from ps_jax.data import builders
from ps_jax.data import video as video_lib

ANNOTATION_FILE = "moving_shapes.json"
VOCAB_FILE = "vocab.json"
SPLITS = ("train", "val", "test")
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

COLOURS = {
    "red": (225, 30, 30), "green": (30, 200, 50), "blue": (40, 80, 240),
    "yellow": (240, 220, 30), "purple": (160, 50, 210), "orange": (250, 140, 20),
    "white": (245, 245, 245), "cyan": (30, 215, 225),
}
KINDS = ("circle", "square", "triangle", "diamond")
# Each axis: (forward event, reversed event). Reversing a clip swaps them.
AXES = (("right", "left"), ("down", "up"), ("grows", "shrinks"))
EVENTS = tuple(e for axis in AXES for e in axis)
OPPOSITE = {a: b for a, b in AXES} | {b: a for a, b in AXES}
SUBJECTS = ("a {c} {k}", "the {c} {k}", "one {c} {k}")
PHRASES = {
    "left": ("moves left", "is moving left", "goes to the left", "slides to the left",
             "travels left"),
    "right": ("moves right", "is moving right", "goes to the right", "slides to the right",
              "travels right"),
    "up": ("moves up", "is moving up", "goes upward", "rises", "travels up"),
    "down": ("moves down", "is moving down", "goes downward", "falls", "travels down"),
    "grows": ("grows", "is growing", "gets bigger", "becomes larger", "expands"),
    "shrinks": ("shrinks", "is shrinking", "gets smaller", "becomes smaller", "contracts"),
}
CONJUNCTION = "while"


@dataclasses.dataclass(frozen=True)
class MovingShapesConfig:
  """Benchmark size and rendering options.

  Attributes:
    num_train, num_val, num_test: clips per split (even: clips come in twins).
    num_frames: T frames per clip.
    image_size: frames are image_size x image_size RGB.
    captions_per_clip: paraphrased captions per clip (<= 15 for one shape).
    shapes_per_clip: shapes per clip (1 or 2); each has its own event.
    noise_std: per-frame Gaussian background noise (in uint8 units).
    seed: everything derives from it.
  """
  num_train: int = 384
  num_val: int = 96
  num_test: int = 160
  num_frames: int = 12
  image_size: int = 32
  captions_per_clip: int = 5
  shapes_per_clip: int = 1
  noise_std: float = 8.0
  seed: int = 0

  def num_clips(self, split: str) -> int:
    if split not in _SPLIT_CODES:
      raise ValueError(f"Unknown moving_shapes split {split!r}: expected one of {SPLITS}")
    return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

  def validate(self) -> "MovingShapesConfig":
    for split in SPLITS:
      n = self.num_clips(split)
      if n < 0 or n % 2:
        raise ValueError(f"MovingShapesConfig.num_{split} must be a non-negative even "
                         f"number (clips come in reversed twins), got {n}")
    if self.num_frames < 2:
      raise ValueError(f"MovingShapesConfig.num_frames must be >= 2, got {self.num_frames}")
    if self.image_size < 16:
      raise ValueError(f"MovingShapesConfig.image_size must be >= 16, got {self.image_size}")
    if self.shapes_per_clip not in (1, 2):
      raise ValueError("MovingShapesConfig.shapes_per_clip must be 1 or 2, got "
                       f"{self.shapes_per_clip}")
    most = (len(SUBJECTS) * 5) ** self.shapes_per_clip
    if not 1 <= self.captions_per_clip <= most:
      raise ValueError(f"MovingShapesConfig.captions_per_clip must be in [1, {most}], got "
                       f"{self.captions_per_clip}")
    return self


SIZES = {
    "demo": MovingShapesConfig(),
    "tiny": MovingShapesConfig(num_train=16, num_val=4, num_test=8, num_frames=8,
                               image_size=32, captions_per_clip=3),
}


@dataclasses.dataclass
class Clip:
  """One rendered clip.

  Attributes:
    video_id: e.g. "train00007r" (pair 7, reversed twin).
    frames: uint8[T, S, S, 3].
    captions: paraphrased captions.
    events: one event per shape (EVENTS).
    colours, kinds: per shape.
    twin_id: video_id of the reversed twin.
  """
  video_id: str
  frames: np.ndarray
  captions: tuple[str, ...]
  events: tuple[str, ...]
  colours: tuple[str, ...]
  kinds: tuple[str, ...]
  twin_id: str


def vocabulary() -> list[str]:
  """The fixed word list of every caption the benchmark can produce (sorted)."""
  words = set(tokenizer_lib.split_words(CONJUNCTION))
  for c, k in itertools.product(COLOURS, KINDS):
    for subject in SUBJECTS:
      words.update(tokenizer_lib.split_words(subject.format(c=c, k=k)))
  for phrases in PHRASES.values():
    for phrase in phrases:
      words.update(tokenizer_lib.split_words(phrase))
  return sorted(words)


def make_tokenizer() -> tokenizer_lib.WordTokenizer:
  """The benchmark's word tokenizer (no file needed; EOS is the largest id)."""
  return tokenizer_lib.WordTokenizer(vocabulary())


def vocab_path(data_dir: str, dataset_name: str = "moving_shapes") -> str:
  """Path of the vocabulary written beside a prepared moving_shapes dataset.

  `ps_jax.tokenizer.load_tokenizer(vocab_path(data_dir))` gives its WordTokenizer.
  """
  return os.path.join(builders.dataset_dir(data_dir, dataset_name), VOCAB_FILE)


def save_vocabulary(path: str) -> str:
  """Writes the vocabulary as a JSON word list (`WordTokenizer.load` reads it)."""
  make_tokenizer().save(path)
  return path


# ----------------------------------------------------------------------------- rendering


def _coverage(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of a shape of radius r at offsets (dx, dy) pixels."""
  if kind == "circle":
    d, extent = np.sqrt(dx * dx + dy * dy), r
  elif kind == "square":
    d, extent = np.maximum(np.abs(dx), np.abs(dy)), 0.85 * r
  elif kind == "diamond":
    d, extent = (np.abs(dx) + np.abs(dy)) / np.sqrt(2.0), 0.85 * r
  elif kind == "triangle":  # apex up, circumradius 1.25 r
    s, c = np.sin(np.pi / 3), np.cos(np.pi / 3)
    d = np.maximum(np.maximum(dy, s * dx - c * dy), -s * dx - c * dy)
    extent = 0.625 * r
  else:
    raise ValueError(f"Unknown shape kind {kind!r}")
  return np.clip(extent - d + 0.5, 0.0, 1.0)


def _render(rng: np.random.Generator, cfg: MovingShapesConfig):
  """Renders one forward clip. Returns (frames uint8[T,S,S,3], events, colours, kinds)."""
  t_count, size = cfg.num_frames, cfg.image_size
  t = np.linspace(0.0, 1.0, t_count)[:, None, None]
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  # Background: gradient between two muted colours at a random angle + per-frame noise.
  c0, c1 = rng.uniform(20, 120, size=(2, 3))
  angle = rng.uniform(0, 2 * np.pi)
  ramp = ((xs - size / 2) * np.cos(angle) + (ys - size / 2) * np.sin(angle)) / size + 0.5
  background = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]
  frames = np.broadcast_to(background, (t_count, size, size, 3)).copy()
  frames += rng.normal(0.0, cfg.noise_std, size=frames.shape)

  colours = rng.choice(list(COLOURS), size=cfg.shapes_per_clip, replace=False)
  kinds = rng.choice(KINDS, size=cfg.shapes_per_clip, replace=cfg.shapes_per_clip > len(KINDS))
  axes = rng.integers(0, len(AXES), size=cfg.shapes_per_clip)
  events = []
  for i in range(cfg.shapes_per_clip):
    event = AXES[axes[i]][0]
    lo, hi = (0.2, 0.8) if cfg.shapes_per_clip == 1 else ((0.15, 0.45), (0.55, 0.85))[i]
    if event == "grows":
      r = size * (rng.uniform(0.06, 0.09) + rng.uniform(0.12, 0.16) * t)
      cx = np.full_like(t, size * rng.uniform(0.4, 0.6) if cfg.shapes_per_clip == 1
                        else size * (lo + hi) / 2)
      cy = np.full_like(t, size * rng.uniform(0.4, 0.6))
    else:
      r = np.full_like(t, size * rng.uniform(0.11, 0.15))
      start, end = size * rng.uniform(0.2, 0.28), size * rng.uniform(0.72, 0.8)
      along = start + (end - start) * t
      across = np.full_like(t, size * rng.uniform(lo + 0.05, hi - 0.05)
                            if cfg.shapes_per_clip == 2 else size * rng.uniform(0.3, 0.7))
      cx, cy = (along, across) if event == "right" else (across, along)
    alpha = _coverage(str(kinds[i]), xs[None] - cx, ys[None] - cy, r)[..., None]
    colour = np.asarray(COLOURS[str(colours[i])], np.float64)
    frames = frames * (1 - alpha) + colour * alpha
    events.append(event)
  frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
  return frames, tuple(events), tuple(str(c) for c in colours), tuple(str(k) for k in kinds)


def caption_options(colours: Sequence[str], kinds: Sequence[str],
                    events: Sequence[str]) -> list[str]:
  """Every paraphrase of a clip's description (all subject x phrase combinations)."""
  per_shape = [[f"{subject.format(c=c, k=k)} {phrase}" for subject in SUBJECTS
                for phrase in PHRASES[e]] for c, k, e in zip(colours, kinds, events)]
  return [f" {CONJUNCTION} ".join(parts) for parts in itertools.product(*per_shape)]


def _captions(rng: np.random.Generator, cfg: MovingShapesConfig, colours, kinds, events):
  options = caption_options(colours, kinds, events)
  picks = rng.choice(len(options), size=cfg.captions_per_clip, replace=False)
  return tuple(options[i] for i in picks)


def render_pair(cfg: MovingShapesConfig, split: str, pair: int) -> tuple[Clip, Clip]:
  """Renders twin clips 2*pair ("...f", forward) and 2*pair + 1 ("...r", reversed).

  The reversed twin's frames are exactly `forward.frames[::-1]`.
  """
  rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], pair])
  frames, events, colours, kinds = _render(rng, cfg)
  reversed_events = tuple(OPPOSITE[e] for e in events)
  fid, rid = f"{split}{pair:05d}f", f"{split}{pair:05d}r"
  fwd = Clip(fid, frames, _captions(rng, cfg, colours, kinds, events), events, colours,
             kinds, rid)
  rev = Clip(rid, np.ascontiguousarray(frames[::-1]),
             _captions(rng, cfg, colours, kinds, reversed_events), reversed_events,
             colours, kinds, fid)
  return fwd, rev


def iter_clips(cfg: MovingShapesConfig, split: str) -> Iterator[Clip]:
  """All clips of a split in order (twins adjacent)."""
  cfg.validate()
  for pair in range(cfg.num_clips(split) // 2):
    yield from render_pair(cfg, split, pair)


def annotations(cfg: MovingShapesConfig) -> dict:
  """The annotation record written by `write_mp4_dataset` (no frames)."""
  splits = {}
  for split in SPLITS:
    splits[split] = [{"video_id": c.video_id, "captions": list(c.captions),
                      "events": list(c.events), "colours": list(c.colours),
                      "kinds": list(c.kinds), "twin_id": c.twin_id}
                     for c in iter_clips(cfg, split)]
  return {"config": dataclasses.asdict(cfg), "splits": splits}


def read_annotations(anno_dir: str) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
  """Reads `moving_shapes.json` -> {split: [(video_id, captions)]}."""
  path = os.path.join(anno_dir, ANNOTATION_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"moving_shapes annotation file {path!r} does not exist (write it "
                     "with `python -m ps_jax.data.moving_shapes --out_dir DIR`)")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    return {split: [(c["video_id"], tuple(c["captions"])) for c in data["splits"][split]]
            for split in SPLITS}
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{path!r} is not a moving_shapes annotation file: {e!r}") from e


def write_mp4_dataset(out_dir: str, cfg: MovingShapesConfig, *, fps: int = 8,
                      codec: str = "libx264") -> dict:
  """Writes every clip as `out_dir/videos/<video_id>.mp4` plus annotations and vocab.

  Returns:
    The annotation dict (also written to `out_dir/moving_shapes.json`).
  """
  cfg.validate()
  video_dir = os.path.join(out_dir, "videos")
  os.makedirs(video_dir, exist_ok=True)
  for split in SPLITS:
    for clip in iter_clips(cfg, split):
      video_lib.write_video(os.path.join(video_dir, clip.video_id + ".mp4"), clip.frames,
                            fps=fps, codec=codec)
  anno = annotations(cfg)
  with open(os.path.join(out_dir, ANNOTATION_FILE), "w", encoding="utf-8") as f:
    json.dump(anno, f, indent=1)
  save_vocabulary(os.path.join(out_dir, VOCAB_FILE))
  return anno


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", required=True, help="where videos/ and the "
                      "annotation file go")
  parser.add_argument("--size", default="demo", choices=sorted(SIZES))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--codec", default="libx264")
  args = parser.parse_args(argv)
  cfg = dataclasses.replace(SIZES[args.size], seed=args.seed)
  anno = write_mp4_dataset(args.out_dir, cfg, codec=args.codec)
  counts = {s: len(v) for s, v in anno["splits"].items()}
  print(f"moving_shapes ({args.size}, seed {args.seed}): wrote {counts} clips to "
        f"{os.path.join(args.out_dir, 'videos')}")


if __name__ == "__main__":
  main()
