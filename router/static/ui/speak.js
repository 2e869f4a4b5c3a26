// Synchronous synthesis with a stored voice: render, download, play.

import { API, fetchAudio, sendJson } from "./api.js";
import { busy, filledFields, say, seconds } from "./dom.js";

// The body of a synthesis or task request from a form with the usual fields.
export function synthesisRequest(form) {
  const body = filledFields(form, ["text", "voice_id", "format", "instruct_text"]);
  body.speed = Number(form.elements.speed.value);
  return body;
}

// Shows `blob` in an <audio> element, releasing the previous one.
export function showAudio(player, blob) {
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
}

export function setUpSpeak() {
  const form = document.getElementById("speak-form");
  const status = document.getElementById("speak-status");
  const player = document.getElementById("speak-audio");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form, status, async () => {
      say(status, "Rendering…", "busy");
      const result = await sendJson("POST", `${API}/cross-lingual/with-cache`, synthesisRequest(form));
      showAudio(player, await fetchAudio(result.audio_url));
      player.dataset.duration = result.duration;
      player.dataset.format = result.format;
      say(
        status,
        `${seconds(result.duration)} of ${result.format} at ${result.sample_rate} Hz, ` +
          `rendered in ${seconds(result.synthesis_time)} by ${result.engine}`,
      );
      await player.play().catch(() => {}); // autoplay may be refused: the controls remain
    });
  });
}
