// The dashboard's entry point: the router (the part of the URL after #), the navigation, and
// the lines that say how fresh the page is and whether the last refresh failed.
import * as live from "./live.js";
import * as notice from "./notice.js";
import * as convert from "./pages/convert.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as queue from "./pages/queue.js";
import * as queues from "./pages/queues.js";
import * as schedules from "./pages/schedules.js";
import * as workers from "./pages/workers.js";
import * as session from "./session.js";
import { h } from "./dom.js";

const ROUTES = [
  [/^\/(queues)?$/, queues, "queues"],
  [/^\/queues\/([^/]+)$/, queue, "queues"],
  [/^\/schedules$/, schedules, "schedules"],
  [/^\/jobs$/, jobs, "jobs"],
  [/^\/jobs\/([^/]+)$/, job, "jobs"],
  [/^\/workers$/, workers, "workers"],
  [/^\/convert$/, convert, "convert"],
];

const main = document.getElementById("main");
let stopPage = null;
let firstRender = true;

function route() {
  if (!session.who()) {
    stopPage?.();
    stopPage = null;
    session.renderLogin(main, () => {
      showWho();
      route();
    });
    finish(null);
    return;
  }
  const hash = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  const [path, search = ""] = hash.split("?");
  const found = ROUTES.map(([pattern, page, section]) => [path.match(pattern), page, section])
    .find(([match]) => match);
  stopPage?.();
  stopPage = null;
  main.replaceChildren();
  if (!found) {
    main.append(heading("Not found"), paragraph("This page does not exist. Try the navigation above."));
    finish(null);
    return;
  }
  const [match, page, section] = found;
  stopPage = page.render(main, { match, params: new URLSearchParams(search) });
  finish(section);
}

function finish(section) {
  for (const link of document.querySelectorAll("nav.site a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const h1 = main.querySelector("h1");
  document.title = `${h1 ? h1.textContent : "jobq"} · jobq dashboard`;
  // After a navigation, start reading and tabbing at the new page's heading.
  if (!firstRender) h1?.focus();
  firstRender = false;
}

function heading(text) {
  const h1 = document.createElement("h1");
  h1.tabIndex = -1;
  h1.textContent = text;
  return h1;
}

function paragraph(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

const liveStatus = document.getElementById("live-status");
live.onStatus(({ mode, pollMs }) => {
  liveStatus.dataset.mode = mode;
  liveStatus.textContent = {
    live: "Live",
    polling: `Refreshing every ${pollMs / 1000} s`,
    hidden: "Paused while hidden",
    starting: "",
    idle: "",
  }[mode];
});

const refreshError = document.getElementById("refresh-error");
live.onRefreshError((error) => {
  refreshError.hidden = !error;
  refreshError.textContent = error ? `Could not refresh: ${error.message} Retrying.` : "";
});

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  (main.querySelector("h1") || main).focus();
});

const whoBox = document.getElementById("who");

/** The header's line about the session: who, and a way out (or that nobody needs to log in). */
function showWho() {
  const current = session.who();
  const operator = current && current.role !== "submitter";
  // Queues and workers are an operator's: a submitter's key is refused them.
  for (const link of document.querySelectorAll('nav.site a[data-section="queues"], nav.site a[data-section="workers"]')) {
    link.parentElement.hidden = !operator;
  }
  // Nothing to navigate to before logging in.
  document.querySelector("nav.site").hidden = !current;
  if (!current) {
    whoBox.replaceChildren();
    return;
  }
  if (current.authentication === "off") {
    whoBox.replaceChildren(h("span", { class: "auth-off" }, "Authentication is off"));
    return;
  }
  whoBox.replaceChildren(
    h("span", {}, `${current.name} (${current.role})`), " ",
    h("button", { type: "button", class: "link", id: "log-out", onclick: async () => {
      await session.logOut();
      showWho();
      route();
    } }, "Log out"));
}

window.addEventListener("jobq:signed-out", () => {
  if (!session.who()) return;
  session.load().then(() => {
    if (session.who()) return;
    showWho();
    route();
  }).catch(() => null);
});

window.addEventListener("hashchange", () => {
  notice.navigated();
  route();
});

async function start() {
  try {
    await session.load();
  } catch (error) {
    notice.notifyError("Could not reach the API", error);
  }
  showWho();
  if (session.who()?.role === "submitter" && !location.hash.startsWith("#/") ) {
    location.hash = "#/jobs";
    return;
  }
  route();
}
start();
