// One queue: its counts and ages, pause and resume, its policies, and a form that changes them
// (PATCH /api/v1/queues/{name}, sending only the fields the person changed).
import { call, get, post } from "../api.js";
import { h, swap } from "../dom.js";
import { duration, STATUSES } from "../format.js";
import { watch } from "../live.js";
import { notify, notifyError } from "../notice.js";
import * as policy from "../policies.js";

export const title = "Queue";

/** The form's fields: where each value is in the Queue object, and the API's name for it. */
const FIELDS = [
  { id: "rate-starts", field: "rate_limit.max_starts", label: "Rate limit: job starts", integer: true,
    read: (q) => q.rate_limit?.max_starts },
  { id: "rate-period", field: "rate_limit.per_seconds", label: "Rate limit: per seconds",
    read: (q) => q.rate_limit?.per_seconds },
  { id: "concurrency", field: "concurrency_limit", label: "Concurrency limit", integer: true,
    read: (q) => q.concurrency_limit },
  { id: "max-attempts", field: "max_attempts", label: "Attempts", integer: true,
    read: (q) => q.max_attempts },
  { id: "timeout", field: "timeout_seconds", label: "Timeout (seconds)", read: (q) => q.timeout_seconds },
  { id: "backoff-base", field: "backoff.base_seconds", label: "Backoff base (seconds)",
    read: (q) => q.backoff?.base_seconds },
  { id: "backoff-cap", field: "backoff.cap_seconds", label: "Backoff cap (seconds)",
    read: (q) => q.backoff?.cap_seconds },
  { id: "backoff-jitter", field: "backoff.jitter", label: "Backoff jitter (0 to 1)",
    read: (q) => q.backoff?.jitter },
  ...policy.KEPT_STATUSES.flatMap((s) => [
    { id: `${s}-age`, field: `retention.${s}.max_age_seconds`, label: `${cap(s)}: keep for (seconds)`,
      read: (q) => q.retention?.[s]?.max_age_seconds },
    { id: `${s}-count`, field: `retention.${s}.max_count`, label: `${cap(s)}: keep the newest`, integer: true,
      read: (q) => q.retention?.[s]?.max_count },
  ]),
];

function cap(word) {
  return word[0].toUpperCase() + word.slice(1);
}

function shown(value) {
  return value === null || value === undefined ? "" : String(value);
}

export function render(main, { match }) {
  let name;
  try {
    name = decodeURIComponent(match[1]);
  } catch {
    name = match[1]; // a stray % in the address: the API answers that no such queue exists
  }
  const path = `/queues/${encodeURIComponent(name)}`;
  const body = h("div", { "aria-busy": "true" }, h("p", {}, "Loading…"));
  const settings = h("section", { class: "settings", "aria-labelledby": "settings-heading", hidden: true });
  main.append(h("h1", { tabindex: "-1" }, "Queue ", h("span", { class: "mono" }, name)), body, settings);

  let form = null;

  async function refresh() {
    let queue;
    try {
      queue = await get(path);
    } catch (error) {
      if (error.status !== 404 && error.status !== 422) throw error;
      swap(body, h("p", {}, error.message, " ", h("a", { href: "#/queues" }, "See all queues"), "."));
      body.removeAttribute("aria-busy");
      settings.hidden = true;
      return;
    }
    body.removeAttribute("aria-busy");
    swap(body, ...queueView(queue, toggle));
    if (!form) {
      form = settingsForm(name, path, queue, (updated) => swap(body, ...queueView(updated, toggle)));
      settings.replaceChildren(
        h("h2", { id: "settings-heading" }, "Change settings"),
        h("p", { class: "lead" },
          "Only the fields you change are sent. Workers apply a change at their next claim, with no restart."),
        form.element);
    }
    settings.hidden = false;
  }

  async function toggle(queue, button) {
    button.disabled = true;
    const action = queue.paused ? "resume" : "pause";
    try {
      await post(`${path}/${action}`);
      notify(`Queue ${name} ${queue.paused ? "resumed" : "paused"}.`);
    } catch (error) {
      notifyError(`Could not ${action} queue ${name}`, error);
    }
    live.now();
  }

  const live = watch({ stream: "/api/v1/events", refresh, pollMs: 5000, livePollMs: 15000 });
  return live.stop;
}

