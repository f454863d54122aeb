"""The search service and its page: API answers, bad input, files by id only, batching,
old indexes, and the page driven in a real headless Chromium.

One tiny model is trained once for the module (moving_shapes/tiny); two real indexes are
built with `ps_jax.index_videos`: the rendered .mp4 files (thumbnails + playable
sources) and the prepared test split (thumbnails from the stored frames, no files).
"""

import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import concurrent.futures

import numpy as np
import pytest
import uvicorn
from PIL import Image

from ps_jax import index_videos, serve, train
from ps_jax.data import builders, moving_shapes, prepare
from ps_jax.retrieval import service as service_lib
from ps_jax.retrieval.query import TextSearcher
from train_fixtures import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 100
CHROMIUM = os.environ.get("PS_JAX_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
  """(workdir, mp4 index, split index, test captions, video dir)."""
  root = str(tmp_path_factory.mktemp("shapes"))
  prepare.prepare("moving_shapes", out_dir=root, shapes_size="tiny", progress=False)
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_config(**{
      "data.dir": root, "num_train_steps": STEPS, "eval_every_steps": STEPS,
      "checkpoint.every_steps": STEPS, "log_every_steps": STEPS, "optim.lr_clip": 3e-3,
      "optim.lr_new": 3e-3}), workdir)
  mp4 = str(tmp_path_factory.mktemp("mp4"))
  moving_shapes.write_mp4_dataset(mp4, moving_shapes.SIZES["tiny"])
  out = str(tmp_path_factory.mktemp("indexes"))
  files_index, split_index = os.path.join(out, "files"), os.path.join(out, "split")
  assert index_videos.main(["--model", workdir, "--video_dir", os.path.join(mp4, "videos"),
                            "--out", files_index, "--no_progress"]) == 0
  assert index_videos.main(["--model", workdir, "--dataset_dir", root, "--dataset",
                            "moving_shapes/tiny", "--split", "test", "--out", split_index,
                            "--no_progress"]) == 0
  captions = [c for caps in builders.load_split(root, "moving_shapes/tiny", "test").captions
              for c in caps]
  return types.SimpleNamespace(workdir=workdir, files=files_index, split=split_index,
                               captions=captions, videos=os.path.join(mp4, "videos"))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """`serve.create_app(service)` under uvicorn in a thread, on a free loopback port."""

  def __init__(self, service):
    self.service, self.port = service, _free_port()
    self.server = uvicorn.Server(uvicorn.Config(serve.create_app(service), host="127.0.0.1",
                                                port=self.port, log_level="error"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.time() + 30
    while not self.server.started:
      assert time.time() < deadline, "server did not start"
      time.sleep(0.05)

  def get(self, path, headers=None):
    """(status, headers, body bytes) of GET `path`, sent as is (no client normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out

  def get_json(self, path):
    status, _, body = self.get(path)
    return status, json.loads(body)

  def post(self, path, body: bytes, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    out = response.status, json.loads(response.read())
    conn.close()
    return out

  def stop(self):
    self.server.should_exit = True
    self.thread.join(timeout=30)
    self.service.close()


@pytest.fixture(scope="module")
def files_server(indexes):
  server = Server(service_lib.SearchService.from_index(indexes.files, max_batch=8,
                                                       limits=service_lib.Limits(
                                                           max_k=20, max_queries=8)))
  yield server
  server.stop()


def _q(text, k):
  return f"/api/search?q={urllib.parse.quote(text)}&k={k}"


def _assert_same(a, b, atol=1e-5):
  """Two result lists agree: scores by rank within atol (batches of another padded size
  round differently), ids equal except where near-tied scores may swap."""
  sa, sb = [r["score"] for r in a], [r["score"] for r in b]
  np.testing.assert_allclose(sa, sb, atol=atol)
  for i, (x, y) in enumerate(zip(a, b)):
    if x["id"] != y["id"]:
      tied = [r["id"] for r in a if abs(r["score"] - x["score"]) <= 2 * atol]
      assert y["id"] in tied, (i, a, b)
    assert (x["thumbnail"] is None) == (y["thumbnail"] is None)


def _snapshot(directory):
  return {name: (os.path.getsize(os.path.join(directory, name)),
                 os.path.getmtime(os.path.join(directory, name)))
          for name in sorted(os.listdir(directory))}


def test_search_returns_the_searchers_ranking_with_thumbnails_and_playable_files(
    indexes, files_server):
  reference = TextSearcher.from_index(indexes.files)
  num_videos = len(reference.ids)
  for caption in indexes.captions[:3]:
    status, body = files_server.get_json(_q(caption, 5))
    assert status == 200 and body["query"] == caption and body["k"] == 5
    expected = reference.search([caption], 5)[0]
    assert [r["id"] for r in body["results"]] == [i for i, _ in expected]
    np.testing.assert_allclose([r["score"] for r in body["results"]],
                               [s for _, s in expected], atol=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(body["results"], body["results"][1:]))
  top = body["results"][0]
  assert top["thumbnail"] == f"/api/thumbnail/{top['id']}"
  status, headers, jpeg = files_server.get(top["thumbnail"])
  assert status == 200 and headers["content-type"] == "image/jpeg"
  image = Image.open(io.BytesIO(jpeg))
  assert image.size == (4 * 96, 96)            # 4 frames of the 8 the model embedded
  assert top["video"] == f"/api/video/{top['id']}"
  with open(os.path.join(indexes.videos, top["id"] + ".mp4"), "rb") as f:
    source = f.read()
  status, headers, body_bytes = files_server.get(top["video"])
  assert status == 200 and body_bytes == source and headers["accept-ranges"] == "bytes"
  status, headers, part = files_server.get(top["video"], {"Range": "bytes=100-199"})
  assert status == 206 and part == source[100:200]
  assert headers["content-range"] == f"bytes 100-199/{len(source)}"
  status, health = files_server.get_json("/healthz")
  assert status == 200 and health["videos"] == num_videos == health["thumbnails"]
  assert health["source_files"] == num_videos and health["device"] == "cpu"
  assert health["model"] == indexes.workdir and health["fingerprint"].startswith("sha256:")
  status, schema = files_server.get_json("/openapi.json")
  assert status == 200 and {"/api/search", "/healthz"} <= set(schema["paths"])
  assert set(schema["paths"]["/api/search"]) == {"get", "post"}


def test_post_answers_several_queries_like_get(indexes, files_server):
  queries = indexes.captions[:3]
  status, body = files_server.post("/api/search",
                                   json.dumps({"queries": queries, "k": 4}).encode())
  assert status == 200 and [r["query"] for r in body["results"]] == queries
  for entry in body["results"]:
    _assert_same(entry["results"], files_server.get_json(_q(entry["query"], 4))[1]["results"])


BAD_GETS = [
    ("/api/search?q=&k=3", 400, "the query is empty"),
    ("/api/search?q=%20%20&k=3", 400, "the query is empty"),
    ("/api/search?k=3", 422, "query.q"),
    ("/api/search?q=" + "a" * 501, 400, "at most 500"),
    ("/api/search?q=red&k=0", 400, "k must be an integer in [1, 20]"),
    ("/api/search?q=red&k=21", 400, "k must be an integer in [1, 20]"),
    ("/api/search?q=red&k=abc", 422, "query.k"),
    ("/api/search?q=%FF%FEred&k=3", 400, "not valid UTF-8"),
    ("/api/thumbnail/no_such_video", 404, "no thumbnail"),
    ("/api/video/no_such_video", 404, "no source video"),
    ("/api/thumbnail/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),
    ("/api/video/%2Fetc%2Fpasswd", 404, "Not Found"),
    ("/api/video/../../etc/passwd", 404, "Not Found"),
    ("/api/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404, "Not Found"),
    ("/static/../serve.py", 404, "Not Found"),
    ("/static/index.html", 404, "no such file"),
    ("/static/%2e%2e%2fserve.py", 404, "Not Found"),
    ("/etc/passwd", 404, "Not Found"),
]


@pytest.mark.parametrize("path,status,message", BAD_GETS)
def test_bad_requests_get_clear_json_errors(indexes, files_server, path, status, message):
  before = _snapshot(indexes.files)
  got, headers, body = files_server.get(path)
  assert got == status and headers["content-type"] == "application/json"
  assert message in json.loads(body)["error"]
  assert files_server.get_json(_q(indexes.captions[0], 2))[0] == 200   # still serving
  assert _snapshot(indexes.files) == before                            # read-only


@pytest.mark.parametrize("body,status,message", [
    (b'{"queries": ["red"', 422, "JSON decode error"),
    (b'{"queries": ["\xff\xfe"], "k": 2}', 400, "error parsing the body"),
    (b'{"queries": [], "k": 2}', 400, "no query given"),
    (json.dumps({"queries": ["red"] * 9, "k": 2}).encode(), 400, "at most 8"),
    (b'{"queries": ["red", 3], "k": 2}', 422, "queries.1"),
    (b'{"queries": ["red", "  "], "k": 2}', 400, "query 1 is empty"),
    (b'{"queries": ["red"], "k": 1000}', 400, "k must be"),
])
def test_bad_post_bodies(files_server, body, status, message):
  got, answer = files_server.post("/api/search", body)
  assert got == status and message in answer["error"]


def test_concurrent_queries_share_device_calls(indexes, files_server):
  captions = indexes.captions[:8]
  expected = {c: files_server.get_json(_q(c, 3))[1]["results"] for c in captions}
  before = files_server.get_json("/healthz")[1]

  def client(i):
    return [(c, files_server.get_json(_q(c, 3))[1]["results"])
            for c in captions[i:] + captions[:i]]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = [a for part in pool.map(client, range(8)) for a in part]
  for c, results in answers:
    _assert_same(results, expected[c])
  after = files_server.get_json("/healthz")[1]
  requests = after["requests"] - before["requests"]
  calls = after["device_calls"] - before["device_calls"]
  assert requests == 64 and calls < requests, (requests, calls)


def test_split_index_serves_thumbnails_without_files_and_old_indexes_serve(indexes, tmp_path):
  server = Server(service_lib.SearchService.from_index(indexes.split, max_batch=4,
                                                       limits=service_lib.Limits(
                                                           max_queries=4)))
  try:
    _, body = server.get_json(_q(indexes.captions[0], 3))
    assert all(r["video"] is None and r["thumbnail"] for r in body["results"])
    assert server.get(body["results"][0]["thumbnail"])[0] == 200
    assert server.get(f"/api/video/{body['results'][0]['id']}")[0] == 404
    _, every = server.get_json(_q(indexes.captions[0], 50))   # k above the index size
    assert len(every["results"]) == len(server.service.searcher.ids) == 8
  finally:
    server.stop()
  old = str(tmp_path / "old")
  shutil.copytree(indexes.split, old)
  for name in ("thumbnails.bin", "thumbnails.npy", "sources.json"):
    os.remove(os.path.join(old, name))           # as written before thumbnails existed
  server = Server(service_lib.SearchService.from_index(old, max_batch=4,
                                                       limits=service_lib.Limits(
                                                           max_queries=4)))
  try:
    _, again = server.get_json(_q(indexes.captions[0], 3))
    assert [r["id"] for r in again["results"]] == [r["id"] for r in body["results"]]
    assert all(r["thumbnail"] is None and r["video"] is None for r in again["results"])
    assert server.get_json("/healthz")[1]["thumbnails"] == 0
  finally:
    server.stop()


def test_cli_refuses_bad_flags_and_indexes(tmp_path, capsys):
  assert serve.main(["--index", str(tmp_path / "missing")]) == 2
  assert "does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    serve.main(["--index", str(tmp_path), "--port", "70000"])
  assert "--port must be in [1, 65535]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- browser

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--autoplay-policy=no-user-gesture-required"]


def _browser_or_skip():
  """Playwright's sync API and the OS's Chromium; skip locally (CI must have both)."""
  missing = []
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  except ImportError:
    missing.append("the playwright package")
    sync_playwright = None
  if not os.path.exists(CHROMIUM):
    missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set "
                   "PS_JAX_CHROMIUM)")
  if missing:
    if os.environ.get("CI"):
      pytest.fail(f"CI must run the browser test; missing {', '.join(missing)}")
    pytest.skip(f"no browser to drive: missing {', '.join(missing)}")
  return sync_playwright


def _start_cli_server(index):
  """`python -m ps_jax.serve` as a user runs it (no --host); returns (process, base URL)."""
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-m", "ps_jax.serve", "--index", index,
                           "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  base = f"http://127.0.0.1:{port}"
  deadline = time.time() + 120
  while True:
    try:
      with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
        if r.status == 200:
          return proc, base
    except (urllib.error.URLError, ConnectionError):
      pass
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise AssertionError(f"ps_jax.serve did not start:\n{proc.stdout.read()}")
    time.sleep(0.25)


def _cli_server(index):
  proc, base = _start_cli_server(index)
  yield types.SimpleNamespace(proc=proc, url=base, port=int(base.rsplit(":", 1)[1]))
  proc.terminate()
  proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cli_files(indexes):
  """`python -m ps_jax.serve` with its default flags over the .mp4 index."""
  yield from _cli_server(indexes.files)


@pytest.fixture(scope="module")
def cli_split(indexes):
  """`python -m ps_jax.serve` with its default flags over the prepared split's index."""
  yield from _cli_server(indexes.split)


def _http(base, path, body=None):
  """(status, JSON answer) of GET `path`, or of POST `body` (a JSON value) to it."""
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(base + path, data=data,
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=60) as r:
      return r.status, json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


def test_cli_limits_are_k_100_and_32_queries_per_post(indexes, cli_files):
  """The documented bounds, as `python -m ps_jax.serve` applies them by default: at the
  limit accepted, one above refused with a message that gives the limit."""
  args = serve._parser().parse_args(["--index", indexes.files])
  assert (args.max_k, args.max_batch) == (100, 32)
  assert (service_lib.Limits().max_k, service_lib.Limits().max_queries) == (100, 32)
  base, query = cli_files.url, indexes.captions[0]
  health = _http(base, "/healthz")[1]
  assert (health["max_k"], health["max_batch"], health["videos"]) == (100, 32, 28)
  status, body = _http(base, _q(query, 100))
  assert status == 200 and body["k"] == 100
  assert len(body["results"]) == 28 == len({r["id"] for r in body["results"]})  # all of them
  assert _http(base, _q(query, 101)) == (
      400, {"error": "k must be an integer in [1, 100], got 101"})
  queries = [indexes.captions[i % len(indexes.captions)] + f" {i}" for i in range(33)]
  status, body = _http(base, "/api/search", {"queries": queries[:32], "k": 100})
  assert status == 200 and [r["query"] for r in body["results"]] == queries[:32]
  assert all(len(r["results"]) == 28 for r in body["results"])
  one = _http(base, _q(queries[31], 100))[1]["results"]
  _assert_same(body["results"][31]["results"], one)
  assert _http(base, "/api/search", {"queries": queries, "k": 100}) == (
      400, {"error": "33 queries in one request; at most 32"})
  assert _http(base, "/api/search", {"queries": queries[:32], "k": 101}) == (
      400, {"error": "k must be an integer in [1, 100], got 101"})


def _listening(port):
  """Addresses of the TCP sockets listening on `port`, from /proc/net/tcp (IPv4, as
  "a.b.c.d") and /proc/net/tcp6 (as the kernel's hex)."""
  found = []
  for name in ("tcp", "tcp6"):
    with open(f"/proc/net/{name}", encoding="ascii") as f:
      for line in f.readlines()[1:]:
        (address, hex_port), state = line.split()[1].split(":"), line.split()[3]
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
          found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if name == "tcp"
                       else address)
  return found


def test_cli_binds_loopback_by_default(indexes, cli_files):
  """The parsed default, and the socket `python -m ps_jax.serve` opens without --host:
  one, on 127.0.0.1 (none on another IPv4 or any IPv6 address)."""
  assert serve._parser().parse_args(["--index", indexes.files]).host == "127.0.0.1"
  assert _listening(cli_files.port) == ["127.0.0.1"]


def test_page_in_headless_chromium(indexes, cli_files, tmp_path, request):
  sync_playwright = _browser_or_skip()
  query = indexes.captions[0]
  files_url = cli_files.url
  split_url = request.getfixturevalue("cli_split").url  # started only with a browser
  with urllib.request.urlopen(f"{files_url}{_q(query, 16)}") as r:
    api_ids = [x["id"] for x in json.load(r)["results"]]
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(files_url + "/")
    page.wait_for_selector("body[data-state=idle]")
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector("body[data-state=done]", timeout=30000)
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["q"] == [query]
    ids = page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.id)")
    assert ids == api_ids                            # the API's ranking, in order
    page.wait_for_function(
        "[...document.querySelectorAll('.result img')].every(i => i.complete)")
    widths = page.eval_on_selector_all(".result img", "els => els.map(e => e.naturalWidth)")
    srcs = page.eval_on_selector_all(".result img", "els => els.map(e => e.src)")
    assert len(widths) == 16 and all(w == 4 * 96 for w in widths), widths
    assert all("/api/thumbnail/" in s for s in srcs)
    screenshot = os.environ.get("PS_JAX_SCREENSHOT") or str(tmp_path / "search_page.jpg")
    page.screenshot(path=screenshot, type="jpeg", quality=80)
    assert Image.open(screenshot).size == (1280, 900)
    page.click(".result >> nth=0")
    page.wait_for_function("document.getElementById('video').currentTime > 0.3",
                           timeout=20000)
    assert page.eval_on_selector("#video", "v => v.src").endswith(f"/api/video/{ids[0]}")
    page.keyboard.press("Escape")
    # A linked result page: the query comes from the URL; errors are shown.
    page.goto(f"{files_url}/?q={urllib.parse.quote(query)}&k=8")
    page.wait_for_selector("body[data-state=done]")
    assert page.eval_on_selector_all(".result", "els => els.length") == 8
    page.goto(f"{files_url}/?q={'x' * 501}")
    page.wait_for_selector("body[data-state=error]")
    assert "at most 500" in page.inner_text("#status")
    # An index of stored frames: the click animates the thumbnail strip.
    page.goto(f"{split_url}/?q={urllib.parse.quote(query)}")
    page.wait_for_selector("body[data-state=done]")
    page.click(".result >> nth=0")
    seen = set()
    deadline = time.time() + 10
    while len(seen) < 3 and time.time() < deadline:
      seen.add(page.eval_on_selector("#frames", "c => c.dataset.frame"))
      time.sleep(0.1)
    assert len(seen) >= 3, seen
    browser.close()


