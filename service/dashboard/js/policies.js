// How a queue's policies read on the page (docs/queues.md): limits, defaults, retention.

export const KEPT_STATUSES = ["succeeded", "failed", "cancelled"];

/** A period without the zero parts: 30 s, 1 min 30 s, 1 d, 7 d 12 h. */
export function period(seconds) {
  if (seconds < 60) return `${number(seconds)} s`;
  let s = Math.round(seconds);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
  }
  return parts.slice(0, 2).join(" ");
}

/** A number as people read it: 1000 → "1,000", 0.5 → "0.5". */
export function number(n) {
  return Number(n).toLocaleString("en");
}

export function rateLimit(rate) {
  if (!rate) return "none";
  return `${number(rate.max_starts)} starts per ${period(rate.per_seconds)}`;
}

export function concurrencyLimit(limit) {
  return limit === null || limit === undefined ? "none" : `${number(limit)} at once`;
}

/** A default the queue gives its jobs, or the job type's own when it gives none. */
export function orTypes(value, show = String) {
  return value === null || value === undefined ? "job type's" : show(value);
}

export function backoff(b) {
  if (!b) return "job type's";
  const parts = [];
  if (b.base_seconds !== undefined && b.base_seconds !== null) parts.push(`base ${period(b.base_seconds)}`);
  if (b.cap_seconds !== undefined && b.cap_seconds !== null) parts.push(`cap ${period(b.cap_seconds)}`);
  if (b.jitter !== undefined && b.jitter !== null) parts.push(`jitter ${b.jitter}`);
  return parts.length ? parts.join(", ") : "job type's";
}

/** One status's retention: "1 d, newest 1,000", "7 d", "newest 500", "forever". */
export function keep(k) {
  if (!k) return "—";
  const parts = [];
  if (k.max_age_seconds !== null && k.max_age_seconds !== undefined) parts.push(period(k.max_age_seconds));
  if (k.max_count !== null && k.max_count !== undefined) parts.push(`newest ${number(k.max_count)}`);
  return parts.length ? parts.join(", ") : "forever";
}
