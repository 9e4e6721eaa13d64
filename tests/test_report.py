"""`snakemake all --report` on the trained demo: the data (with the demo's broken inputs rejected), the
caches and the training are in the report, and the page works in a real headless browser."""

from __future__ import annotations

import base64
import csv
import fcntl
import html
import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from conftest import run_snakemake

from longcat.data.demo import DEMO_REJECTS
from longcat.report.training import TRAINING_FIGURES

pytestmark = pytest.mark.slow

DATA_FILES = {"summary.html", "rejects.csv", "estimate.html", "duration.svg", "fps.svg", "aspect.svg"}
DATA_FILES |= {"buckets.svg", "caption_words.svg"}
CACHE_FILES = {"shards.html", "throughput.svg", "caption_tokens.svg"}
TRAINING_FILES = {f"{name}.svg" for name in TRAINING_FIGURES} | {"videos.html", "record.html"}
# Per validation step: the prompt's video, and a held-out clip through the VAE and as each task renders it.
STEP_VIDEOS = [
    "video-00",
    "heldout-clip",
    "heldout-text_to_video",
    "heldout-image_to_video",
    "heldout-continuation",
]
VIDEOS = {f"step-{step}/{name}.mp4" for step in (80, 160) for name in STEP_VIDEOS} | {"sample-00.mp4"}


# A sample prompt that would end a <script> element of the report and run one of its own, were it shown
# unescaped: the report shows the sample job's params (the prompts) and the prompts beside the videos.
PROMPT = 'a red square moving across a blue background </script><script>document.title = "injected"</script>'
SAMPLE_PROMPTS = {"sample": {"prompts": [PROMPT]}}


@pytest.fixture(scope="module")
def report_zip(trained_demo, tmp_path_factory) -> Path:
    """`snakemake all` (samples and the report's figures) on the trained demo, then its report as a zip."""
    run_snakemake(trained_demo, "all", config=SAMPLE_PROMPTS)
    path = tmp_path_factory.mktemp("report") / "report.zip"
    run_snakemake(trained_demo, "all", "--report", str(path), config=SAMPLE_PROMPTS)
    return path


def test_report_holds_the_data_the_caches_and_the_training(report_zip):
    with zipfile.ZipFile(report_zip) as archive:
        files = {PurePosixPath(name): archive.read(name) for name in archive.namelist()}
    names = {path.name for path in files}
    assert DATA_FILES | CACHE_FILES | TRAINING_FILES <= names, sorted(names)
    for video in VIDEOS:
        assert any(str(path).endswith(video) for path in files), f"{video} is not in the report"
    assert all(
        files[path].startswith(b"<?xml") and b"<svg" in files[path] for path in files if path.suffix == ".svg"
    )

    def one(name: str) -> bytes:
        (data,) = [data for path, data in files.items() if path.name == name]
        return data

    rejects = list(csv.DictReader(io.StringIO(one("rejects.csv").decode())))
    assert {row["key"]: row["reason"] for row in rejects} == DEMO_REJECTS
    summary = one("summary.html").decode()
    assert '<td>accepted</td><td class="number">12</td>' in summary and "broken-truncated.mp4" in summary

    # Three shards of four clips, every clip encoded, a time per shard job from its benchmark table.
    shards = one("shards.html").decode()
    rows = re.findall(
        r"<tr><td>(\d{5})</td><td class=\"number\">(\d+)</td><td class=\"number\">(\d+)</td>", shards
    )
    assert rows == [(f"{index:05d}", "4", "4") for index in range(3)]
    per_shard = shards.split("<h2>Shards</h2>")[1].split("<h2>")[0]
    assert "<td>-</td>" not in per_shard, "a shard job without its benchmark time"
    # The demo's broken inputs, beside the caches (which fail no clip).
    not_trained = shards.split("<h2>Clips that do not train</h2>")[1].split("<h2>")[0]
    assert "<td>probe</td><td>truncated</td>" in not_trained and "cache</td>" not in not_trained

    # The video page plays the samples and the validation videos: each embedded whole, as written.
    videos = one("videos.html").decode()
    embedded = [base64.b64decode(data) for data in re.findall(r'src="data:video/mp4;base64,([^"]+)"', videos)]
    assert one("sample-00.mp4") in embedded and len(embedded) == len(VIDEOS)
    assert html.escape(PROMPT) in videos and PROMPT not in videos
    assert "held-out clip clip-002.mp4, image to video from its first frame" in videos

    # What was trained: one start of 160 steps on 9 of the demo's 12 samples, from the base model.
    trained = one("record.html").decode()
    assert "160 steps, from the base model's weights" in trained
    assert re.search(
        r"<td>1-160</td><td>[^<]+</td><td class=\"number\">2</td><td class=\"number\">9</td>", trained
    )
    assert "3 samples held out, never trained on; the held-out loss is computed on clip-001.mp4" in trained
    assert "<td>train.learning_rate</td><td>0.003</td>" in trained

    page = one("report.html").decode()
    results = json.loads(
        re.search(r'<script id="results">\s*var results = (.*?);?\s*</script>', page, re.S)[1]
    )
    rules = {entry["job_properties"]["rule"] for entry in results.values()}
    assert {"report_data", "report_estimate", "report_caches", "report_training", "sample"} <= rules
    # The sample job's params hold the prompt, escaped: it ends no <script> element of the page.
    assert "</script><script>document.title" not in page
    sample = next(entry for entry in results.values() if entry["job_properties"]["rule"] == "sample")
    assert "\\u003c/script\\u003e" in sample["job_properties"]["params"]


