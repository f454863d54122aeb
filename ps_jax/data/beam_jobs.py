"""The prepare step on Apache Beam: decoding tasks and the dataset write as pipelines.

`apache-beam` is optional (`pip install -e ".[beam]"`); it is imported only here, and
only when a Beam run is asked for. Locally the pipelines run on Beam's DirectRunner (no
service needed); `--runner=DataflowRunner` (or Flink, Spark) with their options runs the
same pipelines on a cluster, where every path given to the prepare step (videos,
annotations, `--out_dir`) must be readable and writable by every worker (a shared
filesystem).

Two pipelines, as the two phases of `ps_jax.data.preparation`:
1. `run_tasks`: one decode task per video (`decoding.decode_to_cache`, which never raises
   on a bad file: a corrupt video is a reported result, not a failed bundle the runner
   would retry). Results are written as JSON lines and handed back in task order, so the
   skip report equals the local path's.
2. `examples`: the TFDS builder's examples as a PTransform; TFDS's Beam writer then writes
   the ArrayRecord shards. With the dataset's `disable_shuffling`, records are written in
   key order, so record i is the same video as on the local path.

Layer: data (imports nothing of ps_jax; the callers pass the functions to run).
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import tempfile
from typing import Any, Callable, Sequence, Union

INSTALL_HINT = 'pip install -e ".[beam]"  (or: pip install apache-beam)'


class BeamUnavailableError(ImportError):
  """A Beam run was asked for but apache-beam is not installed."""


def import_beam():
  """The `apache_beam` module, or BeamUnavailableError naming how to install it."""
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise BeamUnavailableError(f"--runner beam needs apache-beam, which is not installed "
                               f"({e}); {INSTALL_HINT}") from e
  return apache_beam


def split_options(options: Union[str, Sequence[str], None]) -> list[str]:
  """Beam pipeline arguments from one shell-quoted string or a list of them."""
  if options is None:
    return []
  if isinstance(options, str):
    return shlex.split(options)
  return [arg for item in options for arg in shlex.split(item)]


def pipeline_options(options: Union[str, Sequence[str], None]):
  """`PipelineOptions` from arguments such as "--runner=DirectRunner --direct_num_workers=2".

  Unknown arguments are refused with their names (Beam itself only logs a warning), so a
  misspelt option is not silently ignored.
  """
  import_beam()
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  parsed = po.PipelineOptions(split_options(options))
  known = parsed.get_all_options()
  unknown = sorted(set(parsed.get_all_options(retain_unknown_options=True)) - set(known))
  if unknown:
    raise ValueError(f"--beam_options: unknown Beam pipeline option(s) "
                     f"{['--' + name for name in unknown]}")
  return parsed


def _apply(item: tuple[int, dict], fn: Callable[[dict], dict]) -> str:
  position, task = item
  return json.dumps([position, fn(task)])


def run_tasks(tasks: Sequence[dict], fn: Callable[[dict], dict],
              on_result: Callable[[dict, dict], None], *, options: Any,
              temp_root: str) -> None:
  """Runs fn(task) for every task in one Beam pipeline; on_result(task, result) in order.

  Args:
    tasks: JSON-able task dicts.
    fn: a picklable function task -> JSON-able result dict; it should not raise for bad
      input (a raise fails the bundle, which a runner retries).
    on_result: called on this process after the pipeline, once per task, in task order.
    options: `PipelineOptions` (see `pipeline_options`).
    temp_root: a directory every worker can write; the results are staged in a
      temporary directory under it, removed afterwards.
  """
  if not tasks:
    return
  beam = import_beam()
  staging = tempfile.mkdtemp(prefix="beam_results_", dir=temp_root)
  try:
    prefix = os.path.join(staging, "results")
    with beam.Pipeline(options=options) as p:
      _ = (p
           | "Tasks" >> beam.Create(list(enumerate(tasks)))
           | "Spread" >> beam.Reshuffle()
           | "Run" >> beam.Map(_apply, fn)
           | "Results" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    results: dict[int, dict] = {}
    for file in sorted(glob.glob(prefix + "*.jsonl")):
      with open(file, encoding="utf-8") as f:
        for line in f:
          position, result = json.loads(line)
          results[position] = result
    missing = [tasks[i].get("video_id", i) for i in range(len(tasks)) if i not in results]
    if missing:
      raise RuntimeError(f"the Beam pipeline returned no result for {len(missing)} task(s), "
                         f"first {missing[:5]}")
    for i, task in enumerate(tasks):
      on_result(task, results[i])
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def examples(items: Sequence[Any], make: Callable[[Any], dict]):
  """A PTransform yielding (i, make(items[i])) for a TFDS builder's `_generate_examples`.

  The elements are the positions; the items travel with the function (pickled with the
  pipeline by Beam's pickler, which also takes closures, e.g. in-memory renderers).
  """
  beam = import_beam()
  items = list(items)
  return (beam.Create(range(len(items)))
          | beam.Reshuffle()
          | beam.Map(lambda position: (position, make(items[position]))))
