// Queues: counts per status, oldest ages, pause and resume, and each queue's policies (limits,
// defaults, retention), with a link to the queue's own page where they can be changed.
import { get, post } from "../api.js";
import { h, swap, table } from "../dom.js";
import { duration, STATUSES } from "../format.js";
import { watch } from "../live.js";
import { notify, notifyError } from "../notice.js";
import * as policy from "../policies.js";

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
    swap(body, ...(items.length ? [queueTable(items, toggle), policyTable(items)]
      : [h("p", {}, "No queues yet: a queue appears when a job is submitted to it.")]));
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
    { label: "Queue", cell: (q) => h("a", { href: queueHref(q.name), "data-key": `queue:${q.name}` }, q.name) },
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

function queueHref(name) {
  return `#/queues/${encodeURIComponent(name)}`;
}

/** The policies of every queue, one row each; "Change" opens the queue's page and its form. */
function policyTable(items) {
  const columns = [
    { label: "Queue", cell: (q) => q.name },
    { label: "Rate limit", cell: (q) => policy.rateLimit(q.rate_limit) },
    { label: "Concurrency limit", class: "short", cell: (q) => policy.concurrencyLimit(q.concurrency_limit) },
    { label: "Attempts", class: "short", cell: (q) => policy.orTypes(q.max_attempts) },
    { label: "Timeout", class: "short", cell: (q) => policy.orTypes(q.timeout_seconds, policy.period) },
    { label: "Backoff", cell: (q) => policy.backoff(q.backoff) },
    ...policy.KEPT_STATUSES.map((s) => ({ label: `Keep ${s}`, cell: (q) => policy.keep(q.retention?.[s]) })),
    {
      label: "Settings",
      cell: (q) => h("a", { href: queueHref(q.name), "data-key": `settings:${q.name}`,
                           "aria-label": `Change the settings of queue ${q.name}` }, "Change"),
    },
  ];
  return h("section", { class: "policies", "aria-labelledby": "policies-heading" },
    h("h2", { id: "policies-heading" }, "Policies"),
    h("p", { class: "lead" },
      "Limits hold across all workers. Attempts, timeout and backoff apply to jobs that set none; ",
      "finished jobs are deleted once their status's retention no longer keeps them."),
    table("Each queue's limits, job defaults and retention", columns, items, (q) => `policies:${q.name}`));
}
