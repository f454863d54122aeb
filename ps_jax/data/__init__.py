"""Data layer: annotations, frame sampling, PyAV decoding, prepare step, grain pipelines.

Modules (imported explicitly; this package imports nothing heavy on its own), each
importing only modules listed below it (`.importlinter`, contract "ps_jax.data layers"):
  prepare        `python -m ps_jax.data.prepare`: the command line of `preparation`.
  preparation    decode once, write the TFDS dataset, report skipped videos.
  pipeline       `make_train_loader` (and `make_eval_data`, from `eval_pipeline`).
  eval_pipeline  every video of a split once, in padded global batches, plus captions.
  tokenizers     which tokenizer goes with an experiment or a model (a storable spec).
  decoding       decoding into a frame cache in crash-isolated worker processes.
  reading        frames of a prepared record, shard defaults, pipeline checks.
  moving_shapes  synthetic text-video benchmark needing temporal order (reversed twins).
  builders       TFDS ArrayRecord builders, writing and reading prepared datasets.
  transforms     per-example grain transforms and `normalize_frames`.
  video          PyAV decoding into K evenly spread uint8 frames, typed errors.
  annotations    MSR-VTT / MSVD / LSMDC parsers and the seeded validation hold-out.
  sampling       official chunked `rand` / `uniform` frame sampling.
"""
