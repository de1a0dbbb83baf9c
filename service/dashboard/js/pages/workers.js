// Workers: the live ones, with their heartbeats and the jobs they run.
import { get } from "../api.js";
import { h, swap, table } from "../dom.js";
import { ago, duration, shortId } from "../format.js";
import { watch } from "../live.js";

export const title = "Workers";

export function render(main) {
  const body = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  main.append(
    h("h1", { tabindex: "-1" }, "Workers"),
    h("p", { class: "lead" }, "Workers that sent a heartbeat recently, and the jobs each one is running."),
    body);

  async function refresh() {
    const { items } = await get("/workers");
    body.removeAttribute("aria-busy");
    swap(body, items.length ? workerTable(items) : h("p", {}, "No worker is running. Start one with ", h("code", {}, "jobq worker"), "."));
  }

  // Heartbeats are not job events: refresh them calmly even while the event stream is live.
  return watch({ stream: "/api/v1/events", refresh, pollMs: 5000, livePollMs: 5000 }).stop;
}

function workerTable(items) {
  return table("Live workers", [
    { label: "Name", cell: (w) => w.name },
    { label: "Host", cell: (w) => w.host },
    { label: "PID", class: "num", cell: (w) => String(w.pid) },
    { label: "Queues", cell: (w) => (w.queues.length ? w.queues.join(", ") : "all") },
    { label: "Concurrency", class: "num", cell: (w) => String(w.concurrency) },
    { label: "Running", cell: (w) => (w.running_jobs.length
      ? h("ul", { class: "inline" }, w.running_jobs.map((id) => h("li", {}, h("a", { href: `#/jobs/${id}`, class: "mono", title: id }, shortId(id)))))
      : "idle") },
    { label: "Heartbeat", cell: (w) => `${duration(w.heartbeat_age_seconds)} ago` },
    { label: "Started", cell: (w) => ago(w.started_at) },
  ], items, (w) => String(w.id));
}
