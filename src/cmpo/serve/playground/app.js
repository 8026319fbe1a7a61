// cmpo playground: two weight settings, one prompt, both outputs streamed side by side.
// Talks to the server's own OpenAI-compatible API (POST /v1/chat/completions, stream: true).
"use strict";

const state = { model: null, kind: "hf", attributes: [], defaults: {} };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = document.getElementById("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function buildSliders(side) {
  const box = document.getElementById("sliders-" + side);
  box.innerHTML = "";
  const steerlm = state.kind === "steerlm";
  state.attributes.forEach((name, j) => {
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.textContent = name;
    const input = document.createElement("input");
    input.type = "range";
    input.id = `w-${side}-${name}`;
    input.dataset.attribute = name;
    input.min = steerlm ? "0" : "-1";
    input.max = steerlm ? "4" : "2";
    input.step = steerlm ? "1" : "0.05";
    // A and B start at different corners so the two panes differ before anything is touched.
    let value = steerlm ? 0 : (state.defaults[name] ?? 0);
    if (!steerlm && state.attributes.length > 1) value = (side === "a") === (j === 0) ? 1 : 0;
    input.value = String(value);
    const shown = document.createElement("span");
    shown.className = "value";
    shown.id = `v-${side}-${name}`;
    shown.textContent = input.value;
    input.addEventListener("input", () => { shown.textContent = input.value; });
    label.htmlFor = input.id;
    row.append(label, input, shown);
    box.append(row);
  });
}

function settingFor(side) {
  const out = {};
  document.querySelectorAll(`#sliders-${side} input[type=range]`).forEach((el) => {
    out[el.dataset.attribute] = Number(el.value);
  });
  return out;
}

async function stream(side) {
  const output = document.getElementById("output-" + side);
  const status = document.getElementById("status-" + side);
  output.textContent = "";
  status.textContent = "generating…";
  status.classList.remove("error");
  const body = {
    model: state.model,
    messages: [{ role: "user", content: document.getElementById("prompt").value }],
    max_tokens: Number(document.getElementById("max-tokens").value),
    temperature: Number(document.getElementById("temperature").value),
    repetition_penalty: Number(document.getElementById("rep-penalty").value),
    stream: true,
  };
  const setting = settingFor(side);
  if (state.kind === "plural") body.attribute_weights = setting;
  if (state.kind === "steerlm") body.attributes = setting;
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", finish = null, used = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        used = msg.attribute_weights || msg.attributes || used;
        const choice = msg.choices && msg.choices[0];
        if (choice && choice.delta && choice.delta.content) output.textContent += choice.delta.content;
        if (choice && choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const weights = used ? Object.entries(used).map(([k, v]) => `${k}=${v}`).join(", ") : "";
    status.textContent = `done (${finish || "?"})` + (weights ? ` · ${weights}` : "");
  } catch (e) {
    status.textContent = "error: " + e.message;
    status.classList.add("error");
  }
}

async function init() {
  const info = document.getElementById("model-info");
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error ? data.error.message : resp.statusText);
    const card = data.data[0];
    state.model = card.id;
    state.kind = card.kind;
    state.attributes = card.attributes || [];
    state.defaults = card.default_weights || {};
    info.textContent = `${card.id} (${card.kind}${state.attributes.length ? ": " + state.attributes.join(", ") : ""})`;
  } catch (e) {
    info.textContent = "could not load the model list: " + e.message + " (enter the API key and reload)";
  }
  buildSliders("a");
  buildSliders("b");
  document.body.dataset.ready = "1";
}

document.getElementById("submit").addEventListener("click", () => {
  Promise.all([stream("a"), stream("b")]);
});
document.getElementById("api-key").addEventListener("change", init);
init();
