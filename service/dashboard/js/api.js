// The REST API, same origin. Errors carry the problem+json `detail` so the page can show it.
// The page is logged in with a session cookie (session.js); every change it asks for carries
// the session's CSRF token, and a 401 anywhere means the session ended.

export const API = "/api/v1";

let csrfToken = null;
/** The CSRF token of the current session (null when authentication is off). */
export function setCsrf(token) {
  csrfToken = token;
}

function signedOut(status) {
  if (status === 401) window.dispatchEvent(new CustomEvent("jobq:signed-out"));
}

export class ApiError extends Error {
  constructor(status, detail, fields = []) {
    super(detail);
    this.status = status;
    this.fields = fields; // [{field, message}] on a 422
  }
}

async function problem(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.detail || body.title || response.statusText,
                        body.errors || []);
  } catch {
    return new ApiError(response.status, `${response.status} ${response.statusText}`);
  }
}

/** GET/POST/DELETE a JSON route; resolves to the parsed body (null for 204). */
export async function call(method, path, body) {
  let response;
  try {
    const headers = body === undefined ? {} : { "content-type": "application/json" };
    if (csrfToken && method !== "GET") headers["x-csrf-token"] = csrfToken;
    response = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, `Cannot reach the API (${error.message}).`);
  }
  if (!response.ok) {
    signedOut(response.status);
    throw await problem(response);
  }
  return response.status === 204 ? null : response.json();
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * POST a form with XMLHttpRequest, the one browser API that reports upload progress.
 * onProgress(sentBytes, totalBytes) is called as the body goes out.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + path);
    if (csrfToken) xhr.setRequestHeader("x-csrf-token", csrfToken);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        signedOut(xhr.status);
        reject(new ApiError(xhr.status, body?.detail || `${xhr.status} ${xhr.statusText}`,
                            body?.errors || []));
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "The upload failed: the API could not be reached.")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "The upload was cancelled.")));
    xhr.send(form);
  });
}
