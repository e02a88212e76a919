// The API docs page: endpoints, methods, parameters, bodies, responses and schemas, read from
// /openapi.json and written as plain HTML (text nodes only: nothing from the schema is parsed
// as markup).
"use strict";

(async function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function refName(schema) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.type === "array") return refName(schema.items) + "[]";
    if (schema.anyOf) return schema.anyOf.map(refName).join(" | ");
    return schema.type || "";
  }

  function table(head, rows) {
    const t = el("table");
    const tr = el("tr");
    for (const h of head) tr.appendChild(el("th", h));
    t.appendChild(tr);
    for (const row of rows) {
      const r = el("tr");
      for (const cell of row) r.appendChild(el("td", cell));
      t.appendChild(r);
    }
    return t;
  }

  let spec;
  try {
    const res = await fetch("/openapi.json");
    spec = await res.json();
  } catch (err) {
    $("error").textContent = "Could not read /openapi.json: " + err.message;
    $("error").hidden = false;
    return;
  }
  $("title").textContent = `${spec.info.title} ${spec.info.version}`;
  $("description").textContent = spec.info.description || "";

  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      const sec = el("section", undefined, "op");
      const h = el("h3");
      h.appendChild(el("span", method, "method " + method));
      h.appendChild(document.createTextNode(" "));
      h.appendChild(el("code", path));
      sec.appendChild(h);
      if (op.summary) sec.appendChild(el("p", op.summary));
      if (op.description) sec.appendChild(el("p", op.description));
      const params = op.parameters || [];
      if (params.length) {
        sec.appendChild(el("h4", "Parameters"));
        sec.appendChild(table(["name", "in", "type", "required", "description"], params.map(
          (p) => [p.name, p.in, refName(p.schema), p.required ? "yes" : "no", p.description || ""],
        )));
      }
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        sec.appendChild(el("h4", "Request body"));
        for (const [type, media] of Object.entries(body)) {
          sec.appendChild(el("p", type));
          sec.appendChild(el("pre", JSON.stringify(media.schema, null, 2)));
        }
      }
      const responses = Object.entries(op.responses || {}).map(([code, r]) => {
        const json = r.content && r.content["application/json"];
        return [code, json ? refName(json.schema) : "", r.description || ""];
      });
      if (responses.length) {
        sec.appendChild(el("h4", "Responses"));
        sec.appendChild(table(["status", "body", "description"], responses));
      }
      $("paths").appendChild(sec);
    }
  }

  const schemas = (spec.components && spec.components.schemas) || {};
  for (const [name, schema] of Object.entries(schemas)) {
    const sec = el("section", undefined, "op");
    sec.id = "schema-" + name;
    sec.appendChild(el("h3", name));
    const props = Object.entries(schema.properties || {});
    const required = new Set(schema.required || []);
    sec.appendChild(table(["field", "type", "required", "description"], props.map(
      ([field, p]) => [field, refName(p) || (p.enum ? p.enum.join(" | ") : ""),
        required.has(field) ? "yes" : "no", p.description || ""],
    )));
    $("schemas").appendChild(sec);
  }
})();