def test_training_figures_of_a_resumed_run_keep_the_steps_logged_last(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from longcat.report.training import read_tensorboard, scalar_figure

    # A run stopped after step 8, resumed from its checkpoint at step 5: steps 6-8 are logged twice.
    for steps, value in ((range(1, 9), 2.0), (range(6, 13), 1.0)):
        writer = SummaryWriter(str(tmp_path / "tb"))
        for step in steps:
            writer.add_scalar("train/loss", value, step)
            writer.add_scalar("loss_by_sigma/0.0-0.2", value / 2, step)
        writer.close()

    scalars, _ = read_tensorboard(tmp_path / "tb")
    steps, values = scalars["train/loss"]
    assert steps.tolist() == list(range(1, 13)) and values.tolist() == [2.0] * 5 + [1.0] * 7
    scalar_figure(scalars, "loss_by_sigma", tmp_path / "sigma.svg")
    scalar_figure(scalars, "mfu", tmp_path / "mfu.svg")
    assert "0.0-0.2" in (tmp_path / "sigma.svg").read_text()
    assert "perf/mfu was not logged by this run" in (tmp_path / "mfu.svg").read_text()


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt when missing (root only); skip with the reason otherwise."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"could not install chromium: {(result.stderr or result.stdout).strip()[-300:]}")
    return found


def _above_ten(fd: int) -> int:
    """The same pipe end as a descriptor numbered 10 or more (the original is closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out): no extra
    package. Collects uncaught exceptions and console errors of the page it opens."""

    def __init__(self, binary: str, profile: Path):
        # Pipe ends at fds 10 and up: bash below moves them to 3 and 4 without overwriting one.
        to_browser, self._commands = (_above_ten(fd) for fd in os.pipe())
        self._events, from_browser = (_above_ten(fd) for fd in os.pipe())
        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
        ]
        args += ["--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")

        # bash (sh may not take fds above 9) hands the pipes over as fds 3 and 4, where Chromium reads them.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "bash", *args],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.errors, self.session = b"", 0, [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._events, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        params = message.get("params", {})
        if message.get("method") == "Runtime.exceptionThrown":
            self.errors.append(
                params["exceptionDetails"].get("exception", {}).get("description", str(params))
            )
        elif message.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(
                " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
            )
        elif message.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        return message

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        while self._message().get("method") != "Page.loadEventFired":
            pass

    def evaluate(self, script: str):
        """The value of an async JavaScript function body."""
        result = self.call(
            "Runtime.evaluate",
            expression=f"(async () => {{{script}}})()",
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"]["value"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._commands)
        os.close(self._events)


# Show each category and subcategory of the report in turn and collect the text the page then shows.
LIST_RESULTS = """
const shown = {};
for (const category of Object.keys(categories)) {
  for (const subcategory of Object.keys(categories[category])) {
    app.setView({navbarMode: "menu"});
    await new Promise((resolve) => setTimeout(resolve, 50));
    app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
    await new Promise((resolve) => setTimeout(resolve, 100));
    shown[category + "/" + subcategory] = document.body.innerText;
  }
}
return shown;
"""
# Wait for every <video> of the page to decode its first frame (or fail), then say what each holds.
PLAY_VIDEOS = """
const videos = Array.from(document.querySelectorAll("video"));
await Promise.all(videos.map((video) => video.readyState >= 2 ? null : new Promise((resolve) => {
  video.addEventListener("loadeddata", resolve);
  video.addEventListener("error", resolve);
})));
return videos.map((video) => ({width: video.videoWidth, error: video.error && video.error.code}));
"""


def test_report_opens_in_a_browser_without_errors(report_zip, tmp_path):
    chromium = ensure_chromium()
    with zipfile.ZipFile(report_zip) as archive:
        archive.extractall(tmp_path / "unzipped")
    (page,) = (tmp_path / "unzipped").glob("*/report.html")
    (videos,) = (tmp_path / "unzipped").rglob("videos.html")
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        shown = browser.evaluate(LIST_RESULTS)
        titles = [browser.evaluate("return document.title;")]
        browser.open(videos.as_uri())
        played = browser.evaluate(PLAY_VIDEOS)
        titles.append(browser.evaluate("return document.title;"))
    finally:
        browser.close()
    assert not browser.errors, browser.errors
    assert "injected" not in titles, "a sample prompt ran as script"

    assert set(shown) == {
        "Caches/Shards",
        "Data/Clips",
        "Data/Figures",
        "Training/Figures",
        "Training/Run",
        "Training/Samples",
        "Training/Validation videos",
        "Training/Videos",
    }
    assert all(name in shown["Data/Figures"] for name in ("duration.svg", "aspect.svg", "buckets.svg"))
    assert all(f"{name}.svg" in shown["Training/Figures"] for name in TRAINING_FIGURES)
    assert "summary.html" in shown["Data/Clips"] and "shards.html" in shown["Caches/Shards"]
    assert re.search(
        r"step 0000080 video-00.*step 0000160 video-00", shown["Training/Validation videos"], re.S
    )
    assert "sample-00" in shown["Training/Samples"]
    # Chromium decodes every embedded video: the page plays them.
    assert len(played) == len(VIDEOS) and all(
        video["width"] > 0 and not video["error"] for video in played
    ), played
