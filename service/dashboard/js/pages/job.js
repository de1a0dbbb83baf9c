// One job: live progress, details, payload, result, error with each attempt's traceback,
// history, and the retry, cancel and delete buttons.
import { API, del, get, post } from "../api.js";
import { h, swap } from "../dom.js";
import { ago, between, clock, duration, json, shortId, statusBadge, TERMINAL } from "../format.js";
import { watch } from "../live.js";
import { notify, notifyError } from "../notice.js";

export const title = "Job";

export function render(main, { match }) {
  const id = match[1];
  const heading = h("h1", { tabindex: "-1" }, "Job ", h("span", { class: "mono" }, shortId(id)));
  const body = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  main.append(heading, body);

  let live = null;
  let last = "";

  async function refresh() {
    let job, history;
    try {
      [job, history] = await Promise.all([get(`/jobs/${id}`), get(`/jobs/${id}/history`)]);
    } catch (error) {
      if (error.status !== 404) throw error;
      stopLive();
      swap(body, h("p", {}, "No job has this id: it may have been deleted. ",
        h("a", { href: "#/jobs" }, "See all jobs"), "."));
      return;
    }
    // A finished job changes only by an action on this page, which restarts the watch.
    if (TERMINAL.has(job.status)) stopLive();
    const text = JSON.stringify([job, history]);
    if (text === last) return;
    last = text;
    body.removeAttribute("aria-busy");
    swap(body, ...jobView(job, history, act));
  }

  function startLive() {
    stopLive();
    live = watch({ stream: `${API}/jobs/${id}/stream`, refresh, pollMs: 3000, minGapMs: 500 });
  }

  function stopLive() {
    live?.stop();
    live = null;
  }

  async function act(action, button) {
    if (action === "delete" && !window.confirm(`Delete job ${shortId(id)} and its files?`)) return;
    button.disabled = true;
    try {
      if (action === "delete") {
        await del(`/jobs/${id}`);
        notify(`Job ${shortId(id)} deleted.`, { keep: true });
        location.hash = "#/jobs";
        return;
      }
      await post(`/jobs/${id}/${action}`);
      notify(action === "cancel" ? `Cancelling job ${shortId(id)}.` : `Job ${shortId(id)} queued again.`);
    } catch (error) {
      notifyError(`Could not ${action} job ${shortId(id)}`, error);
    }
    last = "";
    startLive();
  }

  startLive();
  return stopLive;
}

function jobView(job, history, act) {
  const active = !TERMINAL.has(job.status);
  return [
    h("section", { class: "summary", "aria-labelledby": "state-heading" },
      h("h2", { id: "state-heading", class: "visually-hidden" }, "State"),
      h("p", { class: "state", id: "job-state" }, statusBadge(job.status), " ",
        job.cancel_requested ? h("span", { class: "badge" }, "cancel requested") : null),
      progress(job),
      h("div", { class: "actions", role: "group", "aria-label": "Actions" },
        button("retry", "Retry", job.status !== "failed" && job.status !== "cancelled", act),
        button("cancel", "Cancel", !active || job.cancel_requested, act),
        button("delete", "Delete", active, act, "danger"),
        job.type === "mesh.convert" && job.status === "succeeded"
          ? h("a", { class: "button primary", href: job.links.output, download: "" }, "Download output")
          : null)),
    h("section", { "aria-labelledby": "details-heading" },
      h("h2", { id: "details-heading" }, "Details"),
      h("dl", { class: "details" },
        item("Id", h("span", { class: "mono" }, job.id)),
        item("Type", job.type),
        item("Queue", h("a", { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, job.queue)),
        item("Priority", String(job.priority)),
        item("Attempts", `${job.attempts} of ${job.max_attempts}`),
        item("Timeout", job.timeout_seconds ? duration(job.timeout_seconds) : "—"),
        item("Created", ago(job.created_at)),
        item("Scheduled", ago(job.scheduled_at)),
        item("Started", ago(job.started_at)),
        item("Finished", ago(job.finished_at)))),
    job.error ? h("section", { "aria-labelledby": "error-heading", class: "error-box" },
      h("h2", { id: "error-heading" }, "Error"),
      h("p", {}, h("strong", {}, job.error.type), ": ", job.error.message),
      h("p", {}, job.error.retryable ? "Retryable: jobq tries again on its own while attempts remain."
        : "Not retryable: jobq does not try again on its own. Retry starts the job afresh.")) : null,
    h("section", { "aria-labelledby": "payload-heading" },
      h("h2", { id: "payload-heading" }, "Payload"), json(job.payload)),
    h("section", { "aria-labelledby": "result-heading" },
      h("h2", { id: "result-heading" }, "Result"),
      job.result !== null ? json(job.result) : h("p", {}, active ? "None yet." : "None.")),
    h("section", { "aria-labelledby": "attempts-heading" },
      h("h2", { id: "attempts-heading" }, "Attempts"),
      history.attempts.length ? history.attempts.map(attempt) : h("p", {}, "Not started yet.")),
    h("section", { "aria-labelledby": "history-heading" },
      h("h2", { id: "history-heading" }, "History"),
      timeline(history.items)),
  ];
}

function progress(job) {
  const detail = [job.stage, job.progress_message].filter(Boolean).join(" · ");
  return h("div", { class: "progress" },
    h("label", { for: "job-progress" }, "Progress"),
    h("progress", { id: "job-progress", max: 100, value: job.progress }, `${job.progress}%`),
    h("span", { class: "progress-text", "aria-live": "polite" },
      `${job.progress}%`, detail ? ` · ${detail}` : ""));
}

function button(action, label, disabled, act, extra = "") {
  return h("button", {
    type: "button", class: extra, disabled, "data-key": `action:${action}`,
    onclick: (event) => act(action, event.currentTarget),
  }, label);
}

function item(term, description) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, description));
}

function attempt(a) {
  const took = between(a.started_at, a.finished_at);
  return h("article", { class: "attempt", "aria-labelledby": `attempt-${a.number}` },
    h("h3", { id: `attempt-${a.number}` }, `Attempt ${a.number}: ${a.outcome || "running"}`),
    h("p", {}, `Worker ${a.worker || "—"} · started `, ago(a.started_at),
      took === null ? "" : ` · took ${took < 1 ? `${Math.round(took * 1000)} ms` : duration(took)}`),
    a.error ? h("p", {}, h("strong", {}, a.error.type), ": ", a.error.message) : null,
    a.error?.traceback ? h("details", { "data-key": `traceback:${a.number}` },
      h("summary", {}, `Traceback of attempt ${a.number}`),
      h("pre", { class: "code traceback", tabindex: "0" }, a.error.traceback)) : null);
}

function timeline(items) {
  return h("ol", { class: "timeline" }, items.map((e) => h("li", {},
    clock(e.at), " ", h("strong", {}, e.event),
    e.attempt === null ? "" : ` · attempt ${e.attempt}`,
    e.worker ? ` on ${e.worker}` : "",
    e.error ? h("span", { class: "note" }, `${e.error.type}: ${e.error.message}`)
      : e.message ? h("span", { class: "note" }, e.message) : null)));
}
