// The message line under the header: what an action did, or why it failed.
import { h } from "./dom.js";

let keepOnce = false;

/**
 * Show a message; an error is announced at once (role=alert), news politely. With `keep`, it
 * stays through the next navigation (a deleted job sends us to the list with its message).
 */
export function notify(message, { error = false, fields = [], keep = false } = {}) {
  keepOnce = keep;
  const box = document.getElementById(error ? "notice-error" : "notice");
  const other = document.getElementById(error ? "notice" : "notice-error");
  other.hidden = true;
  other.replaceChildren();
  box.replaceChildren(h("p", {}, message));
  if (fields.length) {
    box.append(h("ul", {}, fields.map((f) => h("li", {}, h("code", {}, f.field), ": ", f.message))));
  }
  box.append(h("button", { type: "button", class: "link", onclick: clearNotice }, "Dismiss"));
  box.hidden = false;
}

export function clearNotice() {
  for (const id of ["notice", "notice-error"]) {
    const box = document.getElementById(id);
    box.hidden = true;
    box.replaceChildren();
  }
}

/** Show an error from an action (ApiError or any Error). */
export function notifyError(prefix, error) {
  notify(`${prefix}: ${error.message}`, { error: true, fields: error.fields || [] });
}

/** A message belongs to the page it was made on: clear it on navigation unless kept. */
export function navigated() {
  if (!keepOnce) clearNotice();
  keepOnce = false;
}
