// The console's entry point: fills the shared pickers and starts each panel.

import { API, forgetKey, getJson, storedKey } from "./api.js";
import { el } from "./dom.js";
import { setUpSchedule } from "./schedule.js";
import { setUpSpeak } from "./speak.js";
import { setUpStream } from "./stream.js";
import { setUpTasks } from "./tasks.js";
import { setUpVoices } from "./voices.js";

// Every voice picker lists the active voices, keeping its choice when it still exists.
function fillVoicePickers(voices) {
  const active = voices.filter((voice) => voice.is_active);
  for (const select of document.querySelectorAll(".voice-select")) {
    const chosen = select.value;
    select.replaceChildren(
      ...active.map((voice) => el("option", { value: voice.voice_id }, `${voice.name} (${voice.voice_id})`)),
    );
    if (active.some((voice) => voice.voice_id === chosen)) select.value = chosen;
  }
}

// Formats and the speed range come from what the loaded engine says it can do.
function applyCapabilities(capabilities) {
  const { output_formats: formats, speed_range: [slowest, fastest] } = capabilities.features;
  for (const select of document.querySelectorAll(".format-select")) {
    select.replaceChildren(...formats.map((format) => el("option", { value: format }, format)));
  }
  for (const input of document.querySelectorAll(".speed-input")) {
    input.min = slowest;
    input.max = fastest;
  }
  document.getElementById("engine").textContent = `${capabilities.model} · ${capabilities.engine}`;
}

function showKeyState() {
  document.getElementById("forget-key").hidden = !storedKey();
}

async function main() {
  document.getElementById("forget-key").addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
  document.addEventListener("api-key-changed", showKeyState);
  showKeyState();

  const refreshVoices = setUpVoices(fillVoicePickers);
  setUpSpeak();
  setUpStream();
  setUpTasks();
  const refreshSchedule = setUpSchedule();

  // The first API call asks for the key if the server needs one; the rest then use it.
  applyCapabilities(await getJson(`${API}/cross-lingual/capabilities`));
  await refreshVoices();
  await refreshSchedule();
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  document.getElementById("engine").textContent = `Cannot reach the API: ${error.detail ?? error.message}`;
});
