"""Pictures checked in a real browser (Debian's chromium via chromedriver): the guild
dashboard, the ``/ops`` page and its charts, and the plan SVG.

Each picture is rendered with realistic data (0, 1, 2 and many items; long and hostile
names; huge and tiny values), loaded into one browser session shared by the module, and
measured there: axes have ticks and a unit and a scale that fits the data, text boxes
(``getBBox()`` mapped to the screen) do not overlap and stay inside their chart, counts
are pluralized, names stand where the caches have them, ids where they do not, and the
pages fit 1280x800 and a 390x844 phone without sideways scrolling. Screenshots are saved
as PNG under pytest's tmp dir (look at them: the assertions cannot judge beauty).

The end-to-end part runs a real stack (simulator, config service, a gateway pod, the
proxy): names come from the pod's discord.py guild cache; a pod that is down costs the
names, not the page; a config database that is down gives an HTML page that says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from conftest import ADMIN, PG_URL, AppServer, eventually, running_config

from config_store.charts import before_after, load_bars, skew_line
from config_store.ops_page import render as render_ops
from config_store.store import PodRecord
from gateway_app.dashboard import render_dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LAPTOP = (1280, 800)
PHONE = (390, 844)
NOW = time.time()
POLICY = {
    "threshold": 1.25,
    "clear": 1.1,
    "hold_down": 60.0,
    "cooldown": 300.0,
    "target_epsilon": 0.05,
    "move_budget_per_hour": 20,
}
# names an attacker (any guild owner) or a confused operator can choose
SCRIPT = "<script>window.__pwned=1</script>"
HOSTILE = [
    f"{SCRIPT}Evil",
    '</svg><img src=x onerror="window.__pwned=2">',
    "\"quoted' & <b>bold</b>",
    "\u202eevil\u202c reversed \u2066isolate",
    "Q" * 200,
    "\U0001f389 party \U0001f468\u200d\U0001f469\u200d\U0001f467 \u0645\u0631\u062d\u0628\u0627",
]

# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module (starting one costs about a second)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pictures")


def viewport(driver: Any, size: tuple[int, int]) -> None:
    """Exactly this CSS viewport; a phone one is a mobile one (the viewport meta matters)."""
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def show(driver: Any, tmp: Path, name: str, html: str, size: tuple[int, int] = LAPTOP) -> None:
    """Load a rendered page from a file (no server needed) at ``size``."""
    path = tmp / f"{name}.html"
    path.write_text(html)
    viewport(driver, size)
    driver.get(path.as_uri())


def screenshot(driver: Any, tmp: Path, name: str) -> Path:
    """The whole page as PNG (the viewport is stretched to the page's height for it)."""
    path = tmp / f"{name}.png"
    width, height = driver.execute_script(
        "return [innerWidth, document.documentElement.scrollHeight]"
    )
    mobile = width < 600
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": min(height, 8000), "deviceScaleFactor": 1, "mobile": mobile},
    )
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, (name, len(data))
    return path


SVG_TEXT_BOXES = """
const out = [];
for (const svg of document.querySelectorAll(arguments[0])) {
  const f = svg.getBoundingClientRect();
  const texts = [];
  for (const t of svg.querySelectorAll('text')) {
    const own = [...t.childNodes].filter(n => n.nodeType === 3).map(n => n.data).join('');
    if (!own.trim()) continue;
    const b = t.getBBox(), m = t.getScreenCTM();
    const xs = [], ys = [];
    for (const [x, y] of [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height],
                          [b.x + b.width, b.y + b.height]]) {
      xs.push(m.a * x + m.c * y + m.e); ys.push(m.b * x + m.d * y + m.f);
    }
    texts.push({text: own, cls: t.getAttribute('class') || '',
                x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys)});
  }
  out.push({frame: {x0: f.left, x1: f.right, y0: f.top, y1: f.bottom}, texts: texts});
}
return out;
"""


def charts(driver: Any, selector: str = "svg") -> list[dict[str, Any]]:
    """Every chart's frame and its text boxes (getBBox() through getScreenCTM())."""
    return list(driver.execute_script(SVG_TEXT_BOXES, selector))


def assert_readable(chart: dict[str, Any]) -> None:
    """No two labels overlap; every label lies inside the chart's frame."""
    texts, f = chart["texts"], chart["frame"]
    for t in texts:
        assert t["x0"] >= f["x0"] - 1 and t["x1"] <= f["x1"] + 1, ("outside the chart", t, f)
        assert t["y0"] >= f["y0"] - 1 and t["y1"] <= f["y1"] + 1, ("outside the chart", t, f)
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            dx = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
            dy = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
            assert dx <= 0.5 or dy <= 0.5, ("labels overlap", a["text"], b["text"])


