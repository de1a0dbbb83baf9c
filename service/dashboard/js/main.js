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

window.addEventListener("hashchange", () => {
  notice.navigated();
  route();
});
route();
