// Live updates for every page, in this one module.
//
// A page hands watch() a stream URL and a refresh function. The page is refreshed at once, then:
//  - while the stream is open ("live"), whenever it sends an event: the page refetches what it
//    shows, at most once per `minGapMs` however many events arrive (a burst of 500 progress
//    events costs one or two refetches);
//  - while the stream cannot be opened (the event routes answer 404 until they exist, or the API
//    is down), every `pollMs`;
//  - never while the tab is hidden: what changed meanwhile is fetched once when it is shown again.
// A refresh never overlaps the previous one.

/** SSE event names that mean "something changed": unnamed events arrive as "message". */
export const EVENT_TYPES = ["message", "job", "progress", "status", "stage", "end"];

/** After the stream failed, try to open it again this often (the API may have been restarted). */
const STREAM_RETRY_MS = 60_000;

const statusListeners = new Set();
let lastStatus = { mode: "starting" };

/** Hear how the page is kept up to date: {mode: "live" | "polling" | "hidden" | "idle", pollMs}. */
export function onStatus(listener) {
  statusListeners.add(listener);
  listener(lastStatus);
  return () => statusListeners.delete(listener);
}

function report(status) {
  lastStatus = status;
  for (const listener of statusListeners) listener(status);
}

const errorListeners = new Set();
/** Hear whether the last refresh failed (an Error) or worked (null). */
export function onRefreshError(listener) {
  errorListeners.add(listener);
  return () => errorListeners.delete(listener);
}

/**
 * Keep a page fresh.
 * @param {object} o
 * @param {string|null} o.stream  an SSE URL, or null for a page with nothing to listen to
 * @param {() => Promise<void>} o.refresh  refetch and redraw
 * @param {number} o.pollMs  refresh period while the stream is unavailable
 * @param {number} [o.livePollMs]  refresh period even while live (ages, heartbeats), 0 for none
 * @param {number} [o.minGapMs]  least time between two refreshes caused by events
 * @returns {{stop: () => void, now: () => void}}  stop watching; refresh now (after an action)
 */
export function watch({ stream, refresh, pollMs, livePollMs = 0, minGapMs = 1000 }) {
  let stopped = false;
  let source = null;
  let mode = "polling";
  let pending = null; // timer of the next refresh
  let pollTimer = null;
  let retryTimer = null;
  let running = false;
  let again = false; // a refresh was asked for while one ran
  let lastRun = 0;
  let missedWhileHidden = false;

  const visible = () => document.visibilityState === "visible";

  async function run() {
    pending = null;
    if (stopped) return;
    if (running) { again = true; return; }
    running = true;
    try {
      await refresh();
      for (const listener of errorListeners) listener(null);
    } catch (error) {
      for (const listener of errorListeners) listener(error);
    } finally {
      running = false;
      lastRun = Date.now();
    }
    if (again) { again = false; soon(); }
  }

  /** Refresh once, no sooner than minGapMs after the last one. */
  function soon() {
    if (stopped || pending) return;
    if (!visible()) { missedWhileHidden = true; return; }
    pending = setTimeout(run, Math.max(0, lastRun + minGapMs - Date.now()));
  }

  function schedulePoll() {
    clearTimeout(pollTimer);
    const period = mode === "live" ? livePollMs : pollMs;
    if (stopped || !period) return;
    pollTimer = setTimeout(() => { soon(); schedulePoll(); }, period);
  }

  function setMode(next) {
    mode = next;
    report({ mode: visible() ? mode : "hidden", pollMs });
    schedulePoll();
  }

  function openStream() {
    retryTimer = null;
    if (stopped || !stream || !("EventSource" in window)) return;
    source = new EventSource(stream);
    source.addEventListener("open", () => { setMode("live"); soon(); });
    for (const type of EVENT_TYPES) source.addEventListener(type, soon);
    source.addEventListener("error", () => {
      // CONNECTING: the browser reconnects by itself (Last-Event-ID resumes); poll meanwhile.
      // CLOSED: a 404 or a response that is not an event stream: poll, and try again later.
      if (mode === "live") setMode("polling");
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        retryTimer = setTimeout(openStream, STREAM_RETRY_MS);
      }
    });
  }

  function onVisibility() {
    report({ mode: visible() ? mode : "hidden", pollMs });
    if (visible() && (missedWhileHidden || mode !== "live")) {
      missedWhileHidden = false;
      soon();
    }
  }

  document.addEventListener("visibilitychange", onVisibility);
  setMode("polling");
  openStream();
  run();

  return {
    stop() {
      stopped = true;
      clearTimeout(pending);
      clearTimeout(pollTimer);
      clearTimeout(retryTimer);
      source?.close();
      document.removeEventListener("visibilitychange", onVisibility);
      report({ mode: "idle" });
    },
    now() {
      clearTimeout(pending);
      pending = null;
      run();
    },
  };
}