function queueView(q, toggle) {
  const jobs = (params) => `#/jobs?${new URLSearchParams({ queue: q.name, ...params })}`;
  return [
    h("section", { class: "summary", "aria-labelledby": "queue-state-heading" },
      h("h2", { id: "queue-state-heading", class: "visually-hidden" }, "State"),
      h("p", { class: "state", id: "queue-state" },
        h("span", { class: `badge ${q.paused ? "paused" : "active"}` }, q.paused ? "paused" : "active"),
        " ",
        h("button", {
          type: "button",
          class: q.paused ? "primary" : "",
          "data-key": "toggle",
          "aria-label": `${q.paused ? "Resume" : "Pause"} queue ${q.name}`,
          onclick: (event) => toggle(q, event.currentTarget),
        }, q.paused ? "Resume" : "Pause"),
        " ",
        h("a", { href: jobs({}), "data-key": "jobs" }, "Jobs in this queue")),
      h("dl", { class: "details", id: "queue-counts" },
        STATUSES.map((s) => item(cap(s), q.counts[s]
          ? h("a", { href: jobs({ status: s }), "aria-label": `${q.counts[s]} ${s} jobs` }, String(q.counts[s]))
          : "0")),
        item("Oldest queued", duration(q.oldest_queued_age_seconds)),
        item("Oldest running", duration(q.oldest_running_age_seconds)))),
    h("section", { "aria-labelledby": "queue-policies-heading" },
      h("h2", { id: "queue-policies-heading" }, "Policies"),
      h("dl", { class: "details", id: "queue-policies" },
        item("Rate limit", policy.rateLimit(q.rate_limit)),
        item("Concurrency limit", policy.concurrencyLimit(q.concurrency_limit)),
        item("Attempts", policy.orTypes(q.max_attempts)),
        item("Timeout", policy.orTypes(q.timeout_seconds, policy.period)),
        item("Backoff", policy.backoff(q.backoff)),
        policy.KEPT_STATUSES.map((s) => item(`Keep ${s}`, policy.keep(q.retention?.[s]))))),
  ];
}

