// The live page: polls the dashboards API every few seconds and shows the tracked subject's
// figures in its own time zone. ?subject=<id>&from=<local>&to=<local> choose what; default: the
// first subject, the API's default series range (the last hours up to its newest minute), never
// all time: every request names its range, so a poller's cost does not grow with history.
"use strict";

const REFRESH_MS = 5000;
const params = new URLSearchParams(location.search);
const fmt = (n) => Number(n).toLocaleString("en-US");
let subject = null;
let charts = null;

async function getJson(path) {
  const response = await fetch(path, { cache: "no-cache" });
  const body = await response.json();
  if (!response.ok) throw new Error(`${path}: ${body.error || response.status}`);
  return body;
}

function set(id, text, value) {
  const el = document.getElementById(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

function rangeQuery() {
  const from = params.get("from"), to = params.get("to");
  return from && to ? `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}` : "";
}

function localTime(iso, withDate) {
  const options = { timeZone: subject.time_zone, hour: "2-digit", minute: "2-digit", hour12: false };
  if (withDate) Object.assign(options, { year: "numeric", month: "short", day: "numeric" });
  return new Intl.DateTimeFormat("en-US", options).format(new Date(iso));
}

function makeCharts() {
  const common = { animation: false, responsive: true, plugins: { legend: { position: "bottom" } },
                   scales: { x: { ticks: { maxTicksLimit: 12 } }, y: { beginAtZero: true } } };
  return {
    views: new Chart(document.getElementById("views_chart"), { type: "line", options: common, data: {
      labels: [], datasets: [
        { label: "combined views", data: [], borderColor: "#0969da", pointRadius: 0, borderWidth: 1.5 },
        { label: "views of the Space's post", data: [], borderColor: "#8250df", pointRadius: 0, borderWidth: 1.5 }] } }),
    listeners: new Chart(document.getElementById("listeners_chart"), { type: "line", options: common, data: {
      labels: [], datasets: [
        { label: "listeners", data: [], borderColor: "#1a7f37", pointRadius: 0, borderWidth: 1.5, fill: false }] } }),
  };
}

async function refresh() {
  // Without a range in the address the series' default range (bounded by the API) is the range
  // of every other request too: asked first, then the rest for exactly its from and to.
  let q = rangeQuery();
  const series = await getJson(`/api/subjects/${subject.id}/series?grain=minute${q ? "&" + q : ""}`);
  if (!q) q = `from=${encodeURIComponent(series.from)}&to=${encodeURIComponent(series.to)}`;
  const [figures, listeners, health] = await Promise.all([
    getJson(`/api/subjects/${subject.id}/figures?${q}`),
    subject.space_id ? getJson(`/api/subjects/${subject.id}/listeners?${q}`) : Promise.resolve(null),
    getJson("/api/health"),
  ]);
  set("subject_views", fmt(figures.subject_views), figures.subject_views);
  set("posts_about", fmt(figures.posts_about), figures.posts_about);
  set("views_of_posts_about", fmt(figures.views_of_posts_about), figures.views_of_posts_about);
  set("combined_views", fmt(figures.combined_views), figures.combined_views);
  const u = figures.unique_viewers;
  set("unique_viewers", fmt(u.estimate), u.estimate);
  set("unique_viewers_bounds", `${fmt(u.lower)} – ${fmt(u.upper)} (95 %)`);
  if (listeners) {
    set("listeners_now", fmt(listeners.now), listeners.now);
    set("listeners_peak", fmt(figures.listeners.peak), figures.listeners.peak);
    set("listeners_peak_minute", figures.listeners.peak_minute ? `at ${localTime(figures.listeners.peak_minute)}` : "");
  }
  const rows = series.rows.filter((r) => r.combined_views > 0 || r.listeners > 0);
  charts.views.data.labels = rows.map((r) => localTime(r.window_start));
  charts.views.data.datasets[0].data = rows.map((r) => r.combined_views);
  charts.views.data.datasets[1].data = rows.map((r) => r.subject_views);
  charts.views.update();
  if (listeners) {
    const curve = listeners.minutes.filter((r) => r.listeners > 0);
    charts.listeners.data.labels = curve.map((r) => localTime(r.window_start));
    charts.listeners.data.datasets[0].data = curve.map((r) => r.listeners);
    charts.listeners.update();
  }
  const mine = health.subjects.find((s) => s.subject_id === subject.id);
  const fresh = document.getElementById("freshness");
  if (mine && mine.data_until) {
    const behind = mine.behind_real_time_s;
    const lag = behind < 120 ? `${Math.round(behind)} s` : behind < 7200 ? `${Math.round(behind / 60)} min`
      : `${Math.round(behind / 86400)} days`;
    fresh.textContent = `data until ${localTime(mine.data_until, true)}, ${lag} behind real time`;
    fresh.dataset.behind = String(behind);
    fresh.classList.toggle("stale", behind > 60);
  } else {
    fresh.textContent = "no data rolled up yet";
  }
  set("range", figures.from ? `${localTime(figures.from, true)} to ${localTime(figures.to, true)}` : "all the data");
  document.getElementById("status").textContent = "";
  document.body.dataset.loaded = String(Date.now());
}

async function start() {
  const subjects = await getJson("/api/subjects");
  subject = subjects.find((s) => s.id === params.get("subject")) || subjects[0];
  set("subject_name", subject.name);
  set("zone", subject.time_zone);
  charts = makeCharts();
  const tick = () => refresh().catch((e) => { document.getElementById("status").textContent = String(e.message); });
  await tick();
  setInterval(tick, REFRESH_MS);
}

start().catch((e) => { document.getElementById("status").textContent = String(e.message); });
