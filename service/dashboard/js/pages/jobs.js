// Jobs: newest first, filtered by status, type and queue, a page at a time (cursor pagination).
import { get, query } from "../api.js";
import { h, swap, table } from "../dom.js";
import { ago, isJobId, shortId, statusBadge, STATUSES } from "../format.js";
import { watch } from "../live.js";

export const title = "Jobs";
const PAGE_SIZE = 25;

export function render(main, { params }) {
  const filters = {
    status: params.get("status") || "",
    type: params.get("type") || "",
    queue: params.get("queue") || "",
  };
  const cursor = params.get("cursor") || "";
  const queueSelect = h("select", { id: "filter-queue", name: "queue" },
    h("option", { value: "" }, "any"),
    filters.queue ? h("option", { value: filters.queue, selected: true }, filters.queue) : null);
  const results = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  const lookupError = h("p", { id: "lookup-error", class: "field-error", role: "alert" });

  main.append(
    h("h1", { tabindex: "-1" }, filters.status === "failed" ? "Failed jobs" : "Jobs"),
    h("nav", { "aria-label": "Views", class: "views" },
      h("a", { href: "#/jobs", "aria-current": !filters.status && !filters.type && !filters.queue ? "page" : null }, "Recent"),
      h("a", { href: "#/jobs?status=failed", "aria-current": filters.status === "failed" && !filters.type && !filters.queue ? "page" : null }, "Failed")),
    h("div", { class: "forms" },
      h("form", { class: "filters", role: "search", "aria-label": "Filter jobs", onsubmit: applyFilters },
        field("filter-status", "Status",
          h("select", { id: "filter-status", name: "status" },
            h("option", { value: "" }, "any"),
            STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)))),
        field("filter-type", "Type",
          h("input", { id: "filter-type", name: "type", value: filters.type, placeholder: "e.g. mesh.convert", autocomplete: "off" })),
        field("filter-queue", "Queue", queueSelect),
        h("div", { class: "buttons" },
          h("button", { type: "submit", class: "primary" }, "Apply filters"),
          h("a", { href: "#/jobs" }, "Clear"))),
      h("form", { class: "lookup", role: "search", "aria-label": "Open a job by id", onsubmit: openJob },
        field("lookup-id", "Job id",
          h("input", { id: "lookup-id", name: "id", autocomplete: "off", spellcheck: "false", "aria-describedby": "lookup-error", placeholder: "0b7c6e0e-…" })),
        h("div", { class: "buttons" }, h("button", { type: "submit" }, "Open job")),
        lookupError)),
    results);

  get("/queues").then(({ items }) => {
    for (const q of items) {
      if (q.name !== filters.queue) queueSelect.append(h("option", { value: q.name }, q.name));
    }
  }).catch(() => {}); // the list of names only helps; the filter works without it

  function applyFilters(event) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    location.hash = `#/jobs${query({ status: form.get("status"), type: form.get("type").trim(), queue: form.get("queue") })}`;
  }

  function openJob(event) {
    event.preventDefault();
    const id = new FormData(event.currentTarget).get("id").trim();
    if (!isJobId(id)) {
      lookupError.textContent = "A job id looks like 0b7c6e0e-8f3a-4c1e-9d2b-5a6f7e8d9c0b.";
      return;
    }
    location.hash = `#/jobs/${id.toLowerCase()}`;
  }

  // Redrawn on every refresh, so "5 s ago" stays true; swap() keeps focus where it was.
  async function refresh() {
    const page = await get(`/jobs${query({ ...filters, cursor, limit: PAGE_SIZE })}`);
    results.removeAttribute("aria-busy");
    swap(results,
      page.items.length ? jobTable(page.items) : h("p", {}, "No jobs match these filters."),
      pager(filters, cursor, page.next_cursor));
  }

  return watch({ stream: "/api/v1/events", refresh, pollMs: 5000 }).stop;
}

function field(id, label, control) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

function jobTable(items) {
  return table("Jobs, newest first", [
    { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}`, class: "mono", title: j.id }, shortId(j.id)) },
    { label: "Type", cell: (j) => j.type },
    { label: "Queue", cell: (j) => j.queue },
    { label: "Status", cell: (j) => statusBadge(j.status) },
    { label: "Progress", class: "num", cell: (j) => `${j.progress}%` },
    { label: "Attempts", class: "num", cell: (j) => `${j.attempts} of ${j.max_attempts}` },
    { label: "Created", cell: (j) => ago(j.created_at) },
    { label: "Finished", cell: (j) => ago(j.finished_at) },
  ], items, (j) => j.id);
}

function pager(filters, cursor, next) {
  if (!cursor && !next) return null;
  return h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? h("a", { href: `#/jobs${query(filters)}` }, "← Newest") : null,
    next ? h("a", { href: `#/jobs${query({ ...filters, cursor: next })}`, rel: "next" }, "Next page →") : null);
}
