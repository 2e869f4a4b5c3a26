"""The browser console at /ui, driven in a real headless Chromium against a real server.

Every flow is done the way a person does it (typing, choosing, clicking) and judged by
what the page itself hears: the played audio is decoded in the page with WebAudio
(`decodeAudioData`), the stream reports when its first chunk started playing, the task's
progress is what the page showed while polling. The microphone is Chromium's fake
capture device playing the English test clip.

Debian's `chromium` package is used (/usr/bin/chromium, which `.ci/run` installs when it
is missing); Playwright never downloads a browser here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, skip_missing_data
from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory, create_voice
from tests.e2e.texts import SENTENCE

pytestmark = pytest.mark.skipif(
    PROFILE != "embedded",
    reason="a browser session over a minute long; the page calls the same API in every profile",
)

UI_DIR = REPO_ROOT / "router" / "static" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A microphone without a person: granted at once, fed from a file (see `browser`).
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
TIMEOUT_MS = 60_000
STREAM_ENDS = ("streamed", "played", "error")

# Decodes the audio an <audio> element plays, in the page, as a listener's browser would.
DECODE_PLAYED = """async (selector) => {
  const player = document.querySelector(selector);
  const bytes = await (await fetch(player.src)).arrayBuffer();
  const context = new OfflineAudioContext(1, 1, 48000);
  const buffer = await context.decodeAudioData(bytes);
  let peak = 0;
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    for (const sample of buffer.getChannelData(c)) peak = Math.max(peak, Math.abs(sample));
  }
  return {duration: buffer.duration, sampleRate: buffer.sampleRate,
          channels: buffer.numberOfChannels, peak, bytes: bytes.byteLength};
}"""


@pytest.fixture(scope="module")
def browser(english_clip: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        skip_missing_data(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_missing_data("the playwright package is missing: pip install -e '.[test]'")
    microphone = tmp_path_factory.mktemp("microphone") / "speech.wav"
    microphone.write_bytes(english_clip)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"],
        )
        yield chromium
        chromium.close()


class Console:
    """One browser tab on /ui, failing the test on any JavaScript error in the page."""

    def __init__(self, browser: Any, server: ApiServer) -> None:
        self.server = server
        self.context = browser.new_context(base_url=server.url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    def open(self, ready: bool = True) -> Any:
        self.page.goto("/ui")
        if ready:
            self.page.wait_for_selector("body[data-ready=true]", state="attached")
        return self.page

    def played(self, selector: str) -> dict[str, float]:
        return self.page.evaluate(DECODE_PLAYED, selector)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, server: ApiServer) -> Iterator[Console]:
    tab = Console(browser, server)
    yield tab
    tab.close()
    # A refused request is logged by the browser as an error too: only uncaught ones count.
    assert not [e for e in tab.errors if "Failed to load resource" not in e], tab.errors


def upload_voice(server: ApiServer, clip: bytes, headers: dict[str, str] | None = None) -> str:
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        return create_voice(http, clip, prefix="console")


@pytest.fixture
def voice(server: ApiServer, english_clip: bytes) -> str:
    return upload_voice(server, english_clip)


def test_page_is_served_without_a_build_step(server: ApiServer) -> None:
    page = httpx.get(f"{server.url}/ui", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    for path in sorted(UI_DIR.iterdir()):
        served = httpx.get(f"{server.url}/ui/{path.name}")
        assert served.status_code == 200 and served.content == path.read_bytes(), path.name
        if path.suffix == ".js":  # a module script must come as JavaScript
            assert "javascript" in served.headers["content-type"], served.headers
        # Nothing is loaded from the internet.
        assert "http://" not in served.text and "https://" not in served.text, path.name


def test_voice_upload_edit_delete(console: Console, english_clip: bytes) -> None:
    page = console.open()
    voice_id = f"ui_{uuid.uuid4().hex[:8]}"
    form = page.locator("#voice-form")
    form.locator("[name=voice_id]").fill(voice_id)
    form.locator("[name=name]").fill("Uploaded in the console")
    form.locator("[name=language]").fill("en")
    form.locator("[name=audio_file]").set_input_files(
        {"name": "clip.wav", "mimeType": "audio/wav", "buffer": english_clip}
    )
    form.locator("button[type=submit]").click()
    row = page.locator(f"#voice-table tr[data-voice-id={voice_id}]")
    row.wait_for()
    assert "Created" in page.locator("#voice-status").inner_text()
    assert float(row.locator("td").nth(4).inner_text().removesuffix(" s")) > 10  # 13.8 s clip
    stored = httpx.get(f"{console.server.url}/api/v3/voices/{voice_id}").json()
    assert stored["name"] == "Uploaded in the console" and stored["language"] == "en"
    # The new voice is offered by every voice picker.
    assert page.locator(f"#speak-form option[value={voice_id}]").count() == 1

    row.get_by_role("button", name="Edit").click()
    dialog = page.locator("#voice-edit")
    dialog.locator("[name=name]").fill("Renamed in the console")
    dialog.locator("[name=description]").fill("edited")
    dialog.get_by_role("button", name="Save").click()
    page.locator(f"#voice-table tr[data-voice-id={voice_id}] td", has_text="Renamed").wait_for()
    stored = httpx.get(f"{console.server.url}/api/v3/voices/{voice_id}").json()
    assert stored["name"] == "Renamed in the console" and stored["description"] == "edited"

    page.once("dialog", lambda confirm: confirm.accept())
    row.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert httpx.get(f"{console.server.url}/api/v3/voices/{voice_id}").status_code == 404


def test_voice_recorded_from_the_microphone(console: Console) -> None:
    page = console.open()
    page.click("#record-start")
    page.wait_for_selector("#record-stop:not([disabled])")
    page.wait_for_timeout(3000)
    page.click("#record-stop")
    page.wait_for_selector("#recording:not([hidden])")
    recorded = console.played("#recording")
    assert 2.5 <= recorded["duration"] <= 6, recorded
    assert recorded["peak"] > 0.05, f"the recording is silent: {recorded}"

    voice_id = f"mic_{uuid.uuid4().hex[:8]}"
    form = page.locator("#voice-form")
    form.locator("[name=voice_id]").fill(voice_id)
    form.locator("[name=name]").fill("Recorded")
    form.locator("button[type=submit]").click()
    page.locator(f"#voice-table tr[data-voice-id={voice_id}]").wait_for()
    stored = httpx.get(f"{console.server.url}/api/v3/voices/{voice_id}").json()
    assert stored["audio_format"] == "wav"
    assert abs(stored["duration"] - recorded["duration"]) < 0.1, (stored, recorded)


def speak(page: Any, voice_id: str, fmt: str, speed: float, instruct: str = "") -> dict[str, str]:
    form = page.locator("#speak-form")
    form.locator("[name=voice_id]").select_option(voice_id)
    form.locator("[name=format]").select_option(fmt)
    form.locator("[name=speed]").fill(str(speed))
    form.locator("[name=instruct_text]").fill(instruct)
    page.evaluate("delete document.querySelector('#speak-audio').dataset.duration")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#speak-audio[data-duration]", state="attached")
    return page.evaluate("({...document.querySelector('#speak-audio').dataset})")


def test_speak_plays_each_format(console: Console, voice: str) -> None:
    page = console.open()
    page.locator("#speak-form [name=text]").fill(SENTENCE * 2)
    formats = page.eval_on_selector_all(
        "#speak-form [name=format] option", "o => o.map(x => x.value)"
    )
    assert {"wav", "mp3", "flac"} <= set(formats)
    heard: dict[str, dict[str, float]] = {}
    for fmt in ("wav", "mp3", "flac"):
        shown = speak(page, voice, fmt, 1.0, instruct="Speak slowly with a happy tone")
        assert shown["format"] == fmt
        heard[fmt] = console.played("#speak-audio")
        assert heard[fmt]["peak"] > 0.05, heard
        # mp3 adds an encoder delay of a frame or two
        assert abs(heard[fmt]["duration"] - float(shown["duration"])) < 0.1, (fmt, heard, shown)
    # The audio element really plays it.
    page.wait_for_function("document.querySelector('#speak-audio').currentTime > 0.2")

    faster = speak(page, voice, "wav", 2.0)
    assert float(faster["duration"]) < 0.75 * heard["wav"]["duration"], (faster, heard)


def stream(page: Any, voice_id: str, chunk_format: str) -> dict[str, str]:
    form = page.locator("#stream-form")
    form.locator("[name=voice_id]").select_option(voice_id)
    form.locator("[name=format]").select_option(chunk_format)
    form.locator("[name=text]").fill(SENTENCE * 8)
    form.locator("button[type=submit]").click()
    # "streamed": every chunk has arrived and is scheduled; playing may still go on.
    page.wait_for_selector(", ".join(f"#stream-status[data-ended={end}]" for end in STREAM_ENDS))
    return page.evaluate("({...document.querySelector('#stream-status').dataset})")


@pytest.mark.parametrize("chunk_format", ["pcm", "wav"])
def test_stream_is_heard_before_it_ends(console: Console, voice: str, chunk_format: str) -> None:
    page = console.open()
    report = stream(page, voice, chunk_format)
    assert report["ended"] in ("streamed", "played"), page.locator("#stream-status").inner_text()
    assert int(report["chunks"]) > 3, report
    assert float(report["audioSeconds"]) > 16, report  # eight long sentences
    assert float(report["peak"]) > 0.05, report
    assert int(report["sampleRate"]) == 22050, report  # quality medium
    # The first chunk started playing while the rest of the stream was still arriving.
    assert int(report["firstAudioMs"]) < int(report["streamEndMs"]), report


def test_task_progress_is_watched_to_completion(console: Console, voice: str) -> None:
    page = console.open()
    form = page.locator("#task-form")
    form.locator("[name=text]").fill((SENTENCE * 20).strip())
    form.locator("[name=voice_id]").select_option(voice)
    form.locator("[name=format]").select_option("mp3")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#task-status[data-status=completed]", state="attached")
    page.wait_for_selector("#task-audio:not([hidden])")
    seen = page.get_attribute("#task-status", "data-seen").split()
    progress = [float(step.split(":")[1]) for step in seen]
    assert progress == sorted(progress), seen
    assert any(0 < p < 1 for p in progress), f"no progress between 0 and 1 was shown: {seen}"
    assert seen[-1] == "completed:1", seen
    heard = console.played("#task-audio")
    assert heard["duration"] > 30 and heard["peak"] > 0.05, heard  # 20 long sentences


def test_schedule_queue_renders_and_counts(console: Console, voice: str) -> None:
    page = console.open()
    form = page.locator("#schedule-form")
    registered = []
    for priority in ("low", "urgent"):
        form.locator("[name=text]").fill(f"A {priority} priority announcement.")
        form.locator("[name=voice_id]").select_option(voice)
        form.locator("[name=priority]").select_option(priority)
        before = page.get_attribute("#schedule-status", "data-task-id")
        form.locator("button[type=submit]").click()
        page.wait_for_function(
            f"document.querySelector('#schedule-status').dataset.taskId !== {before!r}"
            if before
            else "document.querySelector('#schedule-status').dataset.taskId"
        )
        registered.append(page.get_attribute("#schedule-status", "data-task-id"))
    for task_id in registered:
        page.locator(
            f"#schedule-table tr[data-task-id='{task_id}'][data-status=pending]"
        ).wait_for()
    assert int(page.locator("#queue-stats dd[data-stat=pending]").inner_text()) >= 2
    completed_before = int(page.locator("#queue-stats dd[data-stat=completed]").inner_text())

    page.click("#render-all")
    for task_id in registered:  # the page refreshes itself every 2 s
        page.locator(
            f"#schedule-table tr[data-task-id='{task_id}'][data-status=completed]"
        ).wait_for()
    page.wait_for_function(
        "Number(document.querySelector('#queue-stats dd[data-stat=completed]').textContent)"
        f" >= {completed_before + 2}"
    )
    statuses = httpx.get(f"{console.server.url}/api/v3/schedule/tasks?limit=1000").json()["tasks"]
    assert {t["status"] for t in statuses if t["task_id"] in registered} == {"completed"}


KEY = "console-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(API_KEY=KEY)


def test_api_key_is_asked_once_and_used_everywhere(
    browser: Any, keyed_server: ApiServer, english_clip: bytes
) -> None:
    voice_id = upload_voice(keyed_server, english_clip, {"Authorization": f"Bearer {KEY}"})
    tab = Console(browser, keyed_server)
    try:
        page = tab.open(ready=False)
        dialog = page.locator("#key-dialog")
        dialog.wait_for()
        assert "needs an API key" in dialog.inner_text()
        dialog.locator("[name=api_key]").fill("not-the-key")
        dialog.get_by_role("button", name="Use key").click()
        page.locator("#key-reason", has_text="refused").wait_for()
        dialog.locator("[name=api_key]").fill(KEY)
        dialog.get_by_role("button", name="Use key").click()
        page.wait_for_selector("body[data-ready=true]", state="attached")
        page.locator(f"#voice-table tr[data-voice-id={voice_id}]").wait_for()

        # Kept for the tab: a reload does not ask again, and audio downloads carry it.
        page.reload()
        page.wait_for_selector("body[data-ready=true]", state="attached")
        assert not dialog.is_visible()
        page.locator("#speak-form [name=text]").fill(SENTENCE)
        shown = speak(page, voice_id, "wav", 1.0)
        assert tab.played("#speak-audio")["peak"] > 0.05, shown
        # The WebSocket authenticates with its first message.
        report = stream(page, voice_id, "pcm")
        assert report["ended"] in ("streamed", "played") and float(report["audioSeconds"]) > 16, (
            report
        )
        assert not dialog.is_visible()
    finally:
        tab.close()
    refused = [e for e in tab.errors if "Failed to load resource" not in e]
    assert not refused, tab.errors
