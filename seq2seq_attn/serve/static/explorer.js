// The attention explorer of attn-serve: reads the model description (v1/model), translates the
// typed sentence (v1/translate) and shows the translation, the n-best list, the attention maps
// and the word alignment. All URLs are relative, so the page works behind a path prefix.

import { AttentionView } from "./attention_view.js";
import { drawAlignment } from "./alignment_view.js";
import { html } from "./dom.js";

const KEY_STORAGE = "attn-serve-api-key";
const $ = (id) => document.getElementById(id);

/** An error answer (or no answer) of the server: its message and the field it names. */
class ApiError extends Error {
  constructor(message, status, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

// ---------------------------------------------------------------------------------------------
// API client

/** Call a v1 endpoint: GET without `body`, else POST it as JSON. The answer, or an ApiError. */
async function callApi(path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(`The server cannot be reached (${error.message}).`, 0, null);
  }
  const payload = await response.json().catch(() => null);
  if (response.ok && payload) return payload;
  if (response.status === 401) showKeyForm();
  const answered = `The server answered ${response.status} ${response.statusText}.`;
  const message = payload?.error ?? answered;
  throw new ApiError(message, response.status, payload?.field ?? null);
}

// ---------------------------------------------------------------------------------------------
// Status line, API key, model header

/** Show a message in the status line; `kind` "error" colours it. */
function setStatus(message, kind = "info") {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", kind === "error");
}

/** Ask for the API key (the server answered 401). */
function showKeyForm() {
  const form = $("key-form");
  if (!form.hidden) return;
  form.hidden = false;
  $("api-key").focus();
}

/** Keep the typed key for this tab and retry loading the model. */
function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-form").hidden = true;
  loadModel();
}

/** The model description in the header; the decode defaults in the form. */
function showModel(model) {
  const known = (value) => value ?? "–"; // a CTranslate2 folder does not say everything
  const languages = model.src_lang ? `${model.src_lang} → ${model.tgt_lang}` : null;
  const values = {
    name: model.name,
    family: model.ensemble > 1 ? `${model.family} (ensemble of ${model.ensemble})` : model.family,
    languages,
    parameters: model.parameters == null ? null : Number(model.parameters).toLocaleString("en-US"),
    backend: model.backend,
    device: [model.device, model.precision && `(${model.precision})`].filter(Boolean).join(" "),
  };
  for (const [key, value] of Object.entries(values)) {
    document.querySelector(`#model-info [data-key="${key}"]`).textContent = known(value || null);
  }
  document.title = `${model.family} ${known(languages)}: attention explorer`;
  $("beam").value = model.decode?.beam_size ?? 5;
  $("nbest").value = model.decode?.n_best ?? 1;
}

/** GET v1/model; the form is usable once it answered. */
async function loadModel() {
  setStatus("Loading the model description…");
  try {
    state.model = await callApi("v1/model");
  } catch (error) {
    setStatus(error.message, "error");
    return;
  }
  showModel(state.model);
  $("translate").disabled = false;
  setStatus("Ready.");
}

// ---------------------------------------------------------------------------------------------
// Translation

/** The request body for the typed sentence; throws ApiError naming an invalid number field. */
function buildRequest(text) {
  const number = (id, field, label) => {
    const value = Number($(id).value);
    if (!Number.isInteger(value) || value < 1) {
      throw new ApiError(`${label} must be a whole number of at least 1.`, 400, field);
    }
    return value;
  };
  const request = {
    text: [text],
    beam: number("beam", "beam", "Beam"),
    n_best: number("nbest", "n_best", "N-best"),
  };
  if (state.model?.capabilities?.attention) {
    request.attention = true;
    request.alignments = true;
  }
  return request;
}

/** Mark the input named by an error's `field` (null clears every mark). */
function markField(field) {
  const inputs = { beam: "beam", n_best: "nbest", text: "source" };
  for (const id of Object.values(inputs)) $(id).removeAttribute("aria-invalid");
  const id = inputs[(field ?? "").replace(/\[\d+\]$/, "")];
  if (id) $(id).setAttribute("aria-invalid", "true");
}

/** Translation, n-best list, attention and alignment of one answer. */
function showResult(text, result) {
  $("translation").textContent = result.translation;
  const items = (result.n_best ?? []).map((entry) =>
    html("li", {}, [
      html("span", { class: "hypothesis" }, [entry.translation]),
      html("span", { class: "score", title: `log-probability ${entry.log_prob}` }, [
        entry.score.toFixed(4),
      ]),
    ]),
  );
  $("nbest-list").replaceChildren(...items);
  state.attention.show(result.attention ?? null);
  const hasAlignment = typeof result.alignment === "string";
  $("alignment-view").hidden = !hasAlignment;
  if (hasAlignment) drawAlignment($("alignment"), text, result.translation, result.alignment);
}

/** Translate the typed sentence (the form's submit). */
async function translate(event) {
  event.preventDefault();
  const button = $("translate");
  if (button.disabled) return; // no model description yet, or a translation is running
  // one sentence: line breaks (Shift+Enter, pasted text) become spaces
  const text = $("source").value.replace(/\s*[\r\n]+\s*/g, " ").trim();
  if (!text) {
    setStatus("Type a sentence to translate first.", "error");
    return;
  }
  markField(null);
  button.disabled = true;
  setStatus("Translating…");
  const started = performance.now();
  try {
    const answer = await callApi("v1/translate", buildRequest(text));
    showResult(text, answer.translations[0]);
    const empty = answer.translations[0].translation === "" ? " The translation is empty." : "";
    setStatus(`Translated in ${Math.round(performance.now() - started)} ms.${empty}`);
  } catch (error) {
    setStatus(error.message, "error");
    markField(error.field);
  } finally {
    button.disabled = false;
  }
}

/** Enter translates; Shift+Enter (or Enter while composing) adds a new line. */
function onSourceKey(event) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  $("translate-form").requestSubmit();
}

// ---------------------------------------------------------------------------------------------
// Start

const state = {
  model: null,
  attention: new AttentionView({
    section: $("attention-view"),
    kind: $("map-kind"),
    layer: $("layer"),
    head: $("head"),
    matrix: $("matrix"),
    caption: $("matrix-caption"),
    keyStrip: $("src-tokens"),
    queryStrip: $("tgt-tokens"),
    keyTitle: $("key-strip-title"),
    queryTitle: $("query-strip-title"),
    info: $("hover-info"),
  }),
};

$("translate-form").addEventListener("submit", translate);
$("source").addEventListener("keydown", onSourceKey);
$("key-form").addEventListener("submit", useKey);
loadModel();
