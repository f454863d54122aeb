"""Data layer: annotations, frame sampling, PyAV decoding, prepare step, grain pipelines.

Modules (imported explicitly; this package imports nothing heavy on its own):
  annotations    MSR-VTT / MSVD / LSMDC parsers and the seeded validation hold-out.
  sampling       official chunked `rand` / `uniform` frame sampling.
  video          PyAV decoding into K evenly spread uint8 frames, typed errors.
  moving_shapes  synthetic text-video benchmark needing temporal order (reversed twins).
  builders       TFDS ArrayRecord builders and reading prepared datasets back.
  prepare        `python -m ps_jax.data.prepare`: decode once, write the TFDS dataset.
  transforms     per-example grain transforms and `normalize_frames`.
  pipeline       `make_train_loader` / `make_eval_data`.
"""
