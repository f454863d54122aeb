"""Search your videos in a browser: a warm HTTP search service and its results page.

  python -m ps_jax.serve --index DIR [--host 127.0.0.1] [--port 8000]
  python -m ps_jax.serve --video_dir ~/videos --model MODEL [--index DIR] [--watch]

Loads the index and the model that built it once (fingerprint checked, as
`ps_jax.search`), compiles the text encoder for every batch shape, then serves.

With `--video_dir` it serves at once and builds or updates the index of that folder in
a background thread with the same loaded model (`ps_jax.retrieval.folder`: new and
changed files embedded, removed ones dropped, a commit every `--commit_every` videos or
`--commit_seconds` seconds, an interrupted build continued); each commit is swapped
into the search, so the page finds what is indexed so far, and shows the progress
(videos done and to do, videos per second, time left) and the files that could not be
read. `--watch` keeps indexing files added or changed while it serves. The index lives
in `--index` (default `<video_dir>/.ps_jax_index`).

  GET  /                         the results page (?q=TEXT&k=K in the URL)
  GET  /api/search?q=TEXT&k=K    {"query", "k", "results": [{"id", "score", "thumbnail",
                                  "video", "video_id", "start", "end"}, ...]} best first
                                  (URLs on this server; null when the index has no
                                  thumbnail / source file; start and end, in seconds,
                                  of a windowed index's moments, else null)
  POST /api/search               {"queries": [...], "k": K} -> {"k", "results": [
                                  {"query", "results": [...]}, ...]}
  GET  /api/thumbnail/{id}       the video's JPEG thumbnail strip
  GET  /api/video/{id}           the source video file (HTTP range requests)
  GET  /healthz                  index size, model, device, queries served (and with
                                  --video_dir the build's progress under "indexing")
  GET  /openapi.json             the API's OpenAPI schema

Files are served only by video id, from what the index recorded: a request never names
a path. Nothing a request sends changes the index or the filesystem. Binds 127.0.0.1
unless --host says otherwise (then anyone who reaches the port can search and watch
the indexed videos: there is no authentication).

Layer: front end (FastAPI + uvicorn over `ps_jax.retrieval.service`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import logging
import os
import sys
import threading
import urllib.parse
from typing import Optional, Sequence

import fastapi
import jax
import pydantic
import uvicorn
from fastapi import responses
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

import ps_jax
from ps_jax import reporting
from ps_jax.embed import TextEncoder
from ps_jax.retrieval import build, folder
from ps_jax.retrieval import progress as progress_lib
from ps_jax.retrieval import windows as windows_lib
from ps_jax.retrieval import service as service_lib
from ps_jax.retrieval import store
from ps_jax.retrieval.query import QueryEncoderError
from ps_jax.retrieval.model import ModelLoadError, load_tokenizer
from ps_jax.retrieval.sources import (DEFAULT_FRAMES_PER_VIDEO, DEFAULT_SHORT_SIDE,
                                      IndexBuildError)

STATIC = {"app.js": "text/javascript", "style.css": "text/css",
          "placeholder.svg": "image/svg+xml"}
_LOG = logging.getLogger("ps_jax.serve")


class SearchRequest(pydantic.BaseModel):
  """POST /api/search body."""
  queries: list[str]
  k: int = 10


def _web_file(name: str) -> bytes:
  return importlib.resources.files("ps_jax").joinpath("web", name).read_bytes()


def _error(status: int, message: str) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message}, status_code=status)


def _strict_query(raw: bytes) -> dict[str, str]:
  """The query string's parameters, decoded as strict UTF-8 (RequestError otherwise)."""
  params = {}
  for part in raw.split(b"&"):
    if not part:
      continue
    key, _, value = part.partition(b"=")
    try:
      key_s, value_s = (urllib.parse.unquote_to_bytes(x.replace(b"+", b" ")).decode("utf-8")
                        for x in (key, value))
    except UnicodeDecodeError as e:
      raise service_lib.RequestError("the query string is not valid UTF-8") from e
    params.setdefault(key_s, value_s)
  return params


