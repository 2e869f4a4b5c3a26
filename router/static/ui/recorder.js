// Records the microphone with WebAudio and returns a 16-bit mono WAV blob.
//
// MediaRecorder would give webm/ogg, which the API does not take; raw samples from an
// AudioWorklet encode to WAV in a few lines (wav.js).

import { encodeWav } from "./wav.js";

export async function startRecording() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("recording needs a secure page: HTTPS, or this server opened as localhost");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule(new URL("./recorder-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(context, "capture");
  const blocks = [];
  capture.port.onmessage = (event) => blocks.push(event.data);
  source.connect(capture);
  // Connected to the output so that the graph pulls it; it writes silence there.
  capture.connect(context.destination);

  return {
    async stop() {
      stream.getTracks().forEach((track) => track.stop());
      source.disconnect();
      capture.disconnect();
      await context.close();
      const samples = new Float32Array(blocks.reduce((sum, block) => sum + block.length, 0));
      let offset = 0;
      for (const block of blocks) {
        samples.set(block, offset);
        offset += block.length;
      }
      return encodeWav(samples, context.sampleRate);
    },
  };
}