def value(label: str) -> float:
    """A tick label back to a number (``2.5k`` -> 2500)."""
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(label[-1:], 1.0)
    return float(label[:-1] if scale != 1.0 else label) * scale


def assert_axis(chart: dict[str, Any], unit: str, top: float) -> list[float]:
    """Ticks from 0 (or the axis' start), round and increasing, a unit label, and a last
    tick at or just above the data's ``top`` (the scale fits: not 10x too big)."""
    labels = [t["text"] for t in chart["texts"] if t["cls"] == "tick"]
    numbers = [value(t) for t in labels if re.fullmatch(r"-?[\d.]+[kMG]?", t)]
    assert len(numbers) >= 2, labels
    assert numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True), numbers
    assert any(unit in t["text"] for t in chart["texts"] if t["cls"] == "unit"), unit
    if top > 0:
        assert max(numbers) >= top * 0.999, (numbers, top)
        assert max(numbers) <= top * 2.5 + 1e-12, ("scale does not fit the data", numbers, top)
    return numbers


def page_text(driver: Any) -> str:
    return str(driver.execute_script("return document.body.innerText"))


def assert_no_sideways_scroll(driver: Any) -> None:
    width, inner = driver.execute_script(
        "return [document.documentElement.scrollWidth, innerWidth]"
    )
    assert width <= inner, f"the page scrolls sideways: {width} > {inner}"


CLIPPED = """
const bad = [];
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') || el.closest('.chart-box')) continue;
  const r = el.getBoundingClientRect();
  if (!r.width) continue;
  if (r.right > innerWidth + 1 || r.left < -1) bad.push(el.tagName + ': ' + el.textContent.slice(0, 60));
  const s = getComputedStyle(el);
  if (s.overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 1)
    bad.push('clipped ' + el.tagName + ': ' + el.textContent.slice(0, 60));
}
for (const box of document.querySelectorAll('.chart-box')) {
  const r = box.getBoundingClientRect();
  if (r.right > innerWidth + 1) bad.push('chart box wider than the page');
  if (box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== 'auto')
    bad.push('chart cut off without a scroll bar');
}
return bad;
"""


def assert_not_clipped(driver: Any) -> None:
    """Every text element lies within the viewport's width and overflows no box; a chart
    wider than the page scrolls inside its own box (never the page)."""
    bad = driver.execute_script(CLIPPED)
    assert not bad, bad[:10]


def assert_not_pwned(driver: Any) -> None:
    assert driver.execute_script("return window.__pwned === undefined")
    assert driver.execute_script("return document.querySelectorAll('script, img').length") == 0


# -- realistic data -----------------------------------------------------------------------------


def pod(name: str, *, online: bool = True, db_bytes: int = 0, guilds: int = 0) -> PodRecord:
    return PodRecord(
        name,
        "http://127.0.0.1:9",
        1.0,
        "active",
        online,
        NOW - 3,
        NOW - 600,
        {"db_bytes": db_bytes, "guild_count": guilds},
    )


def history(n: int, span: float = 1800.0, low: float = 1.0, high: float = 2.4) -> list[list[float]]:
    return [
        [NOW - span + span * i / max(n - 1, 1), low + (high - low) * abs(((i % 12) - 6) / 6), 0.1]
        for i in range(n)
    ]


def balance(
    loads: dict[str, float],
    *,
    hot: list[dict[str, Any]] | None = None,
    samples: list[list[float]] | None = None,
    advice: list[str] | None = None,
) -> dict[str, Any]:
    total = sum(loads.values())
    fair = {p: total / len(loads) for p in loads} if loads else {}
    peak = max(loads.values(), default=0.0)
    return {
        "mode": "propose",
        "leader": True,
        "state": "balanced",
        "decision": "watching",
        "policy": POLICY,
        "imbalance": None if not total else peak / (total / len(loads)),
        "skew": None if not total else 0.2,
        "total": total or None,
        "loads": loads,
        "fair": fair,
        "hot": hot or [],
        "advice": advice or [],
        "history": samples or [],
    }


def plan(
    pods: dict[str, tuple[float, float]], moves: list[dict[str, Any]], pid: str = "plan-1"
) -> dict[str, Any]:
    total = sum(a for _, a in pods.values())
    return {
        "id": pid,
        "before": {p: b for p, (b, _) in pods.items()},
        "after": {p: a for p, (_, a) in pods.items()},
        "fair": {p: total / len(pods) for p in pods},
        "moves": moves,
        "moved_load": sum(m["load"] for m in moves),
        "peak_to_mean_before": 1.8,
        "peak_to_mean_after": 1.02,
        "load_unit": "events/s (a guild a pod holds counts at least 1)",
        "reason": "skewed",
        "unfixable": [],
    }


