"""/taskflow in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

While a job runs, the page must render its plots, and every panel must show non-zero data equal
to ``/taskflow/json`` for the same snapshot. A screenshot is saved in the test's tmp dir. Skips
with the reason when chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

import taskflow as tf
from tests.taskflow.dashboard.dashboard_helpers import FakeJob, get_json, page_url, wait_for

CHROMIUM = os.environ.get("TASKFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKFLOW_CHROMEDRIVER", "/usr/bin/chromedriver")


def _missing() -> list[str]:
    missing = [f"{what} ({path})" for what, path in (("chromium", CHROMIUM),
                                                    ("chromedriver", CHROMEDRIVER))
               if not os.access(path, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip)")
    return missing


MISSING = _missing()
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: apt-get install "
                       "chromium chromium-driver; pip install selenium (.ci/run does both)"),
    pytest.mark.timeout(120),
]
# Flags: no GPU and no sandbox in containers; the background-networking ones stop chromium
# phoning home (on a closed network those calls otherwise refuse connections and stall it).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")

# One synchronous read of every named source, so no websocket patch lands in the middle;
# ``tf-tick-begin`` and ``tf-meta`` bracket each update (a sequence lock, see dashboard_page).
READ_PAGE = """
const doc = Bokeh.documents.length ? Bokeh.documents[0] : null;
if (!doc) return null;
const out = {};
for (const name of ["tf-tick-begin", "tf-meta", "tf-rate-total", "tf-rate-workers", "tf-layers",
                    "tf-jobs", "tf-jobs-finished", "tf-policies", "tf-workers"]) {
  const m = doc.get_model_by_name(name);
  if (!m) return null;
  const cols = {};
  for (const [k, v] of Object.entries(m.data))
    cols[k] = Array.from(v, (x) => (x && typeof x !== "string" && x.length !== undefined)
                                   ? Array.from(x) : x);
  out[name] = cols;
}
let canvases = 0, rows = [];
(function walk(n) {
  if (n.shadowRoot) walk(n.shadowRoot);
  for (const c of n.children || []) {
    if (c.tagName === "CANVAS" && c.width > 0) canvases += 1;
    if (c.classList && c.classList.contains("slick-row")) rows.push(c.textContent);
    walk(c);
  }
})(document.body);
out.canvases = canvases; out.rows = rows;
return out;
"""


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def consistent_read(driver) -> dict | None:
    from selenium.common.exceptions import TimeoutException

    try:
        page = driver.execute_script(READ_PAGE)
    except TimeoutException:  # a loaded machine's renderer was busy past the script timeout:
        return None           # read again (wait_for bounds the whole wait)
    if page and page["tf-tick-begin"]["tick"] == page["tf-meta"]["tick"]:
        return page
    return None


def test_page_renders_live_data_equal_to_json(cluster, browser, tmp_path):
    url = page_url(cluster)
    job = FakeJob(cluster.client, "browser", 4000, broken=frozenset({3}),
                  title="browser-nightly").start()
    browser.get(url)

    def rendered():
        page = consistent_read(browser)
        ok = (page and page["canvases"] >= 4 and len(page["tf-workers"]["worker"]) == 2
              and all(r > 0 for r in page["tf-workers"]["samples_per_s"])
              and any(t > 0 for t in page["tf-rate-total"]["total"])
              and page["tf-jobs"]["done"] and page["tf-jobs"]["done"][0] > 0
              and page["tf-layers"]["share"])
        return ok and page
    page = wait_for(rendered, timeout=60, interval=0.2, what="plots with live data")
    assert job.thread.is_alive(), "the job should still be running"
    snap = get_json(f"{url}/json?tick={page['tf-meta']['tick'][0]}")
    browser.save_screenshot(str(tmp_path / "taskflow-dashboard.png"))
    assert snap["tick"] == page["tf-meta"]["tick"][0]

    assert page["tf-meta"]["samples_per_s"][0] == pytest.approx(
        snap["throughput"]["samples_per_s"]) and snap["throughput"]["samples_per_s"] > 0
    hist = snap["throughput"]["history"]
    assert page["tf-rate-total"]["total"] == pytest.approx(hist["total"])
    assert page["tf-rate-total"]["t"] == pytest.approx([t * 1000 for t in hist["t"]])
    for w, ys in zip(page["tf-rate-workers"]["worker"], page["tf-rate-workers"]["ys"]):
        assert ys == pytest.approx(hist["workers"][w]["rate"])

    workers = {a: w for a, w in snap["workers"].items() if w["present"]}
    table = page["tf-workers"]
    assert sorted(table["worker"]) == sorted(workers)
    for i, a in enumerate(table["worker"]):
        w = workers[a]
        assert (table["samples"][i], table["chunks"][i], table["nthreads"][i]) == \
            (w["samples"], w["chunks"], w["nthreads"])
        assert table["samples_per_s"][i] == pytest.approx(w["samples_per_s"])
        assert table["kernel_threads"][i] == w["threads"]["kernel_threads"] == 1
        assert table["device"][i] == w["device"] == "cpu"
        assert table["memory_mib"][i] == pytest.approx(w["memory"] / 2**20)

    jobs = page["tf-jobs"]
    i = jobs["job"].index("browser-nightly")  # shown by its name, its id beside it
    j = snap["jobs"]["browser"]
    assert jobs["id"][i] == "browser" and j["name"] == "browser-nightly"
    for k in ("done", "in_flight", "failed", "quarantined", "remaining", "total", "state"):
        assert jobs[k][i] == j[k], k
    assert j["state"] == "running" and j["in_flight"] > 0 and j["done"] > 0

    share = snap["layers"]["share"]
    assert dict(zip(page["tf-layers"]["layer"], page["tf-layers"]["share"])) == \
        pytest.approx({k: 100 * v for k, v in share.items()})
    by = snap["policies"]["by_policy"]
    assert page["tf-policies"]["policy"] == sorted(by)
    assert page["tf-policies"]["applied"] == [by[p]["applied"] for p in sorted(by)]

    # What is drawn: the tables' rows show the same numbers (DataTable redraws on each tick).
    last = job.stop()

    def stopped():  # a finished job moves to the compact table of finished jobs
        page = consistent_read(browser)
        return page and "browser-nightly" in page["tf-jobs-finished"]["job"] and page
    done = wait_for(stopped, what="the stopped job on the page")
    ended = done["tf-jobs-finished"]
    k = ended["job"].index("browser-nightly")
    assert (ended["state"][k], ended["chunks"][k]) == ("interrupted", f"{last['done']}/4000")
    assert "browser-nightly" not in done["tf-jobs"]["job"]
    rows = " | ".join(done["rows"])
    assert "browser-nightly" in rows and "interrupted" in rows and f"{last['done']}/4000" in rows
    for a, samples in zip(done["tf-workers"]["worker"], done["tf-workers"]["samples"]):
        assert any(a[:15] in r and str(samples) in r for r in done["rows"]), (a, samples, rows)
