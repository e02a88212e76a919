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
  let contributionsOn = false; // /health: does this server take contributed photos?
  let species = null; // label -> name of every class a person may choose, from /v1/classes
  let answered = null; // { file, body } of the answer on screen, for the feedback form

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  async function uploadLimit() {
    if (limit === null) {
      try {
        const res = await fetch("/health");
        const health = await res.json();
        limit = health.max_upload_bytes || 0;
        contributionsOn = Boolean(health.contributions);
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

  // The biodiversity lines a species' sources state, in reading order; a missing one is left out.
  const BIODIVERSITY = [
    ["origin", "Origin"],
    ["wild_relatives", "Wild relatives"],
    ["cultivars", "Cultivars"],
    ["pollination", "Pollination"],
    ["season_europe", "In season in Europe"],
    ["diversity", "Diversity"],
  ];

  function sourceLinks(sources) {
    const out = [];
    const seen = new Set();
    for (const s of sources || []) {
      if (!/^https:\/\//.test(s.url) || seen.has(s.url)) continue; // https only, each once
      seen.add(s.url);
      const a = document.createElement("a");
      a.href = s.url;
      a.textContent = s.title;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      out.push(a);
    }
    return out;
  }

  function showBiodiversity(f) {
    const dl = $("result-biodiversity");
    dl.replaceChildren();
    for (const [key, title] of BIODIVERSITY) {
      if (!f || !f[key]) continue;
      const dt = document.createElement("dt");
      dt.textContent = title;
      const dd = document.createElement("dd");
      dd.textContent = f[key];
      dl.append(dt, dd);
    }
    const note = $("result-variety-note");
    note.textContent = f && f.variety && f.variety_note ? f.variety_note : "";
    note.hidden = !note.textContent;
    const links = f ? sourceLinks([...(f.sources || []), ...(f.variety_sources || [])]) : [];
    const p = $("result-sources");
    p.replaceChildren();
    if (links.length) {
      p.append("Sources: ");
      links.forEach((a, i) => p.append(...(i ? [", ", a] : [a])));
    }
    p.hidden = !links.length;
    const more = $("result-more");
    more.hidden = !dl.children.length && note.hidden && p.hidden;
    more.open = false; // each new answer starts folded
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
    showBiodiversity(f);
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

  // ---- "Was this right?": the feedback loop (POST /v1/contributions, only with consent) ----

  async function loadSpecies() {
    if (species !== null) return species;
    const res = await fetch("/v1/classes");
    const body = await res.json();
    species = new Map();
    const list = $("feedback-species");
    list.replaceChildren();
    for (const c of body.classes) {
      if (c.label === "not a fruit") continue;
      species.set(c.label, c.name);
      const opt = document.createElement("option");
      opt.value = c.label; // what is sent: a class of the model (the folder it will train)
      opt.textContent = c.name;
      list.appendChild(opt);
    }
    return species;
  }

  function chosenLabel() {
    if ($("feedback-yes").checked && answered) return answered.body.prediction.label;
    if ($("feedback-no").checked) {
      const typed = $("feedback-label").value.trim();
      return species && species.has(typed) ? typed : null;
    }
    return null;
  }

  function updateSend() {
    $("feedback-correction").hidden = !$("feedback-no").checked;
    // nothing leaves the page unless the consent box is ticked and a known label is chosen
    $("feedback-send").disabled = !($("feedback-consent").checked && chosenLabel());
  }

  function feedbackStatus(text, isError) {
    $("feedback-status").textContent = text;
    $("feedback-status").classList.toggle("error", Boolean(isError));
  }

  function showFeedback(file, body) {
    answered = { file, body };
    $("feedback-form").reset(); // consent unticked again for every photo
    $("feedback-form").hidden = false;
    $("feedback-yes-label").hidden = body.verdict !== "known";
    $("feedback-delete").hidden = true;
    $("feedback-delete").dataset.id = "";
    feedbackStatus("");
    updateSend();
    $("feedback").hidden = !contributionsOn;
    if (contributionsOn) loadSpecies().catch(() => feedbackStatus("Could not load the list.", true));
  }

  async function sendFeedback(event) {
    event.preventDefault();
    const label = chosenLabel();
    if (!answered || !label || !$("feedback-consent").checked) return;
    const form = new FormData();
    form.append("image", answered.file, answered.file.name || "photo.jpg");
    form.append("label", label);
    form.append("consent", "true");
    form.append("answer", answered.body.prediction.label);
    $("feedback-send").disabled = true;
    try {
      const res = await fetch("/v1/contributions", { method: "POST", body: form });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        feedbackStatus(body.message || `The server refused it (HTTP ${res.status}).`, true);
        updateSend();
        return;
      }
      $("feedback-form").hidden = true;
      feedbackStatus(`Thank you! Your photo's code is ${body.id}: keep it to have it deleted.`);
      $("feedback-delete").dataset.id = body.id;
      $("feedback-delete").hidden = false;
    } catch (err) {
      feedbackStatus("Could not reach the server: " + err.message, true);
      updateSend();
    }
  }

  async function deleteContribution() {
    const id = $("feedback-delete").dataset.id;
    if (!id) return;
    try {
      const res = await fetch("/v1/contributions/" + encodeURIComponent(id), { method: "DELETE" });
      if (res.status === 204 || res.status === 404) {
        feedbackStatus("Your photo was deleted from the server.");
        $("feedback-delete").hidden = true;
      } else {
        const body = await res.json().catch(() => ({}));
        feedbackStatus(body.message || `Not deleted (HTTP ${res.status}).`, true);
      }
    } catch (err) {
      feedbackStatus("Could not reach the server: " + err.message, true);
    }
  }

  for (const id of ["feedback-yes", "feedback-no", "feedback-consent", "feedback-label"]) {
    $(id).addEventListener("input", updateSend);
    $(id).addEventListener("change", updateSend);
  }
  $("feedback-form").addEventListener("submit", sendFeedback);
  $("feedback-delete").addEventListener("click", deleteContribution);

  async function recognise(file) {
    $("result").hidden = true;
    $("feedback").hidden = true;
    answered = null;
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
      showFeedback(file, body);
    } catch (err) {
      setStatus("Could not reach the server: " + err.message, true);
    }
  }

  input.addEventListener("change", () => {
    if (input.files && input.files[0]) recognise(input.files[0]);
    input.value = ""; // choosing the same photo again fires `change` again
  });
})();