def create_app(service: service_lib.SearchService) -> fastapi.FastAPI:
  """The FastAPI application over a ready `SearchService`."""
  app = fastapi.FastAPI(title="ps_jax video search", version=ps_jax.__version__,
                        docs_url=None, redoc_url=None,
                        description="Text-to-video search over a ps_jax index.")

  def result(hit: service_lib.Hit) -> dict:
    quoted = urllib.parse.quote(hit.id, safe="")
    return {"id": hit.id, "score": round(hit.score, 6),
            "thumbnail": f"/api/thumbnail/{quoted}" if service.has_thumbnail(hit.id) else None,
            "video": f"/api/video/{quoted}" if service.video_file(hit.id) else None,
            "video_id": hit.video, "start": hit.start, "end": hit.end}

  async def run(texts: Sequence[str], k: int) -> list[list[dict]]:
    hits = await asyncio.wrap_future(service.submit(texts, k))
    return [[result(h) for h in row] for row in hits]

  @app.exception_handler(service_lib.RequestError)
  async def _bad_request(request, exc):
    return _error(400, str(exc))

  @app.exception_handler(RequestValidationError)
  async def _invalid(request, exc):
    where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                      for e in exc.errors())
    return _error(422, f"invalid request: {where}")

  @app.exception_handler(HTTPException)
  async def _http(request, exc):  # unknown routes (404), wrong methods (405), ...
    return _error(exc.status_code, str(exc.detail))

  @app.exception_handler(Exception)
  async def _internal(request, exc):
    _LOG.exception("error while answering %s", request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}")

  @app.get("/", response_class=responses.HTMLResponse, include_in_schema=False)
  def page():
    return responses.HTMLResponse(_web_file("index.html"))

  @app.get("/static/{name}", include_in_schema=False)
  def static(name: str):
    if name not in STATIC:
      return _error(404, "no such file")
    return fastapi.Response(_web_file(name), media_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})

  @app.get("/api/search", summary="Search with one text query")
  async def search_get(request: fastapi.Request,
                       q: str = fastapi.Query(..., description="the text query"),
                       k: int = fastapi.Query(10, description="number of results")):
    q = _strict_query(request.scope.get("query_string", b"")).get("q", q)
    return {"query": q, "k": k, "results": (await run([q], k))[0]}

  @app.post("/api/search", summary="Search with several text queries at once")
  async def search_post(body: SearchRequest):
    rows = await run(body.queries, body.k)
    return {"k": body.k, "results": [{"query": q, "results": r}
                                     for q, r in zip(body.queries, rows)]}

  @app.get("/api/thumbnail/{video_id}", summary="A video's thumbnail strip (JPEG)")
  def thumbnail(video_id: str):
    data = service.thumbnail(video_id)
    if data is None:
      return _error(404, "no thumbnail for this id")
    return fastapi.Response(data, media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})

  @app.get("/api/video/{video_id}", summary="A video's source file (range requests)")
  def video(video_id: str):
    path = service.video_file(video_id)
    if path is None:
      return _error(404, "no source video for this id")
    return responses.FileResponse(path, filename=None)

  @app.get("/healthz", summary="Index, model and device")
  def healthz():
    return service.health()

  return app


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ps_jax.serve",
                              description=__doc__.splitlines()[0])
  p.add_argument("--index", help="index directory (ps_jax.index_videos or ps_jax.main "
                 "--mode index); with --video_dir where its index is kept (default "
                 "<video_dir>/.ps_jax_index)")
  p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback "
                 "only; another one exposes the videos to the network)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--model", help="the model that built the index, where its recorded path "
                 "no longer finds it (fingerprint checked)")
  p.add_argument("--tokenizer", help="tokenizer for the queries (default: the index's)")
  p.add_argument("--max_batch", type=int, default=32,
                 help="most queries encoded in one device call")
  p.add_argument("--max_k", type=int, default=100, help="most results per query")
  p.add_argument("--log_level", default="warning")
  f = p.add_argument_group("--video_dir: index a folder of videos while serving")
  f.add_argument("--video_dir", help="folder of video files (recursive; id = file stem)")
  f.add_argument("--watch", action="store_true",
                 help="keep indexing files added or changed while serving")
  f.add_argument("--watch_seconds", type=float, default=folder.DEFAULT_WATCH_SECONDS,
                 help="how often --watch looks at the folder (default %(default)s)")
  f.add_argument("--commit_every", type=int, default=folder.DEFAULT_COMMIT_EVERY,
                 help="commit (and search) after this many videos (default %(default)s)")
  f.add_argument("--commit_seconds", type=float, default=folder.DEFAULT_COMMIT_SECONDS,
                 help="or after this many seconds (default %(default)s)")
  f.add_argument("--frames_per_video", type=int, default=DEFAULT_FRAMES_PER_VIDEO)
  f.add_argument("--short_side", type=int, default=DEFAULT_SHORT_SIDE,
                 help="decoded frames' short side (0: native size)")
  f.add_argument("--num_frames", type=int, help="F frames per video (default: the model's)")
  f.add_argument("--image_size", type=int, help="frame size (default: the model's)")
  f.add_argument("--max_len", type=int, help="caption length (default: the model's)")
  f.add_argument("--num_prompts", type=int, default=6,
                 help="P for a HF directory or .pth (a workdir records its own)")
  f.add_argument("--clip_config", help="for a .pth: HF config.json or its directory")
  f.add_argument("--model_dtype", choices=("float32", "bfloat16"))
  add_window_flags(f)
  f.add_argument("--batch_size", type=int, help="videos per device call while indexing")
  f.add_argument("--num_workers", type=int, help="decoding threads")
  return p


def add_window_flags(group) -> None:
  group.add_argument("--window", type=float, help="index moments: windows of this many "
                     "seconds (default: one row per whole video)")
  group.add_argument("--stride", type=float, help="--window: seconds between window starts "
                     "(default half the window)")
  group.add_argument("--window_fps", type=float, help="--window: frames per second "
                     f"sampled from (default {windows_lib.DEFAULT_FPS:g})")


