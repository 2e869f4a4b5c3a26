// Streaming over the WebSocket, played with WebAudio as the chunks arrive.
//
// Each chunk is scheduled right after the previous one, so playback starts with the
// first chunk while the server is still rendering the rest. The status line (and its
// data-* attributes) tells when the first chunk started playing and when the stream
// ended, both counted from the moment the request was sent.

import { API, renewKey, socketUrl, storedKey } from "./api.js";
import { say } from "./dom.js";
import { synthesisRequest } from "./speak.js";
import { pcm16ToFloat } from "./wav.js";

const START_LEAD_S = 0.05; // headroom so the first chunk is not cut at its start
const POLICY_VIOLATION = 1008; // the close code of a refused API key

class ChunkPlayer {
  constructor(sentAt) {
    // Created during the click that started the stream, so the browser lets it play.
    this.context = new AudioContext();
    this.sentAt = sentAt;
    this.nextStart = 0;
    this.decoding = Promise.resolve();
    this.stats = { chunks: 0, audioSeconds: 0, peak: 0, sampleRate: 0, firstAudioMs: null };
    this.lastSource = null;
  }

  // Chunks are decoded in arrival order and played back to back.
  add(bytes, format, sampleRate) {
    this.decoding = this.decoding.then(async () => {
      const buffer = await this.decode(bytes, format, sampleRate);
      this.schedule(buffer, sampleRate);
    });
    return this.decoding;
  }

  async decode(bytes, format, sampleRate) {
    if (format === "pcm") {
      const samples = pcm16ToFloat(bytes);
      const buffer = this.context.createBuffer(1, Math.max(samples.length, 1), sampleRate);
      buffer.copyToChannel(samples, 0);
      return buffer;
    }
    // Every wav chunk is a small self-contained file.
    return this.context.decodeAudioData(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  }

  schedule(buffer, sampleRate) {
    const now = this.context.currentTime;
    const startAt = Math.max(now + (this.stats.chunks === 0 ? START_LEAD_S : 0), this.nextStart);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    source.start(startAt);
    this.nextStart = startAt + buffer.duration;
    this.lastSource = source;

    const stats = this.stats;
    if (stats.chunks === 0) stats.firstAudioMs = performance.now() + (startAt - now) * 1000 - this.sentAt;
    stats.chunks += 1;
    stats.audioSeconds += buffer.duration;
    stats.sampleRate = sampleRate;
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) stats.peak = Math.max(stats.peak, Math.abs(samples[i]));
  }

  // Resolves when the last scheduled chunk has played.
  async finished() {
    await this.decoding;
    const remaining = Math.max(0, this.nextStart - this.context.currentTime);
    await new Promise((resolve) => setTimeout(resolve, remaining * 1000));
  }

  stop() {
    if (this.context.state !== "closed") this.context.close();
  }
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function setUpStream() {
  const form = document.getElementById("stream-form");
  const status = document.getElementById("stream-status");
  const stopButton = document.getElementById("stream-stop");
  const submit = form.querySelector("button[type=submit]");
  let current = null; // { socket, player, requestId }

  function report(stats, ended, endMs) {
    Object.assign(status.dataset, {
      chunks: stats.chunks,
      audioSeconds: stats.audioSeconds.toFixed(3),
      peak: stats.peak.toFixed(4),
      sampleRate: stats.sampleRate,
      firstAudioMs: stats.firstAudioMs === null ? "" : Math.round(stats.firstAudioMs),
      streamEndMs: endMs === null ? "" : Math.round(endMs),
      ended,
    });
    const first = stats.firstAudioMs === null ? "…" : `${(stats.firstAudioMs / 1000).toFixed(2)} s`;
    const end = endMs === null ? "…" : `${(endMs / 1000).toFixed(2)} s`;
    say(
      status,
      `first audio played at ${first}, stream ended at ${end}; ` +
        `${stats.chunks} chunks, ${stats.audioSeconds.toFixed(2)} s of audio`,
      ended === "error" ? "error" : ended === "streaming" ? "busy" : "ok",
    );
  }

  function finish() {
    submit.disabled = false;
    stopButton.disabled = true;
    current = null;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (current) return;
    const sentAt = performance.now();
    const player = new ChunkPlayer(sentAt);
    const message = { message_type: "text_request", request_id: `console-${Date.now()}`, ...synthesisRequest(form) };
    message.quality = form.elements.quality.value;
    const socket = new WebSocket(socketUrl(`${API}/ws/stream?client_id=console`));
    current = { socket, player, requestId: message.request_id };
    submit.disabled = true;
    stopButton.disabled = false;
    delete status.dataset.ended;
    say(status, "Connecting…", "busy");
    let endMs = null;
    let outcome = "streaming";

    socket.addEventListener("open", () => {
      const key = storedKey();
      if (key) socket.send(JSON.stringify({ message_type: "auth", api_key: key }));
    });

    socket.addEventListener("message", async (frame) => {
      if (current?.socket !== socket) return; // stopped
      const data = JSON.parse(frame.data);
      switch (data.message_type) {
        case "status":
          socket.send(JSON.stringify(message));
          break;
        case "audio_chunk":
          // A last chunk with no audio only says the stream has ended: nothing to decode.
          if (data.metadata.duration === 0) break;
          await player.add(base64Bytes(data.audio_data), message.format, data.metadata.sample_rate);
          if (endMs === null) report(player.stats, outcome, endMs);
          break;
        case "synthesis_complete":
          endMs = performance.now() - sentAt;
          socket.close();
          await player.decoding; // every chunk is scheduled: the stats are final
          report(player.stats, "streamed", endMs);
          await player.finished();
          if (current?.socket !== socket) return; // stopped while playing
          outcome = "played";
          report(player.stats, outcome, endMs);
          player.stop();
          finish();
          break;
        case "error":
          outcome = "error";
          say(status, `${data.error_code}: ${data.error_message}`, "error");
          status.dataset.ended = "error";
          socket.close();
          player.stop();
          finish();
          break;
      }
    });

    socket.addEventListener("close", (closed) => {
      if (current?.socket !== socket || outcome !== "streaming" || endMs !== null) return;
      player.stop();
      finish();
      if (closed.code === POLICY_VIOLATION) {
        say(status, "The server refused the API key: enter it and stream again.", "error");
        renewKey("The WebSocket refused the key: enter it again.").catch(() => {});
      } else {
        say(status, `Connection closed (${closed.code}) before the stream ended`, "error");
      }
      status.dataset.ended = "error";
    });
  });

  stopButton.addEventListener("click", () => {
    if (!current) return;
    const { socket, player, requestId } = current;
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ message_type: "cancel", request_id: requestId }));
    }
    socket.close();
    player.stop();
    say(status, "Stopped", "ok");
    finish();
  });
}
