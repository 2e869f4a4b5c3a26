// Background tasks: submit one and watch its progress until it ends.

import { API, fetchAudio, getJson, sendJson } from "./api.js";
import { busy, errorText, say, seconds } from "./dom.js";
import { showAudio, synthesisRequest } from "./speak.js";

const POLL_MS = 400;
const FINISHED = new Set(["completed", "failed", "cancelled"]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function setUpTasks() {
  const form = document.getElementById("task-form");
  const box = document.getElementById("task-progress");
  const bar = box.querySelector("progress");
  const status = document.getElementById("task-status");
  const player = document.getElementById("task-audio");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form, status, async () => {
      box.hidden = false;
      player.hidden = true;
      bar.value = 0;
      say(status, "Submitting…", "busy");
      const task = await sendJson("POST", `${API}/cross-lingual/task`, synthesisRequest(form));
      status.dataset.taskId = task.task_id;
      status.dataset.seen = "";
      const done = await watch(task.task_id);
      if (done.status === "completed") {
        showAudio(player, await fetchAudio(done.audio_url));
        say(status, `completed: ${seconds(done.duration)} rendered in ${seconds(done.synthesis_time)}`);
      } else {
        say(status, `${done.status}: ${done.error_message ?? ""}`, "error");
      }
      status.dataset.status = done.status;
    });
  });

  // Polls the task's status, showing every step; resolves with the final status.
  async function watch(taskId) {
    const seen = [];
    for (;;) {
      let task;
      try {
        task = await getJson(`${API}/cross-lingual/task/${taskId}`);
      } catch (error) {
        say(status, `cannot read the task's status: ${errorText(error)}; retrying`, "error");
        await sleep(POLL_MS * 5);
        continue;
      }
      bar.value = task.progress;
      seen.push(`${task.status}:${task.progress}`);
      status.dataset.seen = seen.join(" ");
      status.dataset.status = task.status;
      if (FINISHED.has(task.status)) return task;
      say(status, `${task.status} ${Math.round(task.progress * 100)}%`, "busy");
      await sleep(POLL_MS);
    }
  }
}
