// Convert a 3D model: upload (with its progress), follow the conversion, download the result.
import { API, get, upload } from "../api.js";
import { h } from "../dom.js";
import { bytes, shortId, statusBadge, TERMINAL } from "../format.js";
import { watch } from "../live.js";
import { notifyError } from "../notice.js";

export const title = "Convert";

export function render(main) {
  const format = h("select", { id: "convert-format", name: "format", required: true },
    h("option", { value: "glb", selected: true }, "glb"));
  const files = h("input", { id: "convert-file", name: "file", type: "file", multiple: true, required: true, "aria-describedby": "convert-file-help" });
  const submit = h("button", { type: "submit", class: "primary" }, "Upload and convert");
  const uploadBar = h("progress", { id: "upload-progress", max: 100, value: 0 });
  const uploadText = h("span", { class: "progress-text" }, "Waiting");
  const conversionBar = h("progress", { id: "conversion-progress", max: 100, value: 0 });
  const conversionText = h("span", { class: "progress-text" }, "Waiting for the upload");
  const jobLine = h("p", { class: "job-line" });
  const outcome = h("div", { class: "outcome", "aria-live": "polite" });
  const progressSection = h("section", { class: "convert-progress", "aria-labelledby": "convert-progress-heading", hidden: true },
    h("h2", { id: "convert-progress-heading" }, "Progress"),
    h("div", { class: "progress" }, h("label", { for: "upload-progress" }, "Upload"), uploadBar, uploadText),
    h("div", { class: "progress" }, h("label", { for: "conversion-progress" }, "Conversion"), conversionBar, conversionText),
    jobLine,
    outcome);

  main.append(
    h("h1", { tabindex: "-1" }, "Convert a 3D model"),
    h("form", { class: "convert", onsubmit: start },
      h("div", { class: "field" },
        h("label", { for: "convert-file" }, "Model files"),
        files,
        h("p", { id: "convert-file-help", class: "help" },
          "The mesh with its sidecars (.mtl, .bin, textures), or one .zip holding them.")),
      h("div", { class: "field" }, h("label", { for: "convert-format" }, "Convert to"), format),
      h("div", { class: "field" },
        h("label", { for: "convert-options" }, "Options (JSON, optional)"),
        h("textarea", { id: "convert-options", name: "options", rows: 2, spellcheck: "false", placeholder: "{}" })),
      h("div", { class: "field check" },
        h("input", { id: "convert-reuse", name: "reuse", type: "checkbox", checked: true }),
        h("label", { for: "convert-reuse" }, "Reuse an earlier conversion of the same files")),
      h("div", { class: "buttons" }, submit)),
    progressSection);

  get("/formats").then(({ output }) => {
    format.replaceChildren(...output.map((f) => h("option", { value: f, selected: f === "glb" }, f)));
  }).catch((error) => notifyError("Could not load the formats", error));

  let live = null;

  async function start(event) {
    event.preventDefault();
    live?.stop();
    const form = new FormData(event.currentTarget);
    form.set("reuse", form.get("reuse") ? "true" : "false");
    if (!form.get("options").trim()) form.delete("options");
    submit.disabled = true;
    progressSection.hidden = false;
    uploadBar.value = 0;
    conversionBar.value = 0;
    uploadText.textContent = "Starting";
    conversionText.textContent = "Waiting for the upload";
    outcome.replaceChildren();
    jobLine.replaceChildren();
    let job;
    let sentTotal = 0;
    try {
      job = await upload("/conversions", form, (sent, total) => {
        sentTotal = total;
        uploadBar.value = Math.round((sent / total) * 100);
        uploadText.textContent = `${bytes(sent)} of ${bytes(total)} (${uploadBar.value}%)`;
      });
    } catch (error) {
      uploadText.textContent = "Failed";
      submit.disabled = false;
      notifyError("The upload was refused", error);
      return;
    }
    uploadBar.value = 100;
    uploadText.textContent = `Uploaded ${bytes(sentTotal)}`;
    jobLine.replaceChildren("Job ", h("a", { href: `#/jobs/${job.id}`, class: "mono", id: "convert-job" }, shortId(job.id)),
      ": its page shows the history and the details.");
    live = watch({
      stream: `${API}/jobs/${job.id}/stream`,
      pollMs: 3000,
      minGapMs: 500,
      refresh: async () => show(await get(`/jobs/${job.id}`)),
    });
  }

  function show(job) {
    conversionBar.value = job.progress;
    conversionText.replaceChildren(statusBadge(job.status), ` ${job.progress}%`,
      job.stage ? ` · ${job.stage}` : "");
    if (!TERMINAL.has(job.status)) return;
    live?.stop();
    submit.disabled = false;
    if (job.status === "succeeded") {
      const size = job.result?.output_bytes;
      outcome.replaceChildren(h("p", {},
        h("a", { class: "button primary", href: job.links.output, download: "" },
          `Download the ${job.result?.output_format || "result"}${size ? ` (${bytes(size)})` : ""}`)));
    } else {
      outcome.replaceChildren(h("p", { class: "error-box" },
        `The conversion ${job.status}`, job.error ? `: ${job.error.type}: ${job.error.message}` : "", "."));
    }
  }

  return () => live?.stop();
}