def folder_service(args) -> tuple:
  """(SearchService, background thread that indexes, stop event) for --video_dir: the
  model loaded once, the index's rows (if any) served at once."""
  index_dir = args.index or os.path.join(args.video_dir, ".ps_jax_index")
  short_side = args.short_side or None
  existing = folder.open_existing(index_dir, folder.folder_info(
      args.video_dir, args.frames_per_video, short_side, args.window, args.stride,
      args.window_fps), overwrite=False)
  kwargs = folder.model_load_kwargs(args.model, args.num_prompts, args.clip_config,
                                    args.model_dtype)
  imodel = folder.load_model(existing, args.model, kwargs)
  folder.check_model(index_dir, existing, imodel)
  recorded = existing.meta.get("metadata", {}) if existing is not None else {}
  _, _, max_len, tokenizer = build.resolve_settings(
      imodel, recorded, num_frames=args.num_frames, image_size=args.image_size,
      max_len=args.max_len, tokenizer=args.tokenizer)
  encoder = TextEncoder(imodel.model, imodel.params, load_tokenizer(tokenizer), max_len,
                        batch_size=args.max_batch)
  device = jax.devices()[0]
  info = {"index": os.path.abspath(index_dir), "videos": 0, "dim": encoder.dim,
          "fingerprint": imodel.fingerprint, "model": imodel.path, "device": device.platform,
          "device_kind": device.device_kind, "num_devices": jax.device_count(),
          "thumbnails": 0, "source_files": 0}
  limits = service_lib.Limits(max_k=args.max_k,
                              max_queries=min(service_lib.Limits.max_queries, args.max_batch))
  service = service_lib.SearchService(None, store.media_lib.Media(0), info,
                                      max_batch=args.max_batch, limits=limits,
                                      encoder=encoder)
  service.warm_up()
  if existing is not None and len(existing):
    service.reload(index_dir)
  progress = progress_lib.Progress()
  service.progress = progress.snapshot
  stop = threading.Event()

  def sync():
    folder.sync_video_dir(
        index_dir, args.video_dir, imodel, frames_per_video=args.frames_per_video,
        short_side=short_side, num_frames=args.num_frames, image_size=args.image_size,
        max_len=max_len, tokenizer=tokenizer, commit_every=args.commit_every,
        commit_seconds=args.commit_seconds, batch_size=args.batch_size,
        num_workers=args.num_workers, progress_bar=True, progress=progress,
        on_commit=lambda: service.reload(index_dir), window=args.window,
        stride=args.stride, window_fps=args.window_fps)

  def failed(e: Exception) -> None:
    progress.update(state="error", error=str(e))
    _LOG.error("indexing %s stopped: %s", args.video_dir, e)

  def run():
    try:
      if args.watch:
        folder.watch_video_dir(sync, args.video_dir, args.watch_seconds, stop, failed)
      else:
        sync()
    except Exception as e:  # pylint: disable=broad-except  # shown on the page, not a crash
      failed(e)

  return service, threading.Thread(target=run, name="ps_jax-index", daemon=True), stop


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Serves until interrupted; returns 2 for bad flags or an index/model that cannot load."""
  parser = _parser()
  args = parser.parse_args(argv)
  if not 1 <= args.port <= 65535:
    parser.error(f"--port must be in [1, 65535], got {args.port}")
  if args.max_batch < 1 or args.max_k < 1:
    parser.error("--max_batch and --max_k must be >= 1")
  if args.index is None and args.video_dir is None:
    parser.error("give --index, or --video_dir (and --model) to index a folder as it serves")
  if args.watch and args.video_dir is None:
    parser.error("--watch is for --video_dir")
  limits = service_lib.Limits(max_k=args.max_k,
                              max_queries=min(service_lib.Limits.max_queries, args.max_batch))
  indexer = stop = None
  try:
    if args.video_dir is not None:
      if not os.path.isdir(args.video_dir):
        raise IndexBuildError(f"--video_dir {args.video_dir!r} is not a directory")
      service, indexer, stop = folder_service(args)
    else:
      service = service_lib.SearchService.from_index(
          args.index, model=args.model, tokenizer=args.tokenizer, max_batch=args.max_batch,
          limits=limits)
  except (store.IndexFormatError, store.FingerprintMismatchError, QueryEncoderError,
          ModelLoadError, IndexBuildError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  info = service.health()
  if args.host not in ("127.0.0.1", "localhost", "::1"):
    reporting.say(f"WARNING: serving on {args.host}: anyone who reaches this port can "
                  "search and watch the indexed videos (no authentication)")
  reporting.say(f"serving {info['videos']} videos ({info['thumbnails']} thumbnails, "
                f"{info['source_files']} source files) on {info['device']} at "
                f"http://{args.host}:{args.port}/")
  if indexer is not None:
    reporting.say(f"indexing {args.video_dir} into {service.info['index']} in the background"
                  + (" (watching for new files)" if args.watch else ""))
    indexer.start()
  uvicorn.run(create_app(service), host=args.host, port=args.port,
              log_level=args.log_level, access_log=False)
  if stop is not None:
    stop.set()
  service.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
