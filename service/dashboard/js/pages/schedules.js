// Schedules: recurring jobs (GET /api/v1/schedules) with their last and next tick, and pause and
// resume for the ones made over the API (a schedule declared in code is changed in the code).
import { call, get } from "../api.js";
import { h, swap, table } from "../dom.js";
import { ago, shortId } from "../format.js";
import { watch } from "../live.js";
import { notify, notifyError } from "../notice.js";
import { period } from "../policies.js";

export const title = "Schedules";

export function render(main) {
  const body = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  main.append(
    h("h1", { tabindex: "-1" }, "Schedules"),
    h("p", { class: "lead" },
      "Each schedule makes one job per tick, from its template. Make and change them with ",
      h("code", {}, "jobq schedules set"), " or ", h("code", {}, "PUT /api/v1/schedules/{name}"), "."),
    body);

  async function refresh() {
    const { items } = await get("/schedules");
    body.removeAttribute("aria-busy");
    swap(body, items.length ? scheduleTable(items, toggle)
      : h("p", {}, "No schedules yet."));
  }

  async function toggle(schedule, button) {
    button.disabled = true;
    const action = schedule.paused ? "resume" : "pause";
    // PUT replaces the schedule: the same definition with only `paused` changed.
    const { cron, interval_seconds, timezone, job } = schedule;
    try {
      await call("PUT", `/schedules/${encodeURIComponent(schedule.name)}`,
        { cron, interval_seconds, timezone, job, paused: !schedule.paused });
      notify(`Schedule ${schedule.name} ${schedule.paused ? "resumed" : "paused"}.`);
    } catch (error) {
      notifyError(`Could not ${action} schedule ${schedule.name}`, error);
    }
    live.now();
  }

  // Ticks make jobs (job events); "in 4 min" also needs a calm redraw while live.
  const live = watch({ stream: "/api/v1/events", refresh, pollMs: 5000, livePollMs: 15000 });
  return live.stop;
}

function when(s) {
  if (s.cron) return h("span", {}, h("code", {}, s.cron), ` (${s.timezone})`);
  return `every ${period(s.interval_seconds)}`;
}

function scheduleTable(items, toggle) {
  return table("Schedules", [
    { label: "Name", cell: (s) => s.name },
    { label: "When", cell: when },
    { label: "Job", cell: (s) => h("span", {}, h("code", {}, s.job.type),
      s.job.queue ? ` in ${s.job.queue}` : "") },
    { label: "State", cell: (s) => h("span", { class: `badge ${s.paused ? "paused" : "active"}` }, s.paused ? "paused" : "active") },
    { label: "Next tick", cell: (s) => (s.next_tick_at ? ago(s.next_tick_at) : "—") },
    { label: "Last tick", cell: (s) => ago(s.last_tick_at) },
    { label: "Last job", cell: (s) => (s.last_job_id
      ? h("a", { href: `#/jobs/${s.last_job_id}`, class: "mono", title: s.last_job_id }, shortId(s.last_job_id))
      : "—") },
    { label: "Made by", cell: (s) => (s.origin === "code" ? "code" : "API") },
    {
      label: "Action",
      cell: (s) => (s.origin === "code" ? h("span", { class: "help" }, "change it in code")
        : h("button", {
          type: "button",
          class: s.paused ? "primary" : "",
          "data-key": `toggle:${s.name}`,
          "aria-label": `${s.paused ? "Resume" : "Pause"} schedule ${s.name}`,
          onclick: (event) => toggle(s, event.currentTarget),
        }, s.paused ? "Resume" : "Pause")),
    },
  ], items, (s) => s.name);
}
