"""The JavaScript example at the end of the original API document, run with node.

The example is run as written, inside an async function (it uses top-level awaits),
with `audioFile` a Blob of the English test clip, the server's address in place of
localhost:8012 and a fresh voice id in place of `my_voice`. Its WebSocket part needs a
global WebSocket, which node has from version 22 on and node 20/21 behind
`--experimental-websocket`; on a node with neither that part is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.conftest import REPO_ROOT, TESTDATA, skip_missing_data
from tests.e2e.conftest import ApiServer

SEED = REPO_ROOT.parent / "shared" / "spec" / "seed-api-doc.txt"
NODE = shutil.which("node")
WS_MARKER = "// WebSocket streaming"


@pytest.fixture(autouse=True)
def _node() -> None:
    if NODE is None:
        skip_missing_data("node is not installed")


def javascript_example() -> tuple[str, str]:
    """The example's HTTP part and its WebSocket part."""
    if not SEED.exists():
        skip_missing_data(f"seed document not found at {SEED}")
    text = SEED.read_text()
    start = text.index("// Create voice\nconst formData")
    end = text.index("# Health check", start)
    example = text[start:end]
    split = example.index(WS_MARKER)
    return example[:split], example[split:]


def websocket_flags() -> list[str] | None:
    """The node flags that give it a global WebSocket (node 22+: none; 20/21: a flag)."""
    assert NODE is not None
    for flags in ([], ["--experimental-websocket"]):
        done = subprocess.run(
            [NODE, *flags, "-e", "process.exit(typeof WebSocket === 'undefined' ? 1 : 0)"],
            capture_output=True,
            timeout=30,
        )
        if done.returncode == 0:
            return flags
    return None


def script(http_part: str, ws_part: str, server: ApiServer, voice_id: str) -> str:
    """The example inside an async function, reporting what a test needs on stdout."""
    ws_run = ""
    if ws_part:
        # After the example's own handlers: wait until its request has been answered.
        ws_run = f"""
  {ws_part}
  const userHandler = ws.onmessage;
  const frames = [];
  await new Promise((resolve, reject) => {{
    const timer = setTimeout(() => reject(new Error('no answer in 60 s')), 60000);
    ws.onmessage = (event) => {{
      userHandler(event);
      const data = JSON.parse(event.data);
      frames.push(data.message_type);
      if (data.message_type === 'synthesis_complete' || data.message_type === 'error') {{
        clearTimeout(timer);
        resolve();
      }}
    }};
    ws.onerror = (event) => {{ clearTimeout(timer); reject(new Error('socket error')); }};
  }});
  ws.close();
  report.ws_frames = frames;
"""
    clip = json.dumps(str(TESTDATA / "cross_lingual_prompt.wav"))
    code = f"""
const fs = require('fs');
const audioFile = new Blob([fs.readFileSync({clip})], {{ type: 'audio/wav' }});
const report = {{}};

async function main() {{
  {http_part}
  report.voice_status = response.status;
  report.synthesis_status = synthesisResponse.status;
  report.audio_url = audio_url;
  {ws_run}
}}

main().then(
  () => {{ console.log(JSON.stringify(report)); }},
  (error) => {{ console.error(error); process.exit(1); }},
);
"""
    ws_url = server.url.replace("http://", "ws://")
    return (
        code.replace("http://localhost:8012", server.url)
        .replace("ws://localhost:8012", ws_url)
        .replace("'my_voice'", f"'{voice_id}'")
    )


def run_node(code: str, tmp_path: Path, flags: list[str] | None = None) -> dict:
    assert NODE is not None
    path = tmp_path / "example.cjs"
    path.write_text(code)
    done = subprocess.run(
        [NODE, *(flags or []), str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_javascript_example_creates_a_voice_and_synthesizes(
    server: ApiServer, tmp_path: Path
) -> None:
    http_part, _ = javascript_example()
    voice_id = f"seed_js_{uuid.uuid4().hex[:8]}"
    report = run_node(script(http_part, "", server, voice_id), tmp_path)
    assert report["voice_status"] == 201
    assert report["synthesis_status"] == 200
    audio = httpx.get(f"{server.url}{report['audio_url']}", timeout=60)
    assert audio.status_code == 200
    assert_speech(audio.content, fmt="wav")


def test_javascript_example_websocket_part(server: ApiServer, tmp_path: Path) -> None:
    flags = websocket_flags()
    if flags is None:
        skip_missing_data("this node has no WebSocket, not even behind --experimental-websocket")
    http_part, ws_part = javascript_example()
    voice_id = f"seed_js_{uuid.uuid4().hex[:8]}"
    report = run_node(script(http_part, ws_part, server, voice_id), tmp_path, flags)
    assert report["voice_status"] == 201
    frames = report["ws_frames"]
    assert frames[0] == "status"
    assert "synthesis_start" in frames and "audio_chunk" in frames
    assert frames[-1] == "synthesis_complete"