def test_page_loads_nothing_from_outside_the_server(indexes, cli_files):
  """Every request the page makes (documents, styles, scripts, fetches, images, media)
  while it loads, searches, shows 16 thumbnails and plays a clip goes to the server it
  came from; one made on purpose elsewhere shows that the record would catch it."""
  sync_playwright = _browser_or_skip()
  origin = cli_files.url
  query = indexes.captions[0]
  outside = "http://192.0.2.1/probe.js"  # TEST-NET-1: never routed; aborted here anyway
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    context = browser.new_context()
    requests, sockets = [], []
    context.on("request", lambda r: requests.append((r.resource_type, r.url)))
    context.route(lambda url: not url.startswith(origin + "/"), lambda route: route.abort())
    page = context.new_page()
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{origin}/")
    page.wait_for_selector("body[data-state=idle]")
    page.wait_for_function("document.getElementById('info').textContent.includes('28 videos')")
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector("body[data-state=done]", timeout=30000)
    page.wait_for_function(
        "[...document.querySelectorAll('.result img')].every(i => i.complete)")
    page.click(".result >> nth=0")
    page.wait_for_function("document.getElementById('video').currentTime > 0.3",
                           timeout=20000)
    loaded = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    page.evaluate(f"fetch({outside!r}).catch(() => null)")
    browser.close()
  assert requests[-1] == ("fetch", outside)  # the probe was recorded (and blocked)
  requests = requests[:-1]
  assert sockets == [] and requests
  assert [url for _, url in requests if not url.startswith(origin + "/")] == []
  assert all(url.startswith(origin + "/") for url in loaded), loaded
  paths = {}
  for kind, url in requests:
    paths.setdefault(kind, set()).add(urllib.parse.urlparse(url).path)
  assert set(paths) == {"document", "stylesheet", "script", "fetch", "image", "media"}, paths
  assert paths["document"] == {"/"} and paths["script"] == {"/static/app.js"}
  assert paths["stylesheet"] == {"/static/style.css"}
  assert paths["fetch"] == {"/healthz", "/api/search"}
  assert len(paths["media"]) == 1 and next(iter(paths["media"])).startswith("/api/video/")
  assert len(paths["image"]) == 16 and all(x.startswith("/api/thumbnail/")
                                           for x in paths["image"])


