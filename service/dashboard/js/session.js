// Who is logged in. The dashboard logs in with an API key, once: the API answers with an
// HttpOnly session cookie (the key itself is never kept by the page) and a CSRF token, which
// every change the page asks for carries (api.js). With authentication off there is nothing
// to log in to, and the header says so.
import { API, ApiError, setCsrf } from "./api.js";
import { h } from "./dom.js";

let current = null;

/** The session as GET /api/v1/session says, or null when not logged in. */
export async function load() {
  let response;
  try {
    response = await fetch(`${API}/session`);
  } catch (error) {
    throw new ApiError(0, `Cannot reach the API (${error.message}).`);
  }
  if (response.status === 401) return forget();
  if (!response.ok) throw new ApiError(response.status, `${response.status} ${response.statusText}`);
  return remember(await response.json());
}

function remember(session) {
  current = session;
  setCsrf(session.csrf_token);
  return session;
}

function forget() {
  current = null;
  setCsrf(null);
  return null;
}

export const who = () => current;

async function logIn(key) {
  const response = await fetch(`${API}/session`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.detail || response.statusText);
  return remember(body);
}

export async function logOut() {
  const headers = current?.csrf_token ? { "x-csrf-token": current.csrf_token } : {};
  await fetch(`${API}/session`, { method: "DELETE", headers }).catch(() => null);
  forget();
}

/** The login form, in `main`; `done` is called once logged in. */
export function renderLogin(main, done) {
  const input = h("input", { id: "api-key", name: "key", type: "password", required: true,
                             autocomplete: "current-password", spellcheck: "false" });
  const error = h("p", { id: "login-error", class: "notice error", role: "alert", hidden: true });
  const form = h("form", { class: "login", novalidate: true },
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { class: "hint" }, "A key an admin made with ", h("code", {}, "jobq keys create"),
      ". The page keeps only a session cookie, never the key."),
    error,
    h("button", { type: "submit", class: "button primary" }, "Log in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!input.value.trim()) {
      error.textContent = "Enter your API key.";
      error.hidden = false;
      return;
    }
    try {
      await logIn(input.value.trim());
      input.value = "";
      done();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
      input.focus();
    }
  });
  const title = h("h1", { tabindex: "-1" }, "Log in");
  main.replaceChildren(title, form);
  input.focus();
}