function item(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

/**
 * The settings form. It remembers the values it was filled with and sends only what differs:
 * a field left as it was is absent from the PATCH (unchanged), an emptied one is null (no
 * limit, or the job type's default again).
 */
function settingsForm(name, path, queue, onSaved) {
  const inputs = new Map(); // field → input
  const errors = new Map(); // field → its error line
  let original = {};

  function control(spec) {
    const id = `qs-${spec.id}`;
    const input = h("input", {
      id, name: spec.field, type: "number", step: "any", inputmode: spec.integer ? "numeric" : "decimal",
      autocomplete: "off", "data-field": spec.field, "aria-describedby": `${id}-error`,
    });
    const error = h("p", { id: `${id}-error`, class: "field-error" });
    inputs.set(spec.field, input);
    errors.set(spec.field, error);
    return h("div", { class: "field" }, h("label", { for: id }, spec.label), input, error);
  }

  const group = (legend, help, fields, layout = "fields") => h("fieldset", { "aria-describedby": `qs-${help.id}` },
    h("legend", {}, legend),
    h("p", { class: "help", id: `qs-${help.id}` }, help.text),
    h("div", { class: layout }, FIELDS.filter((f) => fields(f.field)).map(control)));

  const saveButton = h("button", { type: "submit", class: "primary" }, "Save settings");
  const element = h("form", { class: "queue-settings", novalidate: true, onsubmit: save, "aria-label": `Settings of queue ${name}` },
    group("Limits, across all workers", { id: "limits-help", text: "Empty: no limit." },
      (f) => f.startsWith("rate_limit.") || f === "concurrency_limit"),
    group("Defaults for jobs that set none", { id: "defaults-help", text: "Empty: the job type's own." },
      (f) => f === "max_attempts" || f === "timeout_seconds" || f.startsWith("backoff.")),
    group("Retention of finished jobs", { id: "retention-help",
      text: "A job is deleted once it is older than its status's age or not among its newest. Empty: no limit of that kind." },
      (f) => f.startsWith("retention."), "fields pairs"),
    h("div", { class: "buttons" },
      saveButton,
      h("button", { type: "button", onclick: () => fill(original, true) }, "Undo changes")));

  /** Put the queue's values in the form and remember them as what is saved. */
  function fillFrom(q) {
    original = Object.fromEntries(FIELDS.map((f) => [f.field, shown(f.read(q))]));
    fill(original, false);
  }

  function fill(values, announce) {
    clearErrors();
    for (const [field, input] of inputs) input.value = values[field];
    if (announce) notify("The form shows the saved settings again.");
  }

  function clearErrors() {
    for (const [field, input] of inputs) {
      input.removeAttribute("aria-invalid");
      errors.get(field).textContent = "";
    }
  }

  /** Mark the fields a problem names: exactly, or each field under it ("rate_limit"). */
  function mark(problems) {
    let first = null;
    for (const { field, message } of problems) {
      const named = inputs.has(field) ? [field] : [...inputs.keys()].filter((f) => f.startsWith(`${field}.`));
      for (const f of named) {
        inputs.get(f).setAttribute("aria-invalid", "true");
        errors.get(f).textContent = message;
        first ??= inputs.get(f);
      }
    }
    return first;
  }

  /** The PATCH body for what changed, and the problems found before asking the API. */
  function changes() {
    const problems = [];
    const changed = (field) => inputs.get(field).value.trim() !== original[field]
      || inputs.get(field).validity.badInput;
    const value = (field) => {
      const input = inputs.get(field);
      const text = input.value.trim();
      if (input.validity.badInput) {
        problems.push({ field, message: "must be a number" });
        return undefined;
      }
      if (text === "") return null;
      const n = Number(text);
      const spec = FIELDS.find((f) => f.field === field);
      if (!Number.isFinite(n)) problems.push({ field, message: "must be a number" });
      else if (spec.integer && !Number.isInteger(n)) problems.push({ field, message: "must be a whole number" });
      return n;
    };
    const patch = {};
    if (changed("rate_limit.max_starts") || changed("rate_limit.per_seconds")) {
      const starts = value("rate_limit.max_starts");
      const per = value("rate_limit.per_seconds");
      if (starts === null && per === null) patch.rate_limit = null;
      else if (starts === null || per === null) {
        problems.push({ field: starts === null ? "rate_limit.max_starts" : "rate_limit.per_seconds",
                        message: "give both the starts and the seconds, or leave both empty" });
      } else patch.rate_limit = { max_starts: starts, per_seconds: per };
    }
    for (const field of ["concurrency_limit", "max_attempts", "timeout_seconds"]) {
      if (changed(field)) patch[field] = value(field);
    }
    const backoffFields = ["base_seconds", "cap_seconds", "jitter"];
    if (backoffFields.some((k) => changed(`backoff.${k}`))) {
      // The API replaces the backoff as a whole: send every part still given.
      const given = Object.fromEntries(backoffFields.map((k) => [k, value(`backoff.${k}`)])
        .filter(([, v]) => v !== null));
      patch.backoff = Object.keys(given).length ? given : null;
    }
    for (const status of policy.KEPT_STATUSES) {
      const keep = {};
      for (const key of ["max_age_seconds", "max_count"]) {
        const field = `retention.${status}.${key}`;
        if (changed(field)) keep[key] = value(field);
      }
      if (Object.keys(keep).length) (patch.retention ??= {})[status] = keep;
    }
    return { patch, problems };
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    const { patch, problems } = changes();
    if (problems.length) {
      mark(problems)?.focus();
      notify(`Nothing was saved: ${problems.length === 1 ? "a field needs" : "some fields need"} fixing.`,
        { error: true, fields: problems });
      return;
    }
    if (!Object.keys(patch).length) {
      notify("Nothing to save: no setting was changed.");
      return;
    }
    saveButton.disabled = true;
    try {
      const updated = await call("PATCH", path, patch);
      fillFrom(updated);
      onSaved(updated);
      notify(`Settings of queue ${name} saved.`);
    } catch (error) {
      notifyError(`Could not save the settings of queue ${name}`, error);
      mark(error.fields || []);
    } finally {
      saveButton.disabled = false;
    }
  }

  fillFrom(queue);
  return { element };
}
