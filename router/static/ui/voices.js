// The voice library: list, create (upload or record), edit and delete.

import { API, getJson, request, sendForm, sendJson } from "./api.js";
import { busy, button, el, errorText, filledFields, say, seconds } from "./dom.js";
import { startRecording } from "./recorder.js";

const PAGE_SIZE = 100; // the API's maximum
const EDITABLE = ["name", "description", "language", "prompt_text", "voice_type"];

export function setUpVoices(onChange) {
  const form = document.getElementById("voice-form");
  const status = document.getElementById("voice-status");
  const recording = setUpRecorder(form);

  async function refresh() {
    try {
      const voices = await listVoices();
      renderTable(voices);
      onChange(voices);
    } catch (error) {
      say(status, errorText(error), "error");
    }
  }

  function renderTable(voices) {
    const rows = voices.map((voice) =>
      el(
        "tr",
        { dataset: { voiceId: voice.voice_id } },
        el("td", {}, voice.voice_id),
        el("td", {}, voice.name),
        el("td", {}, voice.voice_type),
        el("td", {}, voice.language ?? ""),
        el("td", { className: "num" }, seconds(voice.duration)),
        el("td", {}, voice.is_active ? "yes" : "no"),
        el(
          "td",
          {},
          button("Edit", () => editVoice(voice).then(refresh)),
          button("Delete", () => deleteVoice(voice).then(refresh)),
        ),
      ),
    );
    document.querySelector("#voice-table tbody").replaceChildren(...rows);
    document.getElementById("voice-count").textContent = `${voices.length} voice(s)`;
  }

  async function deleteVoice(voice) {
    if (!confirm(`Delete the voice ${voice.voice_id}?`)) return;
    try {
      await request(`${API}/voices/${encodeURIComponent(voice.voice_id)}`, { method: "DELETE" });
      say(status, `Deleted ${voice.voice_id}`);
    } catch (error) {
      say(status, errorText(error), "error");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form, status, async () => {
      const sample = form.elements.audio_file.files[0] ?? recording.blob();
      if (!sample) throw new Error("choose a file or record a sample first");
      const body = new FormData();
      for (const [name, value] of Object.entries(
        filledFields(form, ["voice_id", "name", "voice_type", "language", "prompt_text", "description"]),
      )) {
        body.append(name, value);
      }
      body.append("audio_file", sample, sample.name ?? "recording.wav");
      say(status, "Uploading…", "busy");
      const voice = await sendForm("POST", `${API}/voices/`, body);
      say(status, `Created ${voice.voice_id} (${seconds(voice.duration)} at ${voice.sample_rate} Hz)`);
      form.reset();
      recording.clear();
      await refresh();
    });
  });

  return refresh;
}

async function listVoices() {
  const voices = [];
  for (let page = 1; ; page++) {
    const body = await getJson(`${API}/voices/?page=${page}&page_size=${PAGE_SIZE}`);
    voices.push(...body.voices);
    if (body.voices.length < PAGE_SIZE || voices.length >= body.total) return voices;
  }
}

// Opens the edit dialog; sends only the fields that changed (JSON), or a multipart form
// when a new sample was chosen.
function editVoice(voice) {
  const dialog = document.getElementById("voice-edit");
  const form = document.getElementById("voice-edit-form");
  form.reset();
  dialog.querySelector("[data-field=voice_id]").textContent = voice.voice_id;
  for (const name of EDITABLE) form.elements[name].value = voice[name] ?? "";
  form.elements.is_active.checked = voice.is_active;

  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      async () => {
        if (dialog.returnValue === "save") {
          try {
            await saveVoice(voice, form);
          } catch (error) {
            alert(`Could not save ${voice.voice_id}: ${errorText(error)}`);
          }
        }
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
}

async function saveVoice(voice, form) {
  const changes = {};
  for (const name of EDITABLE) {
    const value = form.elements[name].value.trim();
    if (value !== (voice[name] ?? "")) changes[name] = value;
  }
  if (form.elements.is_active.checked !== voice.is_active) {
    changes.is_active = form.elements.is_active.checked;
  }
  const path = `${API}/voices/${encodeURIComponent(voice.voice_id)}`;
  const sample = form.elements.audio_file.files[0];
  if (sample) {
    const body = new FormData();
    for (const [name, value] of Object.entries(changes)) body.append(name, String(value));
    body.append("audio_file", sample, sample.name);
    await sendForm("PUT", path, body);
  } else if (Object.keys(changes).length) {
    await sendJson("PUT", path, changes);
  }
}

// The Record / Stop buttons; blob() is the last recording, if any.
function setUpRecorder(form) {
  const start = document.getElementById("record-start");
  const stop = document.getElementById("record-stop");
  const player = document.getElementById("recording");
  const status = document.getElementById("record-status");
  let recorder = null;
  let recorded = null;
  let startedAt = 0;

  start.addEventListener("click", async () => {
    try {
      recorder = await startRecording();
      startedAt = performance.now();
      start.disabled = true;
      stop.disabled = false;
      say(status, "Recording…", "busy");
    } catch (error) {
      say(status, `Cannot record: ${errorText(error)}`, "error");
    }
  });

  stop.addEventListener("click", async () => {
    stop.disabled = true;
    recorded = await recorder.stop();
    recorder = null;
    start.disabled = false;
    form.elements.audio_file.value = "";
    if (player.src) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(recorded);
    player.hidden = false;
    const length = (performance.now() - startedAt) / 1000;
    say(status, `Recorded ${length.toFixed(1)} s: it is uploaded when no file is chosen`);
  });

  return {
    blob: () => recorded,
    clear() {
      recorded = null;
      player.hidden = true;
      player.removeAttribute("src");
      say(status, "");
    },
  };
}
