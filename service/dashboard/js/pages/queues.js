// Queues: counts per status, oldest ages, pause and resume.
import { get, post } from "../api.js";
import { h, swap, table } from "../dom.js";
import { duration, STATUSES } from "../format.js";
import { watch } from "../live.js";
import { notify, notifyError } from "../notice.js";

export const title = "Queues";

export function render(main) {
  const body = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  main.append(
    h("h1", { tabindex: "-1" }, "Queues"),
    h("p", { class: "lead" },
      "Jobs per status in each queue. A paused queue keeps its jobs; no worker starts them until it is resumed."),
    body);

  async function refresh() {
    const { items } = await get("/queues");
    body.removeAttribute("aria-busy");
    swap(body, items.length ? queueTable(items, toggle)
      : h("p", {}, "No queues yet: a queue appears when a job is submitted to it."));
  }

  async function toggle(queue, button) {
    button.disabled = true;
    const action = queue.paused ? "resume" : "pause";
    try {
      await post(`/queues/${encodeURIComponent(queue.name)}/${action}`);
      notify(`Queue ${queue.name} ${queue.paused ? "resumed" : "paused"}.`);
    } catch (error) {
      notifyError(`Could not ${action} queue ${queue.name}`, error);
    }
    live.now();
  }

  const live = watch({ stream: "/api/v1/events", refresh, pollMs: 5000, livePollMs: 15000 });
  return live.stop;
}

function countLink(queue, status) {
  const n = queue.counts[status];
  if (!n) return "0";
  const params = new URLSearchParams({ queue: queue.name, status });
  return h("a", { href: `#/jobs?${params}`, "aria-label": `${n} ${status} jobs in ${queue.name}` }, String(n));
}

function queueTable(items, toggle) {
  const columns = [
    { label: "Queue", cell: (q) => h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name) },
    { label: "State", cell: (q) => h("span", { class: `badge ${q.paused ? "paused" : "active"}` }, q.paused ? "paused" : "active") },
    ...STATUSES.map((s) => ({ label: s[0].toUpperCase() + s.slice(1), class: "num count", cell: (q) => countLink(q, s) })),
    { label: "Oldest queued", class: "num", cell: (q) => duration(q.oldest_queued_age_seconds) },
    { label: "Oldest running", class: "num", cell: (q) => duration(q.oldest_running_age_seconds) },
    {
      label: "Action",
      cell: (q) => h("button", {
        type: "button",
        class: q.paused ? "primary" : "",
        "data-key": `toggle:${q.name}`,
        "aria-label": `${q.paused ? "Resume" : "Pause"} queue ${q.name}`,
        onclick: (event) => toggle(q, event.currentTarget),
      }, q.paused ? "Resume" : "Pause"),
    },
  ];
  return table("Queues with their job counts", columns, items, (q) => q.name);
}
