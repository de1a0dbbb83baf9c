// How times, durations, ids and statuses read on the page.
import { h } from "./dom.js";

export const STATUSES = ["queued", "scheduled", "running", "succeeded", "failed", "cancelled"];
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function shortId(id) {
  return id.slice(0, 8);
}

/** 4 s, 3 min 20 s, 2 h 5 min, 3 d 4 h. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A <time> saying how long ago, with the exact UTC time in its title. */
export function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  const text = seconds < 0 ? `in ${duration(-seconds)}` : `${duration(seconds)} ago`;
  return h("time", { datetime: iso, title: iso }, text);
}

/** A <time> with the local date and time to the millisecond, for ordering events. */
export function clock(iso) {
  const at = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  const text = `${at.getFullYear()}-${two(at.getMonth() + 1)}-${two(at.getDate())} `
    + `${two(at.getHours())}:${two(at.getMinutes())}:${two(at.getSeconds())}`
    + `.${String(at.getMilliseconds()).padStart(3, "0")}`;
  return h("time", { datetime: iso, title: iso }, text);
}

/** Seconds between two RFC 3339 times, or null. */
export function between(start, end) {
  return start && end ? (Date.parse(end) - Date.parse(start)) / 1000 : null;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function json(value) {
  return h("pre", { class: "code", tabindex: "0" }, JSON.stringify(value, null, 2));
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export function isJobId(text) {
  return UUID.test(text);
}
