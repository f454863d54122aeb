// Results page of `python -m ps_jax.serve`: no framework, no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search"), input = $("q"), kSelect = $("k");
const statusLine = $("status"), grid = $("results"), info = $("info");
const dialog = $("player"), video = $("video"), canvas = $("frames");
let requestNumber = 0, inFlight = null, animation = null;

function setState(state, message) {
  document.body.dataset.state = state;  // idle | loading | done | empty | error
  statusLine.className = state === "error" ? "error" : state === "loading" ? "loading" : "";
  statusLine.textContent = message;
}

function paramsFromUrl() {
  const params = new URLSearchParams(window.location.search);
  return { q: (params.get("q") || "").trim(), k: params.get("k") || kSelect.value };
}

function clock(seconds) {
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function card(result, rank) {
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.tabIndex = 0;
  figure.dataset.id = result.id;
  const img = document.createElement("img");
  img.alt = `frames of ${result.id}`;
  img.src = result.thumbnail || "/static/placeholder.svg";
  img.loading = "lazy";
  img.onerror = () => { img.onerror = null; img.src = "/static/placeholder.svg"; };
  const caption = document.createElement("figcaption");
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = `${rank}. ${result.id}`;
  id.title = result.id;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  caption.append(id, score);
  if (result.start !== null && result.start !== undefined) {
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${clock(result.start)}\u2013${clock(result.end)}`;
    figure.dataset.start = String(result.start);
    caption.insertBefore(when, score);
  }
  figure.append(img, caption);
  const open = () => openPlayer(result);
  figure.addEventListener("click", open);
  figure.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  return figure;
}

async function search(q, k) {
  const mine = ++requestNumber;
  if (inFlight) inFlight.abort();
  grid.replaceChildren();
  if (!q) { setState("idle", "Type a description of a video and press Enter."); return; }
  setState("loading", "Searching\u2026");
  inFlight = new AbortController();
  try {
    const response = await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`,
                                 { signal: inFlight.signal });
    const body = await response.json().catch(() => ({}));
    if (mine !== requestNumber) return;
    if (!response.ok) { setState("error", `Error ${response.status}: ${body.error || response.statusText}`); return; }
    if (!body.results.length) { setState("empty", "No videos found."); return; }
    grid.replaceChildren(...body.results.map((r, i) => card(r, i + 1)));
    setState("done", `${body.results.length} videos for \u201c${body.query}\u201d, best first. Click one to play it.`);
  } catch (err) {
    if (err.name === "AbortError" || mine !== requestNumber) return;
    setState("error", `The search service cannot be reached (${err.message}).`);
  }
}

let moment = null;  // {start, end} of the result playing, or null for a whole video
video.addEventListener("loadedmetadata", () => { if (moment) video.currentTime = moment.start; });
video.addEventListener("timeupdate", () => {
  if (moment && video.currentTime >= moment.end) { video.pause(); video.currentTime = moment.start; }
});

function stopPlayer() {
  moment = null;
  if (animation) { clearInterval(animation); animation = null; }
  video.pause();
  video.removeAttribute("src");
  video.load();
}

function openPlayer(result) {
  stopPlayer();
  const isMoment = result.start !== null && result.start !== undefined;
  $("player-title").textContent = isMoment ?
    `${result.video_id}  ${clock(result.start)}\u2013${clock(result.end)}` : result.id;
  const note = $("player-note");
  if (result.video) {
    canvas.hidden = true;
    video.hidden = false;
    note.textContent = isMoment ? "Plays the moment found, from its start to its end." : "";
    moment = isMoment ? { start: result.start, end: result.end } : null;
    video.loop = !isMoment;
    video.src = isMoment ? `${result.video}#t=${result.start},${result.end}` : result.video;
    video.play().catch(() => { note.textContent = "Press play to start the video."; });
  } else {
    video.hidden = true;
    canvas.hidden = false;
    note.textContent = result.thumbnail ? "No source file was indexed: the stored frames, in a loop."
                                        : "No source file and no thumbnail were indexed for this video.";
    if (result.thumbnail) animateStrip(result.thumbnail);
  }
  if (!dialog.open) dialog.showModal();
}

function animateStrip(url) {
  const strip = new Image();
  strip.onload = () => {
    const size = strip.naturalHeight, count = Math.max(1, Math.round(strip.naturalWidth / size));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    let frame = 0;
    const draw = () => {
      ctx.drawImage(strip, frame * size, 0, size, size, 0, 0, canvas.width, canvas.height);
      canvas.dataset.frame = String(frame);
      frame = (frame + 1) % count;
    };
    draw();
    animation = setInterval(draw, 350);
  };
  strip.src = url;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function showIndexing(p) {
  const panel = $("indexing");
  panel.hidden = false;
  panel.dataset.state = p.state;
  panel.className = p.state === "error" ? "error" : "";
  const bar = $("indexing-bar");
  bar.max = Math.max(p.total, 1);
  bar.value = p.state === "done" ? bar.max : p.done;
  let line;
  if (p.state === "error") line = `Indexing stopped: ${p.error}`;
  else if (p.state === "indexing") {
    const rate = p.videos_per_s ? `, ${p.videos_per_s.toFixed(1)} videos/s` : "";
    const left = p.seconds_left !== null ? `, about ${duration(p.seconds_left)} left` : "";
    line = `Indexing your videos: ${p.done} of ${p.total} done${rate}${left}. ` +
           `Searching the ${p.rows} indexed so far.`;
  } else if (p.state === "done") line = `All ${p.files} video files looked at: ${p.rows} indexed.`;
  else line = "Looking at the video folder\u2026";
  $("indexing-line").textContent = line;
  const problems = $("problems");
  problems.hidden = !p.problems.length;
  $("problems-summary").textContent = `${p.problems.length} file(s) could not be indexed`;
  $("problem-list").replaceChildren(...p.problems.map((x) => {
    const li = document.createElement("li");
    li.textContent = `${x.id}: ${x.reason} (${x.detail})`;
    return li;
  }));
}

async function showInfo() {
  let again = null;
  try {
    const health = await (await fetch("/healthz")).json();
    const model = health.fingerprint ? ` \u00b7 model ${health.fingerprint.slice(7, 19)}` : "";
    info.textContent = `${health.videos} videos indexed \u00b7 ${health.thumbnails} thumbnails` +
                       `${model} on ${health.device}`;
    if (health.indexing) {
      showIndexing(health.indexing);
      again = ["starting", "listing", "indexing"].includes(health.indexing.state) ? 1500 : 10000;
    }
  } catch (err) { info.textContent = ""; again = 5000; }
  if (again) setTimeout(showInfo, again);
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = input.value.trim(), k = kSelect.value;
  const url = q ? `?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}` : window.location.pathname;
  window.history.pushState({}, "", url);
  search(q, k);
});
window.addEventListener("popstate", () => { const p = paramsFromUrl(); input.value = p.q; search(p.q, p.k); });
$("close").addEventListener("click", () => dialog.close());
dialog.addEventListener("close", stopPlayer);

(function start() {
  const p = paramsFromUrl();
  input.value = p.q;
  if ([...kSelect.options].some((o) => o.value === p.k)) kSelect.value = p.k;
  showInfo();
  search(p.q, p.k);
})();