def move(gid: int | str, src: str, dst: str, load: float, kind: str = "guild") -> dict[str, Any]:
    return {"kind": kind, "id": str(gid), "from": src, "to": dst, "load": load}


def days(counts: list[int]) -> list[dict[str, Any]]:
    first = int(NOW // 86400) - len(counts) + 1
    return [
        {"day": time.strftime("%Y-%m-%d", time.gmtime((first + i) * 86400)), "count": c}
        for i, c in enumerate(counts)
    ]


def dashboard(*, names: dict[str, Any] | None, counts: list[int], total: int, authors: int) -> str:
    return render_dashboard(
        {
            "guild_id": "1180000000000000001",
            "settings": {"moderator_role": "1180000000000000002", "mod_log": "1180000000000000003"},
            "names": names,
            "messages_per_day": days(counts),
            "messages": {"total": total, "authors": authors, "deleted": 0},
            "reports_by_reason": {"spam": 2, "harassment": 1},
            "mod_actions_by_type": {},
        },
        pod="gateway-0",
        reason="ring",
        version=7,
    )


def test_numbers_read_as_people_write_them():
    from config_store.charts import clean, human_bytes, number, plural, tick_label

    assert [number(v) for v in (0, 0.00012, 0.5, 12.5, 150, 1500, 12345, 999_999, 4.2e6, 2e12)] == [
        "0", "0.00012", "0.5", "12.5", "150", "1500", "12.3k", "1M", "4.2M", "2T",
    ]  # fmt: skip
    assert [tick_label(v, s) for v, s in ((0, 1e6), (2.5e6, 5e5), (40_000, 10_000), (1.25, 0.25))] == [
        "0", "2.5M", "40k", "1.25",
    ]  # fmt: skip
    assert [human_bytes(b) for b in (0, 812, 40_960, 12_345_678)] == [
        "0 B",
        "812 B",
        "41.0 KB",
        "12.3 MB",
    ]
    assert (plural(0, "move"), plural(1, "move"), plural(2, "guild")) == (
        "0 moves",
        "1 move",
        "2 guilds",
    )
    assert clean("a\u202eb\x00c\nd", 10) == "abc d" and clean("x" * 50, 10) == "x" * 9 + "\u2026"


# -- charts, one by one ---------------------------------------------------------------------------

LOADS = {
    "no pods": {},
    "one pod": {"gateway-0": 12.5},
    "two pods": {"gateway-0": 30.0, "gateway-1": 10.0},
    "many pods": {f"gateway-{i}": float(3 * i + 1) for i in range(24)},
    "idle": {"gateway-0": 0.0, "gateway-1": 0.0},
    "tiny": {"gateway-0": 0.0004, "gateway-1": 0.00012},
    "huge": {"gateway-0": 4.2e6, "gateway-1": 1.25e6, "gateway-2": 900.0},
    "long names": {"gateway-" + "x" * 120: 5.0, "pod-\U0001f389-" + "y" * 50: 3.0},
}


@pytest.mark.parametrize("case", list(LOADS))
def test_load_bars_have_an_axis_that_fits_and_labels_that_do_not_overlap(browser, shots, case):
    loads = LOADS[case]
    fair = {p: sum(loads.values()) / len(loads) for p in loads}
    show(browser, shots, f"load-{case}", f"<body>{load_bars(loads, fair)}</body>")
    (chart,) = charts(browser)
    assert_readable(chart)
    if not loads:
        assert "no pod has reported its load yet" in page_text(browser)
        return
    top = max([*loads.values(), *(f * 1.25 for f in fair.values())])
    assert_axis(chart, "events/s", top)
    names = [t for t in chart["texts"] if t["cls"] == "name"]
    assert len(names) == len(loads)
    if case == "many pods":  # natural order: gateway-2 before gateway-10
        assert [t["text"] for t in names] == [f"gateway-{i}" for i in range(24)]
    for label in names:  # a long name is cut, and cut visibly
        assert len(label["text"]) <= 40 and label["x1"] < chart["frame"]["x0"] + 131
    screenshot(browser, shots, f"load-{case}")
    values = [t["text"] for t in chart["texts"] if t["cls"] == "value"]
    assert len(values) == len(loads)
    assert all(("idle" if case == "idle" else "fair") in v for v in values), values


SKEW = {
    "no samples": [],
    "one sample": history(1),
    "two samples": history(2, span=20),
    "many samples": history(400, span=6 * 3600),
    "flat at 1": history(30, low=1.0, high=1.0),
    "huge": history(30, low=1.0, high=48.0),
}


@pytest.mark.parametrize("case", list(SKEW))
def test_imbalance_chart_has_both_axes_and_level_labels_apart(browser, shots, case):
    samples = SKEW[case]
    # threshold and clear 0.05 apart: their labels must be pushed apart, not drawn over
    svg = skew_line(samples, threshold=1.25, clear=1.2, now=NOW)
    show(browser, shots, f"skew-{case}", f"<body>{svg}</body>")
    (chart,) = charts(browser)
    assert_readable(chart)
    if not samples:
        assert "no samples yet" in page_text(browser)
        return
    texts = [t["text"] for t in chart["texts"]]
    assert "threshold 1.25" in texts and "clear 1.2" in texts and "now" in texts
    ticks = [t for t in chart["texts"] if t["cls"] == "tick" and re.fullmatch(r"[\d.]+", t["text"])]
    y_values = [float(t["text"]) for t in ticks]
    assert len(y_values) >= 2 and min(y_values) <= 1.0
    assert max(y_values) >= max(s[1] for s in samples) and max(y_values) <= max(
        2 * max(s[1] for s in samples), 2.0
    )
    assert any(t["cls"] == "unit" and "peak/mean" in t["text"] for t in chart["texts"])
    assert any(t["cls"] == "unit" and "time" in t["text"] for t in chart["texts"])
    screenshot(browser, shots, f"skew-{case}")
    if len(samples) > 1:  # a time axis counted back from now
        assert any(re.fullmatch(r"-\d+ (s|min|h|d)", t) for t in texts), texts


PLANS = {
    "no moves": plan({"gateway-0": (10.0, 10.0), "gateway-1": (9.0, 9.0)}, []),
    "one move": plan(
        {"gateway-0": (30.0, 20.0), "gateway-1": (10.0, 20.0)},
        [move(1180000000000000011, "gateway-0", "gateway-1", 10.0)],
    ),
    "two moves": plan(
        {"gateway-0": (30.0, 20.0), "gateway-1": (10.0, 15.0), "gateway-2": (5.0, 10.0)},
        [
            move(1180000000000000011, "gateway-0", "gateway-1", 5.0),
            move(3, "gateway-0", "gateway-2", 5.0, kind="shard"),
        ],
    ),
    "many moves, huge": plan(
        {f"gateway-{i}": (1e6 * (i + 1), 2.5e6) for i in range(4)},
        [move(1180000000000000100 + i, "gateway-3", "gateway-0", 1e4 * i) for i in range(30)],
    ),
    "tiny": plan(
        {"gateway-0": (0.003, 0.002), "gateway-1": (0.001, 0.002)},
        [move(1180000000000000011, "gateway-0", "gateway-1", 0.001)],
    ),
}
NAMES = {"1180000000000000011": "Reactiflux", "1180000000000000100": "A" * 200}


@pytest.mark.parametrize("case", list(PLANS))
def test_plan_svg_shows_numbers_per_pod_and_the_move_list(browser, shots, case):
    p = PLANS[case]
    svg = before_after(p, NAMES)
    show(browser, shots, f"plan-{case}", f"<body>{svg}</body>")
    (chart,) = charts(browser)
    assert_readable(chart)
    texts = [t["text"] for t in chart["texts"]]
    joined = "\n".join(texts)
    n = len(p["moves"])
    assert (f"{n} move" if n == 1 else f"{n} moves") in joined
    assert "1 moves" not in joined
    top = max([*p["before"].values(), *p["after"].values(), *p["fair"].values()])
    assert_axis(chart, "events/s", top)
    values = [t["text"] for t in chart["texts"] if t["cls"] == "value"]
    for pod_name in p["before"]:  # a row per pod with its numbers: before -> after
        assert pod_name in texts
    assert sum("\u2192" in v for v in values) == len(p["before"])
    routes = [t["text"] for t in chart["texts"] if t["cls"] == "route"]
    listed = [t["text"] for t in chart["texts"] if t["cls"] == "move"]
    assert len(routes) == len(listed) == min(n, 20)
    for m, route, what in zip(p["moves"], routes, listed, strict=False):
        assert route == f"{m['from']} \u2192 {m['to']}"
        assert m["id"][:12] in what
    if n == 0:
        assert "no moves: this plan changes nothing" in texts
    if case == "one move":
        assert listed == ["1. guild Reactiflux (1180000000000000011)"]
    if n > 20:
        assert f"\u2026 and {n - 20} more moves" in texts
    # the chart is filled: nothing hangs below the last line, no half-empty canvas
    lowest = max(t["y1"] for t in chart["texts"])
    assert chart["frame"]["y1"] - lowest < 30
    screenshot(browser, shots, f"plan-{case}")


def test_plan_svg_is_a_standalone_file_that_parses(tmp_path):
    import xml.etree.ElementTree as ET

    svg = before_after(PLANS["two moves"], {"1180000000000000011": "</svg><img src=x>"})
    root = ET.fromstring(svg)  # a file the CLI writes: well-formed despite the markup
    assert root.tag.endswith("svg")
    assert "&lt;/svg&gt;&lt;img" in svg and "<img" not in svg


# -- the dashboard -------------------------------------------------------------------------------


NAMED = {
    "guild": "Reactiflux",
    "roles": {"1180000000000000002": "Moderators"},
    "channels": {"1180000000000000003": "mod-log"},
}


@pytest.mark.parametrize(
    ("case", "total", "authors", "counts"),
    [
        ("empty", 0, 0, [0] * 30),
        ("one message", 1, 1, [0] * 29 + [1]),
        ("two messages", 2, 2, [0] * 28 + [1, 1]),
        ("busy", 3_400_000, 1200, [(i * 7919) % 160_000 for i in range(30)]),
    ],
)
def test_dashboard_names_counts_and_a_chart_with_axes(browser, shots, case, total, authors, counts):
    show(
        browser,
        shots,
        f"dashboard-{case}",
        dashboard(names=NAMED, counts=counts, total=total, authors=authors),
    )
    text = page_text(browser)
    h1 = browser.execute_script("return document.querySelector('h1').innerText")
    assert "Reactiflux" in h1 and "1180000000000000001" in h1
    assert "@Moderators" in text and "#mod-log" in text
    words = {
        0: "0 messages from 0 authors",
        1: "1 message from 1 author",
        2: "2 messages from 2 authors",
    }
    assert words.get(total, f"{total} messages from {authors} authors") in text
    assert "1 messages" not in text and "1 authors" not in text
    (chart,) = charts(browser)
    assert_readable(chart)
    assert_axis(chart, "messages/day", max(counts))
    dates = [
        t
        for t in chart["texts"]
        if t["cls"] == "tick" and re.fullmatch(r"[A-Z][a-z]{2} \d\d", t["text"])
    ]
    assert len(dates) >= 3
    if total == 0:
        assert "no messages in these days" in text
    for size, label in ((LAPTOP, "laptop"), (PHONE, "phone")):
        viewport(browser, size)
        assert_no_sideways_scroll(browser)
        assert_not_clipped(browser)
        (chart,) = charts(browser)
        assert_readable(chart)  # phones get bigger chart text: still no overlap
        screenshot(browser, shots, f"dashboard-{case}-{label}")


def test_dashboard_without_names_shows_ids_and_says_why(browser, shots):
    show(
        browser,
        shots,
        "dashboard-no-names",
        dashboard(names=None, counts=[1] * 30, total=30, authors=3),
    )
    text = page_text(browser)
    assert "Names are unavailable" in text
    assert "Guild 1180000000000000001" in text
    assert "1180000000000000002" in text and "1180000000000000003" in text
    # the cache holds the guild but not the role: the id, flagged
    show(
        browser,
        shots,
        "dashboard-missing-role",
        dashboard(
            names={"guild": "R", "roles": {}, "channels": {}}, counts=[0] * 30, total=0, authors=0
        ),
    )
    assert "not found in the server" in page_text(browser)


def test_dashboard_escapes_hostile_names(browser, shots):
    for i, name in enumerate(HOSTILE):
        names = {
            "guild": name,
            "roles": {"1180000000000000002": name},
            "channels": {"1180000000000000003": name},
        }
        html = render_dashboard(
            {
                "guild_id": "1180000000000000001",
                "settings": {
                    "moderator_role": "1180000000000000002",
                    "mod_log": "1180000000000000003",
                },
                "names": names,
                "messages_per_day": days([3] * 30),
                "messages": {"total": 90, "authors": 3, "deleted": 0},
                "reports_by_reason": {name: 1},
                "mod_actions_by_type": {},
            },
            pod="gateway-0",
            reason="ring",
            version=1,
        )
        show(browser, shots, f"dashboard-hostile-{i}", html, PHONE)
        assert_not_pwned(browser)
        assert_no_sideways_scroll(browser)
        assert_not_clipped(browser)
        text = page_text(browser)
        assert "\u202e" not in text and "\u2066" not in text  # no bidi override survives
        visible = name.replace("\u202e", "").replace("\u202c", "").replace("\u2066", "")[:60]
        assert visible.strip()[:20] in text
        assert len(charts(browser)) == 1  # a "</svg>" in a name closes nothing
    screenshot(browser, shots, "dashboard-hostile-last")


# -- the /ops page ---------------------------------------------------------------------------------


def ops_page(
    n_pods: int,
    *,
    names: dict[str, str] | None = None,
    note: str | None = None,
    hostile: bool = False,
) -> str:
    pod_names = [f"gateway-{i}" for i in range(n_pods)]
    if hostile:
        pod_names[-1:] = [HOSTILE[0]]
    sizes = [0, 812, 40_960, 12_345_678, 9_876_543_210]
    pods = [
        pod(p, online=i != 1, db_bytes=sizes[i % len(sizes)], guilds=i)
        for i, p in enumerate(pod_names)
    ]
    loads = {p: float(7 * i + 1) for i, p in enumerate(pod_names)}
    gids = [str(1180000000000000011 + i) for i in range(6)]
    hot = (
        [{"guild_id": g, "pod": pod_names[-1], "load": 3.5, "share": 1.4} for g in gids[:3]]
        if pods
        else []
    )
    plans = []
    if n_pods >= 2:
        p = plan(
            {pn: (loads[pn], sum(loads.values()) / n_pods) for pn in pod_names},
            [move(g, pod_names[-1], pod_names[0], 2.0) for g in gids[: min(n_pods, 4)]],
            pid="plan-20261127-111111-abcdef",
        )
        plans = [{"id": p["id"], "actor": "balancer", "state": "proposed", "plan": p}]
    migrations = (
        [
            {
                "id": 1,
                "guild_id": gids[0],
                "shard": None,
                "source": pod_names[-1],
                "target": pod_names[0],
                "state": "frozen",
                "plan_id": "plan-20261127-111111-abcdef",
            }
        ]
        if n_pods >= 2
        else []
    )
    pins = (
        [
            {
                "guild_id": g,
                "pod": pod_names[0],
                "kind": "hard",
                "reason": HOSTILE[2] if hostile else "big guild",
            }
            for g in gids[3:]
        ]
        if pods
        else []
    )
    return render_ops(
        version=42 if pods else None,
        balance=balance(
            loads,
            hot=hot,
            samples=history(40) if pods else [],
            advice=["gateway-0 runs hot"] if pods else [],
        ),
        pods=pods,
        pins=pins,
        migrations=migrations,
        plans=plans,
        names=names,
        names_note=note,
    )


@pytest.mark.parametrize(
    ("case", "n_pods"), [("empty", 0), ("one pod", 1), ("two pods", 2), ("many pods", 12)]
)
def test_ops_page_is_readable_on_a_laptop_and_a_phone(browser, shots, case, n_pods):
    names = {str(1180000000000000011 + i): f"Guild number {i}" for i in range(6)}
    html = ops_page(n_pods, names=names)
    for size, label in ((LAPTOP, "laptop"), (PHONE, "phone")):
        show(browser, shots, f"ops-{case}-{label}", html, size)
        assert_no_sideways_scroll(browser)
        assert_not_clipped(browser)
        for chart in charts(browser, "svg.chart"):
            assert_readable(chart)
        text = page_text(browser)
        if n_pods == 0:
            for empty in (
                "no routing table yet",
                "no pods registered",
                "no pod has reported its load yet",
                "no samples yet",
                "no plan is waiting",
                "no pins",
            ):
                assert empty in text, empty
            assert "0 pods" in text
        else:
            assert ("1 pod " if n_pods == 1 else f"{n_pods} pods") in text
            assert "Guild number 3" in text and "1180000000000000014" in text  # name and id
            assert "0 guilds" in text and "0.0 MB" not in text
            assert "1 guild" in text or n_pods == 1
            if n_pods >= 3:  # small databases in bytes and KB, never "0.0 MB"
                assert "812 B" in text and "41.0 KB" in text
        if n_pods >= 2:
            assert f"{min(n_pods, 4)} moves" in text
            assert "Guild number 0" in text  # a move in the plan picture, by name
        screenshot(browser, shots, f"ops-{case}-{label}")


def test_ops_page_without_names_shows_ids_and_the_note(browser, shots):
    note = "Guild names are unavailable from gateway-1 (not answering, or no guild cache): those guilds are shown by id."
    show(browser, shots, "ops-no-names", ops_page(3, names={}, note=note), PHONE)
    text = page_text(browser)
    assert "Guild names are unavailable from gateway-1" in text
    assert "1180000000000000014" in text and "Guild number" not in text
    assert_no_sideways_scroll(browser)


def test_ops_page_escapes_hostile_names(browser, shots):
    names = {str(1180000000000000011 + i): HOSTILE[i % len(HOSTILE)] for i in range(6)}
    html = ops_page(5, names=names, hostile=True)
    for size, label in ((LAPTOP, "laptop"), (PHONE, "phone")):
        show(browser, shots, f"ops-hostile-{label}", html, size)
        assert_not_pwned(browser)
        assert_no_sideways_scroll(browser)
        assert_not_clipped(browser)
        assert len(charts(browser, "svg.chart")) == 3  # "</svg>" in a name closed none early
        for chart in charts(browser, "svg.chart"):
            assert_readable(chart)
        text = page_text(browser)
        assert "\u202e" not in text and "\u2066" not in text
        assert "<script>window.__pwned=1</script>Evil" in text  # shown as text, not run
        assert "Q" * 90 in text  # 200 characters, cut at 100 in tables, still wrapped
        screenshot(browser, shots, f"ops-hostile-{label}")


@pytest.mark.asyncio(loop_scope="module")
async def test_name_lookup_survives_pods_that_answer_garbage_or_hang():
    """Malformed peers: a pod answering junk, an error, or nothing in time costs its
    names (listed as unavailable), never the lookup; a good pod's names still arrive."""
    from aiohttp import web

    from config_store.names import guild_names

    async def handler(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        assert request.headers["Authorization"] == "Bearer m"
        if kind == "good":
            return web.json_response({"names": {"11": "Good guild", "12": 5}})
        if kind == "junk":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if kind == "shape":
            return web.json_response({"names": ["11"]})
        if kind == "error":
            return web.json_response({"error": "boom"}, status=500)
        with contextlib.suppress(TimeoutError):  # hangs past the lookup's deadline
            await asyncio.wait_for(release.wait(), 10)
        return web.json_response({"names": {}})

    release = asyncio.Event()
    async with AppServer({("GET", "/{kind}/internal/names"): handler}) as url:
        try:
            kinds = ["good", "junk", "shape", "error", "hang"]
            pods = [dataclasses.replace(pod(k), url=f"{url}/{k}") for k in kinds] + [
                pod("offline", online=False)
            ]
            started = time.monotonic()
            result = await guild_names(pods, ["11", "12", "not-an-id"], "m", timeout=0.5)
            assert time.monotonic() - started < 3
            assert result.names == {"11": "Good guild"}  # a non-string name is dropped
            assert sorted(result.unavailable) == ["error", "hang", "junk", "offline", "shape"]
            assert "shown by id" in (result.note() or "")
            assert (await guild_names(pods, ["11"], "m", timeout=0.5)).note() is None  # all named
            assert (await guild_names(pods, [], "m")).names == {}
            assert "no migration token" in (await guild_names(pods, ["11"], "")).note()  # type: ignore[operator]
        finally:
            release.set()  # the hanging handler ends before the server stops


# -- end to end: a real pod's cache, a pod down, the config database down ---------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    from stack import running_stack

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with running_stack(
            tmp_path_factory.mktemp("pictures-stack"),
            PG_URL,
            schema,
            pods=1,
            guilds=2,
            shard_count=2,
        ) as s:
            yield s
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def basic_auth(driver: Any) -> None:
    token = base64.b64encode(f"ops:{ADMIN}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def open_page(driver: Any, url: str, size: tuple[int, int]) -> str:
    viewport(driver, size)
    driver.get(url)
    return page_text(driver)


@pytest.mark.asyncio(loop_scope="module")
async def test_dashboard_names_come_from_the_pods_guild_cache(stack, browser, shots):
    async with stack.http.post(
        f"{stack.sim.url}/control/guilds", json={"name": HOSTILE[0] + " \u202e" + "Z" * 150}
    ) as r:
        hostile = int((await r.json())["guilds"][0]["id"])
    named = next(g for g in stack.world.guilds.values() if g.name == "guild-0")
    role = next(r for r, (n, _) in named.roles.items() if n == "Moderators")
    channel = next(c for c, n in named.channels.items() if n == "mod-log")
    path = f"/api/guilds/{named.id}/settings"
    async with stack.http.put(
        f"{next(iter(stack.pods.values())).url}{path}",
        json={"moderator_role": str(role), "mod_log": str(channel)},
        headers=stack.pod_headers("PUT", path, named.id),
    ) as r:
        assert r.status == 200, await r.text()

    async def page(gid: int) -> str | None:
        async with stack.http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
            html = await r.text()
        return html if "Names are unavailable" not in html else None

    await eventually(lambda: page(hostile), timeout=20, interval=0.1)  # GUILD_CREATE arrived
    text = await asyncio.to_thread(
        open_page, browser, f"{stack.proxy.url}/guild/{named.id}/dashboard", LAPTOP
    )
    assert "guild-0" in text and f"Guild {named.id}" in text
    assert "@Moderators" in text and "#mod-log" in text and str(role) in text
    await asyncio.to_thread(screenshot, browser, shots, "e2e-dashboard")
    text = await asyncio.to_thread(
        open_page, browser, f"{stack.proxy.url}/guild/{hostile}/dashboard", PHONE
    )
    assert "<script>window.__pwned=1</script>Evil" in text and "\u202e" not in text
    assert_not_pwned(browser)
    assert_no_sideways_scroll(browser)
    assert_not_clipped(browser)
    await asyncio.to_thread(screenshot, browser, shots, "e2e-dashboard-hostile-phone")


@pytest.mark.asyncio(loop_scope="module")
async def test_the_pods_names_endpoint_is_read_only_bounded_and_guarded(stack):
    from stack import INTERNAL, MIGRATION

    pod_url = stack.pods["gateway-0"].url
    named = next(g for g in stack.world.guilds.values() if g.name == "guild-0")
    migration = {"Authorization": f"Bearer {MIGRATION}"}
    cases = [
        (f"ids={named.id},{named.id + 1}", migration, 200),
        ("ids=", migration, 200),
        ("ids=abc", migration, 400),
        ("ids=-5", migration, 400),
        (f"ids={2**64}", migration, 400),
        ("ids=" + ",".join(str(i + 1) for i in range(501)), migration, 400),  # at most 500
        (f"ids={named.id}", {"Authorization": f"Bearer {INTERNAL}"}, 403),  # the proxy's token
        (f"ids={named.id}", {}, 401),
    ]
    for query, headers, status in cases:
        async with stack.http.get(f"{pod_url}/internal/names?{query}", headers=headers) as r:
            body = await r.json()
            assert r.status == status and isinstance(body, dict), (query[:40], r.status, body)
    async with stack.http.get(
        f"{pod_url}/internal/names?ids={named.id},{named.id + 1}", headers=migration
    ) as r:
        assert (await r.json())["names"] == {str(named.id): "guild-0"}  # unknown ids: absent
    async with stack.http.post(f"{pod_url}/internal/names?ids={named.id}", headers=migration) as r:
        assert r.status == 405  # read-only


@pytest.mark.asyncio(loop_scope="module")
async def test_ops_page_names_guilds_from_the_pods_and_survives_the_pod_dying(
    stack, browser, shots
):
    named = next(g for g in stack.world.guilds.values() if g.name == "guild-1")
    await stack.pin(named.id, "gateway-0")
    await asyncio.to_thread(basic_auth, browser)
    try:
        text = await asyncio.to_thread(open_page, browser, f"{stack.config.url}/ops", LAPTOP)
        assert "guild-1" in text and str(named.id) in text, text[:2000]
        assert "names are unavailable" not in text.lower()
        assert_no_sideways_scroll(browser)
        await asyncio.to_thread(screenshot, browser, shots, "e2e-ops-laptop")
        text = await asyncio.to_thread(open_page, browser, f"{stack.config.url}/ops", PHONE)
        assert_no_sideways_scroll(browser)
        assert_not_clipped(browser)
        await asyncio.to_thread(screenshot, browser, shots, "e2e-ops-phone")

        stack.pods["gateway-0"].kill()  # the only holder of the names: last test of the stack
        started = time.monotonic()
        text = await asyncio.to_thread(open_page, browser, f"{stack.config.url}/ops", LAPTOP)
        assert time.monotonic() - started < 10
        assert "Guild names are unavailable from gateway-0" in text
        assert str(named.id) in text and "guild-1" not in text
        await asyncio.to_thread(screenshot, browser, shots, "e2e-ops-pod-down")
    finally:
        await asyncio.to_thread(
            browser.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": {}}
        )


@pytest.mark.asyncio(loop_scope="module")
async def test_ops_page_with_no_data_and_with_the_database_down(browser, shots):
    from pgserver import PgServer

    server = PgServer()
    await asyncio.to_thread(server.init)
    await asyncio.to_thread(server.start)
    try:
        async with running_config(server.url, shard_count=None) as config:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{config.url}/ops", headers=headers) as r:
                    assert r.status == 200 and r.content_type == "text/html"
                    empty = await r.text()
                await asyncio.to_thread(server.stop)
                async with http.get(f"{config.url}/ops", headers=headers) as r:
                    assert r.status == 503 and r.content_type == "text/html"
                    down = await r.text()
    finally:
        await asyncio.to_thread(server.destroy)
    show(browser, shots, "ops-no-data", empty, PHONE)
    text = page_text(browser)
    for words in (
        "0 pods",
        "no pods registered",
        "no pod has reported its load yet",
        "no plan is waiting",
        "no migration is running",
        "no pins",
    ):
        assert words in text
    assert_no_sideways_scroll(browser)
    screenshot(browser, shots, "ops-no-data")
    show(browser, shots, "ops-database-down", down, PHONE)
    text = page_text(browser)
    assert "The config database is not answering" in text
    assert_no_sideways_scroll(browser)
    screenshot(browser, shots, "ops-database-down")
