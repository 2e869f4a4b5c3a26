// Calls to the API of the server that serves this page, with its API key when it needs one.
//
// The key is asked for once, the first time the server answers 401, and kept in
// sessionStorage: it lives as long as the tab, and never leaves for another origin.

export const API = "/api/v3";
const KEY_STORAGE = "cosyvoice.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// Asks for a key again, after the server refused the one it had (a WebSocket close 1008).
export function renewKey(reason) {
  forgetKey();
  return askForKey(reason);
}

// One prompt at a time: requests that meet a 401 together wait for the same answer.
let pendingPrompt = null;

function askForKey(reason) {
  if (!pendingPrompt) {
    pendingPrompt = promptForKey(reason).finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

function promptForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  const form = dialog.querySelector("form");
  dialog.querySelector("#key-reason").textContent = reason;
  form.reset();
  return new Promise((resolve, reject) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = form.elements.api_key.value.trim();
        if (dialog.returnValue === "ok" && key) {
          sessionStorage.setItem(KEY_STORAGE, key);
          document.dispatchEvent(new CustomEvent("api-key-changed"));
          resolve(key);
        } else {
          reject(new ApiError(401, "no API key given"));
        }
      },
      { once: true },
    );
    dialog.showModal();
  });
}

// The `detail` of an error answer, whatever its shape.
async function detailOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const detail = body.detail ?? body.error?.message ?? body;
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch {
    return text || response.statusText;
  }
}

// fetch() with the key; on 401 asks for a (new) key and tries again.
export async function request(path, options = {}) {
  for (;;) {
    const key = storedKey();
    const headers = new Headers(options.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      forgetKey();
      await askForKey(key ? "That key was refused: enter another." : "This server needs an API key.");
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response;
  }
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function sendJson(method, path, body) {
  const response = await request(path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return response.json();
}

export async function sendForm(method, path, form) {
  return (await request(path, { method, body: form })).json();
}

// Audio files need the key too, so they are fetched here and played from a blob: URL.
export async function fetchAudio(audioUrl) {
  return (await request(audioUrl)).blob();
}

// The WebSocket URL of a path on this server.
export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