def test_bench_serve_runs_end_to_end(indexes, capsys):
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import bench_serve  # pylint: disable=import-outside-toplevel

  assert bench_serve.main(["--model", indexes.workdir, "--size", "2k", "--requests", "5",
                           "--clients", "2", "--port", str(_free_port())]) == 0
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| ")]
  assert rows[1].startswith("| 1 | 5 | ") and rows[2].startswith("| 2 | 10 | ")
  assert "2000 videos x 32 dims" in out and "CLI (`python -m ps_jax.search`" in rows[3]


def test_one_command_serves_a_folder_while_it_indexes(tmp_path):
  """`python -m ps_jax.serve --video_dir D --model M --watch`: the page is up before the
  index is, shows the build's progress and the results of what is indexed so far, then
  the whole folder, a file that cannot be read, and a file added while it serves."""
  sync_playwright = _browser_or_skip()
  from test_folder_index import FLAGS, write_folder_model  # pylint: disable=g-import-not-at-top
  model = write_folder_model(str(tmp_path / "model"))
  mp4 = str(tmp_path / "mp4")
  moving_shapes.write_mp4_dataset(mp4, moving_shapes.SIZES["tiny"])
  lib = str(tmp_path / "library")
  names = sorted(os.listdir(os.path.join(mp4, "videos")))
  for copy in "abc":  # 84 clips, in three folders
    os.makedirs(os.path.join(lib, copy))
    for name in names:
      shutil.copy(os.path.join(mp4, "videos", name), os.path.join(lib, copy, copy + name))
  with open(os.path.join(lib, "b", "broken.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "ps_jax.serve", "--video_dir", lib, "--model", model,
       *[f for f in FLAGS if f != "--no_progress"], "--commit_every", "4", "--watch",
       "--watch_seconds", "1", "--port", str(port)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 120
    while True:
      try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
          first = json.load(r)
          break
      except (urllib.error.URLError, ConnectionError):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    assert first["indexing"]["state"] in ("starting", "listing", "indexing")
    assert first["indexing"]["done"] < 85  # serving before the index is built
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
      page = browser.new_page(viewport={"width": 1280, "height": 900})
      page.goto(base + "/")
      page.wait_for_selector("#indexing[data-state=indexing]", timeout=60000)
      page.wait_for_function("document.getElementById('info').textContent.match(/^[1-9]/)",
                             timeout=60000)  # the first commit is searchable
      page.fill("#q", "a red circle moves left")
      page.press("#q", "Enter")
      page.wait_for_selector("body[data-state=done]", timeout=30000)
      line = page.inner_text("#indexing-line")
      still = page.get_attribute("#indexing", "data-state")
      cards = page.eval_on_selector_all(".result", "els => els.length")
      assert still == "indexing" and 0 < cards <= 16, (still, cards, line)
      assert re.search(r"Indexing your videos: \d+ of 85 done, [\d.]+ videos/s, about "
                       r"\d+ (s|min) left\. Searching the \d+ indexed so far\.", line), line
      page.wait_for_selector("#indexing[data-state=done]", timeout=180000)
      assert page.inner_text("#indexing-line") == "All 85 video files looked at: 84 indexed."
      assert page.inner_text("#problems-summary") == "1 file(s) could not be indexed"
      page.click("#problems-summary")
      assert page.inner_text("#problem-list").startswith("broken: unreadable")
      page.press("#q", "Enter")
      page.wait_for_selector("body[data-state=done]", timeout=30000)
      ids = page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.id)")
      assert len(ids) == 16 and all(i[0] in "abc" for i in ids)
      # --watch: a clip copied in while serving is indexed and found.
      shutil.copy(os.path.join(mp4, "videos", names[0]), os.path.join(lib, "late.mp4"))
      page.wait_for_function(
          "document.getElementById('indexing-line').textContent.includes('85 indexed')",
          timeout=60000)
      with urllib.request.urlopen(f"{base}{_q('a red circle moves left', 100)}") as r:
        found = [x["id"] for x in json.load(r)["results"]]
      assert len(found) == 85 and "late" in found
      browser.close()
    assert proc.poll() is None  # the bad file did not stop anything
  finally:
    proc.terminate()
    out = proc.communicate(timeout=30)[0]
  assert "indexing" in out and "into " + os.path.join(lib, ".ps_jax_index") in out
