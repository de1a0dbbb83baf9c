// Building the page from data without innerHTML, so nothing from the API is ever parsed as HTML.

/** An element: h("a", {href: "#/jobs", class: "x"}, "text", child, [more children]). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value; // value, checked, disabled, max...
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/**
 * Replace a container's children after a refresh, keeping what the person was doing: the
 * focused control and open <details> are found again by their data-key.
 */
export function swap(container, ...children) {
  const focusedKey = container.contains(document.activeElement)
    ? document.activeElement.dataset.key : undefined;
  const openKeys = new Set(
    [...container.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key));
  container.replaceChildren();
  append(container, children);
  for (const details of container.querySelectorAll("details[data-key]")) {
    if (openKeys.has(details.dataset.key)) details.open = true;
  }
  if (focusedKey) {
    container.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
  }
}

/**
 * A table that turns into labelled cards at phone width (each cell carries its column name).
 * columns: [{label, cell: (row) => content, class?}]
 */
export function table(caption, columns, rows, rowKey) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "cards" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) =>
        h("tr", { "data-row": rowKey ? rowKey(row) : null },
          columns.map((c) => h("td", { "data-label": c.label, class: c.class }, c.cell(row))))))));
}
