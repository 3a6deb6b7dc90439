// The page calls the same API as any client: POST /v1/classify, one request for all pasted reviews.
"use strict";

const form = document.getElementById("classify-form");
const reviews = document.getElementById("reviews");
const apiKey = document.getElementById("api-key");
const statusLine = document.getElementById("status");
const errorBox = document.getElementById("error");
const results = document.getElementById("results");
const modelLine = document.getElementById("model");

function splitReviews(text) {
  return text.split(/\n\s*\n/).map((t) => t.trim()).filter((t) => t.length > 0);
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render(texts, body) {
  results.replaceChildren();
  body.results.forEach((result, i) => {
    const card = el("article", "result");
    card.dataset.stars = result.stars;
    card.dataset.label = result.label;
    card.append(el("p", "text", texts[i]));
    const head = el("div", "head");
    const stars = el("span", "stars", "★".repeat(result.stars) + "☆".repeat(5 - result.stars));
    stars.dataset.stars = result.stars;
    stars.title = `${result.stars} of 5 stars`;
    head.append(stars, el("span", "verdict", `${result.stars} stars: ${result.label} (${(100 * result.confidence).toFixed(1)}%)`));
    if (result.windows > 1) head.append(el("span", "truncated", `long review: read in ${result.windows} overlapping parts`));
    if (result.truncated) head.append(el("span", "truncated", "long review: part of it was not read"));
    card.append(head);
    for (const [label, p] of Object.entries(result.probabilities)) {
      const bar = el("div", label === result.label ? "bar top" : "bar");
      bar.dataset.label = label;
      bar.dataset.p = p;
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = `${(100 * p).toFixed(2)}%`;
      track.append(fill);
      bar.append(el("span", "name", label), track, el("span", "value", `${(100 * p).toFixed(1)}%`));
      card.append(bar);
    }
    results.append(card);
  });
  const m = body.model;
  modelLine.textContent = `Model: ${m.version || "unregistered adapter"} on ${m.base_model}, adapter sha256 ${(m.adapter_sha256 || "").slice(0, 12)}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const texts = splitReviews(reviews.value);
  if (texts.length === 0) {
    showError("Paste at least one review.");
    return;
  }
  const headers = { "Content-Type": "application/json" };
  if (apiKey.value) headers["Authorization"] = `Bearer ${apiKey.value}`;
  statusLine.textContent = `Classifying ${texts.length} review(s)…`;
  try {
    const response = await fetch("/v1/classify", { method: "POST", headers, body: JSON.stringify({ texts }) });
    const body = await response.json();
    if (!response.ok) {
      showError(`${response.status}: ${body.error ? body.error.message : response.statusText}`);
      statusLine.textContent = "";
      return;
    }
    render(texts, body);
    statusLine.textContent = `Done: ${texts.length} review(s).`;
  } catch (err) {
    showError(`The service did not answer: ${err}`);
    statusLine.textContent = "";
  }
});

fetch("/readyz")
  .then((r) => r.json())
  .then((body) => {
    if (body.model) {
      const m = body.model;
      modelLine.textContent = `Model: ${m.version || "unregistered adapter"} on ${m.base_model}, adapter sha256 ${(m.adapter_sha256 || "").slice(0, 12)}`;
    } else modelLine.textContent = "Model: not ready";
  })
  .catch(() => { modelLine.textContent = "Model: service unreachable"; });
