"""Two roles of the multi-host test, each run as its own process (see test_multihost.py).

  worker:    one of N processes joined by `jax.distributed.initialize` on loopback, with
             fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=K).
             Trains the tiny model a few steps on a (data=2, fsdp=4) mesh whose hosts'
             devices are interleaved (FSDP shards and batch rows cross hosts), each
             process feeding only its own rows; saves an orbax checkpoint with all hosts;
             embeds captions, and the videos of a prepared dataset (--data) as the real
             evaluation pipeline hands them to this process (`make_eval_data`), with
             `ps_jax.embed`. Writes what it got to --out.
  reference: one process with 8 devices, started with the workers. Trains the same
             steps, waits for the workers, compares with their state and losses,
             restores their checkpoint on its own mesh and checks their embeddings.
             Prints `RESULT {json}`.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

NUM_STEPS = 3
NUM_VIDEOS = 13      # two global eval batches of 8, the second padded
NUM_TEXTS = 11
EVAL_BATCH = 8
DATASET = "moving_shapes/tiny"
EVAL_SPLITS = ("train", "val")  # 16 videos: two full global batches; 4: one padded
FRAMES = 4
DONE = "workers_done"  # written by worker 0 once every worker has written its results


def batches():
  from train_fixtures import tiny_batch  # pylint: disable=g-import-not-at-top
  return [tiny_batch(seed=s) for s in range(NUM_STEPS)]


def eval_inputs():
  """All videos uint8[V, F, 16, 16, 3] and captions int32[T, 8] (+ mask) of the eval."""
  from train_fixtures import tiny_batch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  frames = rng.integers(0, 256, (NUM_VIDEOS, FRAMES, 16, 16, 3), dtype=np.uint8)
  text = tiny_batch(batch=NUM_TEXTS, seed=11)
  return frames, text["input_ids"], text["attention_mask"]


def local_eval_batches(frames, process_index, process_count):
  """This process's slots of every global eval batch, laid out like the eval pipeline
  (`ps_jax.data.eval_pipeline._EvalVideos`): slot s of process p is video t*G + p*b + s."""
  local = EVAL_BATCH // process_count
  out = []
  for t in range(-(-len(frames) // EVAL_BATCH)):
    v = t * EVAL_BATCH + process_index * local + np.arange(local)
    ok = v < len(frames)
    f = np.zeros((local,) + frames.shape[1:], np.uint8)
    f[ok] = frames[v[ok]]
    out.append({"frames": f, "video_index": np.where(ok, v, -1).astype(np.int32),
                "mask": ok})
  return out


def eval_data(data_dir, split, shard_index, shard_count):
  """The real evaluation pipeline's output for this process (the tiny model: 16 px,
  P = 2)."""
  from ps_jax.data import moving_shapes, pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_eval_data(data_dir, DATASET, split,
                                 tokenizer=moving_shapes.make_tokenizer(),
                                 global_batch_size=EVAL_BATCH, num_frames=FRAMES,
                                 num_prompts=2, image_size=16, max_len=8,
                                 shard_index=shard_index, shard_count=shard_count)


def flat(tree):
  """{"path/to/leaf": numpy array} of a pytree."""
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def max_diff(a, b):
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
             for k in a)


def worker(args):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                             num_processes=args.num_processes, process_id=args.process_id,
                             cluster_detection_method="deactivate",
                             initialization_timeout=120)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top

  from ps_jax import checkpoints, embed, sharding  # pylint: disable=g-import-not-at-top
  from train_fixtures import run_steps_per_process, tiny_model  # pylint: disable=g-import-not-at-top

  n, me = jax.process_count(), jax.process_index()
  assert n == args.num_processes and me == args.process_id, (n, me)
  assert jax.device_count() == 8, jax.devices()
  hosts = [[d for d in jax.devices() if d.process_index == p] for p in range(n)]
  order = [hosts[p][i] for i in range(len(hosts[0])) for p in range(n)]
  mesh = Mesh(np.array(order).reshape(2, 4), sharding.MESH_AXES)
  rows = sharding.process_batch_rows(mesh, 8)
  assert len(rows) == 8 // n and np.any(np.diff(rows) > 1), rows  # hosts interleaved

  model = tiny_model()
  state, history = run_steps_per_process(model, batches(), mesh)
  ckpt = checkpoints.Checkpointer(os.path.join(args.out, "run"), async_save=True)
  ckpt.save(NUM_STEPS, state, force=True)
  ckpt.close()
  host_state = multihost_utils.process_allgather(state, tiled=True)

  frames, ids, mask = eval_inputs()
  encode_video, encode_text = embed.make_encoders(model, mesh,
                                                  jax.tree_util.tree_map(
                                                      lambda x: x.sharding, state["params"]))
  videos = embed.embed_videos(encode_video, state["params"],
                              local_eval_batches(frames, me, n), NUM_VIDEOS, mesh)
  texts = embed.embed_texts(encode_text, state["params"], ids, mask, EVAL_BATCH, mesh)
  pipeline_videos = {}
  for split in EVAL_SPLITS:  # shards as in evaluate_split: this process's own
    data = eval_data(args.data, split, None, None)
    assert data.local_batch_size == EVAL_BATCH // n
    pipeline_videos[split] = embed.embed_videos(encode_video, state["params"], data.videos,
                                                data.num_videos, mesh)
  np.savez(os.path.join(args.out, f"embeddings_{me}.npz"), videos=videos, texts=texts,
           **{f"pipeline_{k}": v for k, v in pipeline_videos.items()})
  if me == 0:
    np.savez(os.path.join(args.out, "state.npz"), **flat(host_state))
    with open(os.path.join(args.out, "history.json"), "w", encoding="utf-8") as f:
      json.dump(history, f)
  multihost_utils.sync_global_devices("worker done")
  if me == 0:
    open(os.path.join(args.out, DONE), "w").close()
  print(f"worker {me} done", flush=True)


def wait_for(path, timeout_s=600):
  deadline = time.monotonic() + timeout_s
  while not os.path.exists(path):
    if time.monotonic() > deadline:
      raise TimeoutError(f"{path} did not appear within {timeout_s} s")
    time.sleep(0.2)


def reference(args):
  from ps_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
  from ps_jax.data.transforms import normalize_frames  # pylint: disable=g-import-not-at-top
  from train_fixtures import make_train_step, run_steps, tiny_model  # pylint: disable=g-import-not-at-top

  assert jax.process_count() == 1 and jax.device_count() == 8, jax.devices()
  model = tiny_model()
  mesh = sharding.make_mesh(2, 4)
  ref, ref_history = run_steps(model, batches(), mesh)
  ref = flat(ref)
  wait_for(os.path.join(args.out, DONE))  # the workers run at the same time
  got = dict(np.load(os.path.join(args.out, "state.npz")))
  with open(os.path.join(args.out, "history.json"), encoding="utf-8") as f:
    history = json.load(f)

  def diff(prefix, a, b):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}, prefix
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
               for k in keys)

  out = {"steps": NUM_STEPS, "loss": [h["loss"] for h in ref_history],
         "params": diff("['params']", got, ref), "opt_state": diff("['opt_state']", got, ref),
         "step_and_rng": max(diff("['step']", got, ref), diff("['rng']", got, ref)),
         "loss_diff": max(abs(h["loss"] - r["loss"]) for h, r in zip(history, ref_history))}

  state0, _, shard = make_train_step(model, mesh, batches()[0])
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state0, shard)
  ckpt = checkpoints.Checkpointer(os.path.join(args.out, "run"), async_save=False)
  out["checkpoint_steps"] = list(ckpt.manager.all_steps())
  restored = ckpt.restore(NUM_STEPS, target)
  params_only = ckpt.restore_params(NUM_STEPS, target["params"])
  ckpt.close()
  assert all(x.sharding == s for x, s in zip(jax.tree_util.tree_leaves(restored),
                                             jax.tree_util.tree_leaves(shard)))
  restored = flat(jax.device_get(restored))
  out["restored_vs_workers"] = diff("", restored, got)
  out["restored_vs_reference"] = diff("", restored, ref)
  out["restored_params_only"] = diff("", flat({"params": jax.device_get(params_only)}),
                                     {k: v for k, v in got.items() if k.startswith("['params']")})

  params = jax.device_get(params_only)
  frames, ids, mask = eval_inputs()
  videos = np.asarray(jax.jit(lambda p, f: model.apply(
      {"params": p}, normalize_frames(f), method="encode_video")["video_embedding"])(
          params, frames))
  texts = np.asarray(jax.jit(lambda p, i, m: model.apply(
      {"params": p}, i, m, method="encode_text"))(params, ids, mask))
  encode = jax.jit(lambda p, f: model.apply({"params": p}, normalize_frames(f),
                                            method="encode_video")["video_embedding"])
  pipeline_ref = {}
  for split in EVAL_SPLITS:  # the same pipeline read by one process, row = video index
    data = eval_data(args.data, split, 0, 1)
    frames_of = {}
    for batch in data:
      for f, i, keep in zip(batch["frames"], batch["video_index"], batch["mask"]):
        if keep:
          frames_of[int(i)] = f
    assert sorted(frames_of) == list(range(data.num_videos))
    pipeline_ref[split] = np.asarray(encode(params, np.stack(
        [frames_of[i] for i in range(data.num_videos)])))
  out["embeddings"] = {}
  for p in range(2):
    emb = np.load(os.path.join(args.out, f"embeddings_{p}.npz"))
    assert emb["videos"].shape == videos.shape and emb["texts"].shape == texts.shape
    out["embeddings"][str(p)] = {"videos": float(np.max(np.abs(emb["videos"] - videos))),
                                 "texts": float(np.max(np.abs(emb["texts"] - texts)))}
    for split, want in pipeline_ref.items():
      got_split = emb[f"pipeline_{split}"]
      assert got_split.shape == want.shape, (split, got_split.shape, want.shape)
      out["embeddings"][str(p)][f"pipeline_{split}"] = float(np.max(np.abs(got_split - want)))
      # Rows in another order would still be close to *some* row: say which row matches.
      out["embeddings"][str(p)][f"pipeline_{split}_rows"] = [
          int(np.argmin(np.abs(want - row).max(axis=1))) for row in got_split]
  print("RESULT " + json.dumps(out), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("role", choices=["worker", "reference"])
  parser.add_argument("--out", required=True, help="directory shared by all roles")
  parser.add_argument("--data", required=True, help=f"prepared {DATASET} (TFDS data_dir)")
  parser.add_argument("--port", type=int, help="coordinator port on localhost (worker)")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  if args.role == "worker":
    if args.port is None or args.process_id is None:
      parser.error("worker needs --port and --process_id")
    worker(args)
  else:
    reference(args)


if __name__ == "__main__":
  main()
