// Fruits! page: send the chosen photo to /v1/predict as it is, show the API's answer.
//
// The photo is never re-encoded or shrunk here: the page and the API must see the same pixels
// (a canvas re-encode once turned "Apple 47%" into "Pear 49%" and a truncated JPEG, which the
// API refuses, into an answer). A photo over the server's limit is refused here with the API's
// own words, since a body cut off mid-upload reaches the browser as a network error.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const input = $("photo");
  const statusEl = $("status");
  let limit = null; // the server's max_upload_bytes, read from /health once

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  async function uploadLimit() {
    if (limit === null) {
      try {
        const res = await fetch("/health");
        limit = (await res.json()).max_upload_bytes || 0;
      } catch (err) {
        return 0; // unknown: the server decides
      }
    }
    return limit;
  }

  // The API's 413 message (api.over_limit_text), word for word.
  function overLimitText(bytes) {
    const mb = bytes / 1048576;
    const shown = bytes >= 1048576 ? ` (${parseFloat(mb.toPrecision(6))} MB)` : "";
    return `upload is over the limit of ${bytes} bytes${shown}`;
  }

  function percent(p) {
    return Math.round(100 * p) + "%";
  }

  function showResult(body) {
    const top = body.prediction;
    const level = body.confidence; // sure | probably | perhaps | not_sure
    const known = level !== "not_sure";
    const box = $("result");
    box.className = "conf-" + level;
    box.dataset.verdict = body.verdict;
    box.dataset.confidence = level;
    $("result-name").textContent = body.headline; // the name, said once
    // Variety and facts only when the answer is worth learning about.
    const detailed = level === "sure" || level === "probably";
    const variety = detailed && top.variety ? top.variety : "";
    $("result-variety").textContent = variety ? "Variety: " + variety : "";
    $("result-variety").hidden = !variety;
    // "Not sure" has no percentage and no bar: a number beside it would contradict it.
    $("result-confidence").hidden = !known;
    $("result-meter").style.width = known ? percent(top.species_probability) : "0";
    $("result-percent").textContent = known ? percent(top.species_probability) + " likely" : "";
    $("result-hint").textContent = body.hint || "";
    $("result-hint").hidden = !body.hint;
    const f = detailed ? top.facts : null;
    $("result-facts").hidden = !f;
    $("result-description").textContent = f ? f.description : "";
    $("fact-family").textContent = f ? f.family : "";
    $("fact-season").textContent = f ? f.season : "";
    $("fact-energy").textContent = f ? f.energy_kcal_per_100g + " kcal per 100 g" : "";
    const others = $("result-others");
    others.replaceChildren();
    for (const g of body.others) {
      const li = document.createElement("li");
      li.textContent = known ? `${g.species}: ${percent(g.probability)}` : g.species;
      others.appendChild(li);
    }
    $("result-others-title").textContent = known ? "Other guesses" : "What else it might be";
    $("result-others-box").hidden = body.others.length === 0;
    box.hidden = false;
  }

  async function recognise(file) {
    $("result").hidden = true;
    setStatus("Looking at your photo…"); // at once: no earlier answer or error stays on screen
    const url = URL.createObjectURL(file);
    $("preview-img").onerror = () => { $("preview").hidden = true; };
    $("preview-img").src = url; // shown if the browser can; the server explains any problem
    $("preview").hidden = false;
    const max = await uploadLimit();
    if (max && file.size > max) {
      setStatus(overLimitText(max), true);
      return;
    }
    const form = new FormData();
    form.append("image", file, file.name || "photo.jpg");
    try {
      const res = await fetch("/v1/predict", { method: "POST", body: form });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        setStatus(body.message || `The server refused the photo (HTTP ${res.status}).`, true);
        return;
      }
      setStatus("");
      showResult(body);
    } catch (err) {
      setStatus("Could not reach the server: " + err.message, true);
    }
  }

  input.addEventListener("change", () => {
    if (input.files && input.files[0]) recognise(input.files[0]);
    input.value = ""; // choosing the same photo again fires `change` again
  });
})();
