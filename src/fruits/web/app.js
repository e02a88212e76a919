// Fruits! page: send the chosen photo to /v1/predict, show the best guess and its facts.
"use strict";

(function () {
  const MAX_SIDE = 1024; // phone photos are shrunk before upload: the model sees 224 px anyway
  const SHRINK_OVER_BYTES = 1.5 * 1024 * 1024;

  const $ = (id) => document.getElementById(id);
  const input = $("photo");
  const statusEl = $("status");

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("this file is not an image the browser can show"));
      img.src = url;
    });
  }

  // Large photos are re-encoded as a smaller JPEG; small ones are sent untouched.
  async function prepare(file, img) {
    const side = Math.max(img.naturalWidth, img.naturalHeight);
    if (file.size <= SHRINK_OVER_BYTES && side <= MAX_SIDE) return file;
    const scale = Math.min(1, MAX_SIDE / side);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
    return blob || file;
  }

  function showResult(body) {
    const top = body.prediction;
    const sure = body.verdict === "known";
    $("result").classList.toggle("unsure", !sure);
    // Species first (what a shopper names); the variety only when the model is sure.
    $("result-name").textContent = sure ? top.species : "Not sure";
    $("result-message").textContent = body.message;
    const variety = sure && top.variety ? top.variety : "";
    $("result-label").textContent = variety;
    $("result-variety").hidden = !variety;
    const pct = (100 * top.species_probability).toFixed(0) + "%";
    $("result-confidence").textContent = pct;
    $("result-meter").style.width = pct;
    const f = sure ? top.facts : null;
    $("result-description").textContent = f ? f.description : "";
    $("result-facts").hidden = !f;
    $("fact-family").textContent = f ? f.family : "";
    $("fact-season").textContent = f ? f.season : "";
    $("fact-energy").textContent = f ? f.energy_kcal_per_100g + " kcal per 100 g" : "";
    const others = $("result-others");
    others.replaceChildren();
    for (const g of body.top_k.slice(sure ? 1 : 0)) {
      const li = document.createElement("li");
      li.textContent = `${g.name} (${g.label}): ${(100 * g.probability).toFixed(1)}%`;
      others.appendChild(li);
    }
    $("result").hidden = false;
  }

  async function recognise(file) {
    $("result").hidden = true;
    setStatus("Looking at your photo…");
    const url = URL.createObjectURL(file);
    let upload = file;
    try {
      const img = await loadImage(url);
      $("preview-img").src = url;
      $("preview").hidden = false;
      upload = await prepare(file, img);
    } catch (err) {
      $("preview").hidden = true; // the server still gets the file and explains what is wrong
    }
    const form = new FormData();
    form.append("image", upload, file.name || "photo.jpg");
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
