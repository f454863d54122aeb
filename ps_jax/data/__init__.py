"""Data: annotations, frame sampling, PyAV decoding, prepare step, grain pipelines.

Layer: data (the package imports none of its modules; each names what it imports).

Modules (imported explicitly; this package imports nothing heavy on its own), each
importing only modules listed below it (`.importlinter`, contract "ps_jax.data layers"):
  prepare        `python -m ps_jax.data.prepare`: the command line of `preparation`.
  preparation    decode once, write the TFDS dataset, report skipped videos.
  pipeline       `make_train_loader` (and `make_eval_data`, from `eval_pipeline`).
  eval_pipeline  every video of a split once, in padded global batches, plus captions.
  tokenizers     which tokenizer goes with an experiment or a model (a storable spec).
  decoding       decoding into a frame cache in crash-isolated worker processes.
  reading        records of a prepared split as stored videos, shard defaults, checks.
  moving_shapes  synthetic text-video benchmark needing temporal order (reversed twins).
  builders       TFDS ArrayRecord builders, writing and reading prepared datasets.
  transforms     per-example grain transforms (torch-matching resampling), normalisation.
  video          PyAV decoding into all or K evenly spread uint8 frames, typed errors.
  annotations    MSR-VTT / MSVD / LSMDC parsers and the seeded validation hold-out.
  frame_store    a record's frames, raw or JPEG, decoded on demand; official sampling.
  sampling       official chunked `rand` / `uniform` frame sampling, re-timing.
"""
