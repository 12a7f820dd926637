"""The web page (editing/app.py): served on localhost with nothing from outside, the same run_edit files as
editing.run, one-line errors that leave the server serving, invert once / edit many, Stop, and a real
headless Chromium that uploads the toy scene, edits it red -> blue and reads the result back from the page."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from editing.app import DEFAULT_HOST, AppServer, build_parser, make_server
from editing.app_runs import FINISHED, Editor
from editing.extent import GLOBAL_SHARE
from editing.core.progress import tqdm, watch

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy-red-circle.png"
SOURCE = "a red circle on a gray background"
BLUE, GREEN = "a blue circle on a gray background", "a green circle on a gray background"
# Few steps keep a run to seconds on a CPU; on the default model 12 DDIM steps with 3 null-text Adam steps
# still give a blue (and a green) circle the checker reads (measured with python -m editing.run).
FAST = {"steps": "12", "inner_steps": "3"}
TINY_FAST = {"steps": "3", "inner_steps": "2"}
RUN_TIMEOUT_S = 600  # a generous bound for a loaded 2-core machine; a finished run is seen within a poll
SCREENSHOT = REPO / "docs" / "app.png"


# the progress hook -------------------------------------------------------------------------------------------
def test_progress_reports_iteration_and_updates_only_inside_watch():
    seen = []
    with watch(lambda desc, n, total: seen.append((desc, n, total))):
        for _ in tqdm(range(3), desc="loop", disable=True):
            pass
        bar = tqdm(total=4, desc="manual", disable=False, leave=False)
        bar.update(1)
        bar.update(3)
        bar.close()
    for _ in tqdm(range(2), desc="unwatched", disable=True):
        pass
    assert seen == [("loop", 0, 3), ("loop", 1, 3), ("loop", 2, 3), ("loop", 3, 3),
                    ("manual", 0, 4), ("manual", 1, 4), ("manual", 4, 4)]


def test_a_listener_that_raises_ends_the_loop_between_steps_and_other_threads_are_not_watched():
    class Stop(Exception):
        pass

    bodies, other = [], []

    def listener(desc, n, total):
        if n == 2:
            raise Stop

    def elsewhere():
        other.extend(tqdm(range(5), disable=True))

    with watch(listener), pytest.raises(Stop):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        for i in tqdm(range(10), disable=False, leave=False):
            bodies.append(i)
    assert bodies == [0, 1]  # the third step never began
    assert other == list(range(5))  # a thread of its own: not stopped


# a server on a free localhost port -----------------------------------------------------------------------------
class Served:
    def __init__(self, model, out: Path):
        self.editor = Editor(model, out, reload=lambda dtype: _reload(model, dtype))
        self.server: AppServer = make_server(self.editor, DEFAULT_HOST, 0)
        self.url = self.server.url.rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def call(self, path: str, data: bytes | None = None, form: dict | None = None):
        if form is not None:
            data = json.dumps(form).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def upload(self, path: Path, name: str | None = None) -> str:
        status, body, _ = self.call(f"/api/upload?name={name or path.name}", path.read_bytes())
        assert status == 200, body
        return json.loads(body)["upload"]

    def submit(self, upload: str, options: dict, dtype: str | None = None) -> tuple[int, dict]:
        status, body, _ = self.call("/api/run", form={"upload": upload, "filename": "toy.png", "dtype": dtype,
                                                      "options": options})
        return status, json.loads(body)

    def wait(self, run_id: str) -> dict:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            view = json.loads(self.call(f"/api/run?id={run_id}")[1])
            if view["state"] in FINISHED:
                return view
            time.sleep(0.05)
        raise AssertionError(f"{run_id} did not finish")

    def run(self, upload: str, options: dict, dtype: str | None = None) -> dict:
        status, view = self.submit(upload, options, dtype)
        assert status == 200, view
        return self.wait(view["id"])

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.editor.close()


def _reload(model, dtype: str):
    from editing.core.model import pick_dtype

    pick_dtype(dtype, model.device)  # the page's precision choice: refused the way load_model refuses it
    raise AssertionError("the tests only ask for refused precisions")


@pytest.fixture
def tiny_server(tiny_model, tmp_path):
    served = Served(tiny_model, tmp_path / "out-app")
    yield served
    served.close()


def test_the_server_listens_on_localhost_unless_told_otherwise(tiny_server):
    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert tiny_server.server.server_address[0] == "127.0.0.1"


def test_requests_another_site_makes_through_the_browser_are_refused(tiny_server):
    request = urllib.request.Request(tiny_server.url + "/api/defaults", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 403
    request = urllib.request.Request(tiny_server.url + "/api/upload?name=toy.png", data=TOY.read_bytes(),
                                     headers={"Origin": "http://attacker.example"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 403 and "attacker.example" in json.loads(refused.value.read())["error"]
    assert tiny_server.call("/api/defaults")[0] == 200  # the page itself is served


def test_the_page_loads_nothing_from_outside(tiny_server):
    status, html, headers = tiny_server.call("/")
    assert status == 200
    html = html.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"/app.js", "/app.css"} <= set(assets)
    texts = [html] + [tiny_server.call(a)[1].decode() for a in assets if a.startswith("/")]
    hosts = {h for text in texts for h in re.findall(r"(?i)\b(?:https?:)?//([a-z0-9.\-\[\]:]+)", text)}
    assert hosts <= {"127.0.0.1", "localhost"}, hosts
    assert not re.search(r"(?i)@import|url\(\s*['\"]?(?!data:)[a-z]+:", "\n".join(texts))
    assert "default-src 'self'" in headers["Content-Security-Policy"]  # the browser refuses anything else


def test_bad_input_gives_one_line_messages_and_the_server_keeps_serving(tiny_server, tmp_path):
    not_a_photo = tmp_path / "notes.png"
    not_a_photo.write_text("this is not a picture")
    status, body, _ = tiny_server.call("/api/upload?name=notes.png", not_a_photo.read_bytes())
    assert status == 400 and json.loads(body)["error"].startswith("cannot decode image notes.png")

    upload = tiny_server.upload(TOY)
    base = {"source_prompt": SOURCE, "target_prompts": [BLUE], **TINY_FAST}
    status, view = tiny_server.submit(upload, {**base, "steps": "many"})
    assert status == 400 and view["error"] == "--steps must be a whole number, got 'many'"
    bad = {  # request option -> a fragment of the toolkit's message
        "target_prompts": ([" ".join(["circle"] * 80)], "the text encoder takes at most 77"),
        "edit": ("replace", "Replace needs equal word counts"),
        "blend_words": (["dog"], "the word 'dog' is in none of the prompts"),
    }
    for name, (value, fragment) in bad.items():
        options = {**base, name: value}
        if name == "edit":
            options["target_prompts"] = ["a big blue circle on a gray background"]
        view = tiny_server.run(upload, options)
        assert view["state"] == "error" and fragment in view["message"], (name, view)
        assert "\n" not in view["message"]
    view = tiny_server.run(upload, base, dtype="fp16")
    assert view["state"] == "error" and view["message"] == "fp16 is not supported on the CPU; use --dtype bf16 or fp32"
    assert tiny_server.editor.inversions.computed == 0  # every bad request stopped before the inversion

    view = tiny_server.run(upload, base)  # and a good one still works
    assert view["state"] == "done", view
    assert [i["caption"] for i in view["images"]][2:] == [BLUE]


def test_invert_once_edit_many_and_the_zip_holds_the_run_folder(tiny_server):
    upload = tiny_server.upload(TOY)
    first = tiny_server.run(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE], **TINY_FAST})
    second = tiny_server.run(upload, {"source_prompt": SOURCE, "target_prompts": [GREEN, BLUE],
                                      "cross_replace": "0.5", **TINY_FAST})
    assert first["state"] == second["state"] == "done"
    assert (first["reused"], second["reused"]) == (False, True)
    assert second["reuse_message"].startswith("reused the inversion")
    assert tiny_server.editor.inversions.computed == 1  # the second run did not invert
    # the progress the page shows comes from the loops themselves: the reused run had no inversion loop
    assert first["stages"] == ["DDIM inversion", "null-text optimisation", "editing"]
    assert second["stages"] == ["editing"] and second["progress"] == {"desc": "editing", "n": 3, "total": 3}
    other = tiny_server.run(upload, {"source_prompt": "a red circle", "target_prompts": [BLUE], **TINY_FAST})
    assert other["reused"] is False and tiny_server.editor.inversions.computed == 2  # new prompt, new inversion

    folder = tiny_server.editor.out / second["id"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["target_prompts"] == [GREEN, BLUE] and summary["request"]["cross_replace"] == 0.5
    assert [i["src"].rsplit("/", 1)[1] for i in second["images"]] == ["source.png", "reconstruction.png",
                                                                       "edit-1.png", "edit-2.png"]
    assert second["attention"].endswith("/attention.png")
    status, data, headers = tiny_server.call(second["zip"])
    assert status == 200 and headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == sorted(f"{second['id']}/{p.name}" for p in folder.iterdir())
    assert sorted(second["files"]) == sorted(p.name for p in folder.iterdir())
    status, png, _ = tiny_server.call(second["images"][2]["src"])
    assert status == 200 and png == (folder / "edit-1.png").read_bytes()
    assert tiny_server.call(f"/runs/{second['id']}/..%2Fsummary.json")[0] == 400


def test_a_mask_from_the_captions_is_shown_beside_the_edits(tiny_server):
    upload = tiny_server.upload(TOY)
    view = tiny_server.run(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE, GREEN], "mask": "auto",
                                    **TINY_FAST})
    assert view["state"] == "done", view["message"]
    masks = [i for i in view["images"] if i["caption"].startswith("mask from the captions")]
    assert [m["src"].rsplit("/", 1)[1] for m in masks] == ["mask-1.png", "mask-2.png"]
    summary = json.loads((tiny_server.editor.out / view["id"] / "summary.json").read_text())
    assert summary["request"]["mask"] == "auto" and len(summary["auto_mask_share"]) == 2
    assert f"{summary['auto_mask_share'][0]:.0%} of the image" in masks[0]["caption"]


def test_the_inversion_depth_is_the_request_s_and_auto_is_chosen_per_photo(tiny_server):
    upload = tiny_server.upload(TOY)
    view = tiny_server.run(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE], "depth": "auto", **TINY_FAST})
    assert view["state"] == "done", view["message"]
    summary = json.loads((tiny_server.editor.out / view["id"] / "summary.json").read_text())
    assert summary["request"]["depth"] == "auto" and "auto_mask_share" in summary
    assert summary.get("depth", 1.0) in (0.6, 1.0)  # the tiny model's mask decides which
    status, bad = tiny_server.submit(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE], "depth": "deep",
                                              **TINY_FAST})
    assert status == 400 and bad["error"].startswith("--depth") and "auto" in bad["error"]


def test_the_guidance_may_be_chosen_by_the_edit_s_extent(tiny_server):
    upload = tiny_server.upload(TOY)
    view = tiny_server.run(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE], "guidance": "auto",
                                    "layout_guidance": "auto", **TINY_FAST})
    assert view["state"] == "done", view["message"]
    summary = json.loads((tiny_server.editor.out / view["id"] / "summary.json").read_text())
    assert summary["request"]["guidance"] == "auto" and summary["request"]["layout_guidance"] == "auto"
    local = max(summary["auto_mask_share"]) <= GLOBAL_SHARE  # the tiny model's mask decides which
    assert (summary["guidance"], summary["layout_guidance"]) == ((2.0, 5.0) if local else (7.5, 10.0))
    status, bad = tiny_server.submit(upload, {"source_prompt": SOURCE, "target_prompts": [BLUE], "guidance": "auto",
                                              "inversion": "ddim", **TINY_FAST})
    assert status == 400 and bad["error"].startswith("--guidance auto")


def test_runs_wait_in_one_queue_and_stop_ends_the_running_one(tiny_server):
    upload = tiny_server.upload(TOY)
    long = {"source_prompt": SOURCE, "target_prompts": [BLUE], "steps": "200", "inner_steps": "20"}
    status, view = tiny_server.submit(upload, long)
    while view["state"] == "queued" or not view["progress"].get("n"):
        view = json.loads(tiny_server.call(f"/api/run?id={view['id']}")[1])
        time.sleep(0.02)
    status, other = tiny_server.submit(upload, {**long, **TINY_FAST})  # a second tab: it waits its turn
    assert json.loads(tiny_server.call(f"/api/run?id={other['id']}")[1])["state"] == "queued"
    assert tiny_server.call(f"/api/stop?id={view['id']}", b"")[0] == 200
    stopped = tiny_server.wait(view["id"])
    assert stopped["state"] == "stopped" and "images" not in stopped
    assert not (tiny_server.editor.out / view["id"]).exists()  # nothing written
    assert tiny_server.call(f"/api/zip?id={view['id']}")[0] == 400
    assert tiny_server.wait(other["id"])["state"] == "done"  # the next one ran
    assert tiny_server.editor.inversions.computed == 1  # the half-done inversion was not kept


def test_null_finetune_reuses_the_p2p_inversion_and_shows_its_sweep(tiny_server):
    upload = tiny_server.upload(TOY)
    base = {"source_prompt": SOURCE, "target_prompts": [BLUE], **TINY_FAST}
    assert tiny_server.run(upload, base)["reused"] is False
    view = tiny_server.run(upload, {**base, "method": "null-finetune", "finetune_inner": "1", "sweep": True})
    assert view["state"] == "done" and view["reused"] is True, view
    assert view["sweeps"] == [f"/runs/{view['id']}/sweep.png"] and view["attention"] is None
    assert [t["what"] for t in view["timings"]][:3] == ["inversion", "null fine-tuning", "sampling"]
    assert tiny_server.call(view["sweeps"][0])[0] == 200


def test_learned_embedding_and_imagic_report_their_optimisers_and_invert_per_edit(tiny_server):
    upload = tiny_server.upload(TOY)
    base = {"target_prompts": [BLUE], **TINY_FAST, "embed_steps": "2"}
    learned = tiny_server.run(upload, {**base, "method": "learned-embedding", "interp_steps": "2"})
    assert learned["state"] == "done", learned
    assert learned["stages"][0] == "embedding optimisation" and "generation" in learned["stages"]
    assert learned["reused"] is None and learned["reuse_message"] == ""  # its inversion is per edit
    imagic = tiny_server.run(upload, {**base, "method": "imagic", "unet_steps": "2"})
    assert imagic["state"] == "done", imagic
    assert "UNet fine-tuning" in imagic["stages"]
    assert all(p.grad is None for p in tiny_server.editor.model.unet.parameters())  # the next run starts clean
    assert [t["what"] for t in imagic["timings"]][:3] == ["embedding optimisation", "UNet fine-tuning", "sampling"]


def test_the_app_imports_without_selenium():
    code = "import sys, editing.app; assert not [m for m in sys.modules if m.startswith('selenium')]"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# a real browser ----------------------------------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Chromium flags for a closed network and a root user (see the machines' notes): no sandbox, no GPU, no
# background requests to Google, a fresh profile.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1100")
WINDOW_FRAME_PX = 150  # a headless window is this much taller than the page area it shows
MAX_SCREENSHOT_PX = 1600


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_a_browser_edits_the_toy_scene_red_to_blue_then_green_reusing_the_inversion(default_model, tmp_path,
                                                                                    browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from editing.core.files import atomic_write
    from toyworld.checker import read_scene

    served = Served(default_model, tmp_path / "out-app")
    try:
        page = browser
        page.get(served.url + "/")
        wait = WebDriverWait(page, RUN_TIMEOUT_S, poll_frequency=0.1)
        wait.until(lambda d: d.find_element(By.ID, "steps").get_attribute("value"))  # defaults arrived
        assert page.find_element(By.ID, "method").get_attribute("value") == "p2p"

        def choose(path: Path):
            page.find_element(By.ID, "photo").send_keys(str(path))

        def fill(name: str, text: str):
            box = page.find_element(By.ID, name)
            box.clear()
            box.send_keys(text)

        def run_and_wait() -> dict:
            before = page.find_element(By.ID, "status").get_attribute("data-run")
            page.find_element(By.ID, "run").click()
            wait.until(lambda d: (s := d.find_element(By.ID, "status")).get_attribute("data-run") not in (None, before)
                       and s.get_attribute("data-state") in FINISHED)
            status = page.find_element(By.ID, "status")
            return {"state": status.get_attribute("data-state"), "run": status.get_attribute("data-run")}

        def edit_image() -> np.ndarray:
            src = page.find_element(By.CSS_SELECTOR, "#images img.edit").get_attribute("src")
            with urllib.request.urlopen(src, timeout=60) as response:
                return cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]

        def inversion_seconds() -> float:
            row = page.find_element(By.CSS_SELECTOR, "#timings tr[data-stage=preliminary_training]")
            return float(row.find_elements(By.TAG_NAME, "td")[2].text)

        choose(TOY)
        wait.until(lambda d: d.find_element(By.ID, "preview-box").is_displayed())
        fill("source_prompt", SOURCE)
        fill("target_prompts", BLUE)
        for name, value in FAST.items():
            fill(name, value)
        first = run_and_wait()
        assert first["state"] == "done"
        assert page.find_element(By.ID, "results").get_attribute("data-run") == first["run"]
        scene = read_scene(edit_image())
        assert (scene["colour"], scene["shape"], scene["background"]) == ("blue", "circle", "gray"), scene
        assert page.find_element(By.ID, "reuse").text.startswith("inverted the photo")
        captions = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#images figcaption")]
        assert captions[0] == "source" and captions[1].startswith("reconstruction, PSNR ") and captions[2] == BLUE
        assert page.find_element(By.ID, "attention-box").is_displayed()
        first_inversion_s = inversion_seconds()
        page.execute_script("window.scrollTo(0, 0)")  # the whole page in one picture, for the README
        height = page.execute_script("return document.documentElement.scrollHeight")
        page.set_window_size(1400, min(height + WINDOW_FRAME_PX, MAX_SCREENSHOT_PX))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        atomic_write(SCREENSHOT, page.get_screenshot_as_png())

        fill("target_prompts", GREEN)  # a second edit of the same photo: only the edit runs
        second = run_and_wait()
        assert second["state"] == "done" and second["run"] != first["run"]
        assert page.find_element(By.ID, "reuse").text.startswith("reused the inversion")
        assert served.editor.inversions.computed == 1
        assert inversion_seconds() < first_inversion_s  # the page's own stage timings say it too
        assert read_scene(edit_image())["colour"] == "green"

        bad = tmp_path / "not-a-photo.png"
        bad.write_bytes(b"plain text, not pixels")
        choose(bad)
        error = page.find_element(By.ID, "error")
        wait.until(lambda d: error.is_displayed())
        assert error.text.startswith("error: cannot decode image not-a-photo.png")
        choose(TOY)  # and a good run after it still works
        wait.until(lambda d: not error.is_displayed() and d.find_element(By.ID, "preview-box").is_displayed())
        fill("target_prompts", BLUE)
        page.find_element(By.ID, "auto_mask").click()  # and edit only where the captions disagree
        third = run_and_wait()
        assert third["state"] == "done"
        assert read_scene(edit_image())["colour"] == "blue"
        captions = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#images figcaption")]
        assert captions[-1].startswith("mask from the captions (") and captions[-1].endswith(BLUE)
        assert not page.find_element(By.ID, "error").is_displayed()
    finally:
        served.close()
