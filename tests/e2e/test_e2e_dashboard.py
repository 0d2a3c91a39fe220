"""The fleet dashboard in a real headless Chromium: a real learner, a real robot, the page's
own buttons pausing the robot through the link, and who may open the page at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import LIVE, Agent, Learner, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REPO = Path(__file__).resolve().parents[2]


def dashboard_link(learner: Learner) -> str:
    r = subprocess.run([sys.executable, "-m", "cloud", "dashboard", "--config", str(learner.cfg)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """One learner and robot for this file's tests: the token test only reads the page and asks the learner
    to re-read its robot table (no state a later test sees); the Chromium test leaves the robot running.
    Kept out of harness.LIVE, which conftest empties after every test: this fixture stops them itself."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    learner = Learner(tmp_path, learner={"learning_starts": 100, "publish_every": 10, "batch_size": 32,
                                         "checkpoint_every": 10**6}).start()
    agent = None
    try:
        agent = Agent(tmp_path, "arm-1", [learner.url], episodes=0, rate_hz=50).start()
        for p in (learner.proc, agent.proc):
            LIVE.remove(p)
        yield learner, agent
    finally:
        if agent is not None:
            agent.kill()
        learner.stop()


def test_the_page_needs_the_admin_token_and_its_posts_need_the_dashboards_header(fleet) -> None:
    learner, _ = fleet
    link = dashboard_link(learner)
    base, token = link.split("/?token=")
    assert request(base + "/") == 403
    assert request(base + "/?token=" + "x" * len(token)) == 403
    assert request(base + "/api/history") == 403
    # the token is traded for a cookie and leaves the address bar
    req = urllib.request.Request(link)
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as got:
        opener.open(req, timeout=10)
    assert got.value.code == 302 and got.value.headers["Location"] == "/"
    cookie = got.value.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert request(base + "/", headers=jar) == 200
    assert request(base + "/api/history", headers=jar) == 200
    # a POST with the cookie alone (a cross-site form) is refused; with the dashboard's header it is not
    assert request(base + "/admin/reload", "POST", headers=jar) == 403
    assert request(base + "/admin/reload", "POST", headers={**jar, "X-Fleetrl-Dashboard": "1"}) == 200
    # another page on this host (same site for cookies, another origin) may not use the cookie
    other = {**jar, "X-Fleetrl-Dashboard": "1", "Origin": "http://127.0.0.1:1"}
    assert request(base + "/admin/reload", "POST", headers=other) == 403
    # the tunnel bridges raw TCP: never on a browser's cookie
    assert request(base + "/admin/tunnel?robot=arm-1&port=22", headers=jar) == 403


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_dashboard_in_chromium_shows_the_fleet_learning_and_pauses_a_robot(fleet, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.common.by import By

    learner, agent = fleet
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    shot = tmp_path / "dashboard.png"
    try:
        driver.get(dashboard_link(learner))
        assert "token=" not in driver.current_url  # traded for the cookie

        def text(css: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)

        wait_for(lambda: text("#policy-version").isdigit() and int(text("#policy-version")) > 0, 120,
                 "the page showing a policy version > 0")
        row = 'tr[data-robot="arm-1"]'
        wait_for(lambda: text(f"{row} .policy").isdigit() and int(text(f"{row} .policy")) > 0, 60,
                 "the robot's row showing it acts with a learned policy")
        driver.find_element(By.CSS_SELECTOR, f"{row} button.pause").click()
        wait_for(lambda: agent.status().get("control", {}).get("paused") == "operator_pause", 30,
                 "the robot paused by the page's button")
        wait_for(lambda: text(f"{row} .paused") == "operator_pause" and text(f"{row} button.pause") == "Resume", 30,
                 "the page showing the robot paused (as the robot reports it)")
        steps = agent.status()["control"]["steps"]
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("FLEETRL_ARTIFACTS"):  # CI keeps it as an artifact
            shutil.copy(shot, Path(os.environ["FLEETRL_ARTIFACTS"]) / shot.name)
        assert agent.status()["control"]["steps"] == steps, "a paused robot takes no steps"
        driver.find_element(By.CSS_SELECTOR, f"{row} button.pause").click()  # now "Resume"
        wait_for(lambda: agent.status()["control"]["paused"] == "" and agent.status()["control"]["steps"] > steps, 30,
                 "the robot running again after Resume")
        # "Checkpoint now" saves what --resume continues from, between two updates
        ckpt = learner.data_dir / "checkpoints" / "learner.safetensors"
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        driver.find_element(By.CSS_SELECTOR, "#checkpoint").click()
        toast = driver.find_element(By.CSS_SELECTOR, "#toast")
        wait_for(lambda: "saved at update" in str(toast.get_attribute("textContent")), 60, "the page confirming the checkpoint")
        assert ckpt.stat().st_mtime_ns > before
        # the charts drew the learner's curves from its history and the live feed
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-buffer polyline")
        history = json.loads(driver.execute_script(
            "return fetch('/api/history').then(r => r.text())"))
        assert history and history[-1]["buffer_rows"] > 0
    finally:
        driver.quit()


def test_a_diverged_loss_reaches_the_page_as_null_not_as_invalid_json() -> None:
    from cloud.dashboard import to_json

    text = to_json({"losses": {"critic_loss": float("nan"), "actor_loss": float("inf"), "alpha": 0.5}, "p": [float("-inf"), 1]})
    assert json.loads(text) == {"losses": {"critic_loss": None, "actor_loss": None, "alpha": 0.5}, "p": [None, 1]}
    assert "NaN" not in text and "Infinity" not in text  # what JSON.parse refuses
