// Scheduled rendering: register tasks, render one or all pending, the queue and its stats.

import { API, getJson, request, sendJson } from "./api.js";
import { busy, button, el, errorText, filledFields, say, seconds } from "./dom.js";

const REFRESH_MS = 2000;
const LIST_LIMIT = 100;

export function setUpSchedule() {
  const form = document.getElementById("schedule-form");
  const status = document.getElementById("schedule-status");
  const live = document.getElementById("schedule-live");
  let refreshing = null;

  async function refresh() {
    // Overlapping refreshes would paint older answers over newer ones.
    refreshing ??= Promise.all([
      getJson(`${API}/schedule/tasks?limit=${LIST_LIMIT}`),
      getJson(`${API}/schedule/queue-stats`),
    ])
      .then(([list, stats]) => {
        renderTasks(list.tasks);
        renderStats(stats);
      })
      .catch((error) => say(status, errorText(error), "error"))
      .finally(() => {
        refreshing = null;
      });
    return refreshing;
  }

  async function act(label, action) {
    try {
      const answer = await action();
      say(status, answer.message ?? label);
    } catch (error) {
      say(status, errorText(error), "error");
    }
    await refresh();
  }

  function renderTasks(tasks) {
    const rows = tasks.map((task) => {
      const path = `${API}/schedule/task/${task.task_id}`;
      const actions = el("td");
      if (task.status === "pending") {
        actions.append(
          button("Render", () => act("rendering", () => sendJson("POST", `${API}/schedule/render/${task.task_id}`))),
        );
      }
      const finished = ["completed", "failed", "cancelled"].includes(task.status);
      actions.append(
        button(finished ? "Delete" : "Cancel", () =>
          act("done", async () => (await request(path, { method: "DELETE" })).json()),
        ),
      );
      return el(
        "tr",
        { dataset: { taskId: task.task_id, status: task.status } },
        el("td", { title: task.task_id }, task.task_id.slice(0, 8)),
        el("td", {}, task.priority),
        el("td", { className: "task-status" }, task.status),
        el("td", {}, el("progress", { max: 1, value: task.progress ?? 0 })),
        el("td", {}, new Date(task.created_at).toLocaleTimeString()),
        actions,
      );
    });
    document.querySelector("#schedule-table tbody").replaceChildren(...rows);
  }

  function renderStats(stats) {
    const entries = [
      ["total", stats.total_tasks],
      ...Object.entries(stats.status_counts ?? {}),
      ...Object.entries(stats.priority_counts ?? {}).map(([name, count]) => [`${name} priority`, count]),
      ["queued, all kinds", stats.queued_tasks],
      ["processing, all kinds", stats.processing_tasks],
      ["workers", stats.worker_concurrency],
      ["average synthesis time", seconds(stats.average_synthesis_time) || "–"],
    ].filter(([, value]) => value !== undefined);
    const box = document.getElementById("queue-stats");
    box.replaceChildren(
      ...entries.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { stat: name } }, String(value))]),
    );
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form, status, async () => {
      const body = filledFields(form, ["text", "voice_id", "format", "priority"]);
      const task = await sendJson("POST", `${API}/schedule/register`, body);
      status.dataset.taskId = task.task_id;
      say(status, `registered ${task.task_id.slice(0, 8)}, queue position ${task.queue_position}`);
      await refresh();
    });
  });

  document.getElementById("render-all").addEventListener("click", () =>
    act("rendering", () => sendJson("POST", `${API}/schedule/render-all?max_tasks=${LIST_LIMIT}`)),
  );
  document.getElementById("schedule-refresh").addEventListener("click", refresh);
  setInterval(() => {
    if (live.checked && !document.hidden) refresh();
  }, REFRESH_MS);

  return refresh;
}
