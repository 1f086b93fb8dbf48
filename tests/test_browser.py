"""A real browser (Debian's chromium, driven by chromedriver through Selenium) signs in
through the simulator's consent page, changes a setting, signs out; a user without
Manage Server sees 403. Cookies, redirects, SameSite, Origin and Sec-Fetch-* are the
browser's own here, not a test client's idea of them."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import psycopg
import pytest
import pytest_asyncio
from conftest import PG_URL, free_port
from stack import running_stack
from test_auth import MANAGE_GUILD, VIEW, add_user, auth_settings

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser_stack(tmp_path_factory):
    port = free_port()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with running_stack(
            tmp_path_factory.mktemp("browser"),
            PG_URL,
            schema,
            pods=1,
            guilds=2,
            shard_count=4,
            proxy_port=port,
        ) as stack:
            settings = auth_settings(stack.sim.url, port)
            proxy = stack.proxy.proxy
            proxy.settings.auth = settings
            proxy.gate.__init__(proxy, settings)
            guild = next(iter(stack.world.guilds))
            await add_user(stack, "manager", {guild: {"permissions": VIEW | MANAGE_GUILD}})
            await add_user(stack, "member", {guild: {"permissions": VIEW}})
            yield stack, guild
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def chrome():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


def wait_for(driver, condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """A click that submits a form returns before the next page loads: wait for it."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def sign_in_as(driver, proxy: str, guild: int, user: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{proxy}/guild/{guild}/dashboard")  # -> /login -> the consent page
    assert "Authorize mod-bot" in driver.title, driver.page_source[:500]
    Select(driver.find_element(By.ID, "user")).select_by_visible_text(user)
    driver.find_element(By.ID, "authorize").click()
    wait_for(driver, lambda d: "Authorize mod-bot" not in d.title)


def manager_journey(proxy: str, guild: int) -> None:
    from selenium.webdriver.common.by import By

    driver = chrome()
    try:
        sign_in_as(driver, proxy, guild, "manager")
        assert driver.current_url == f"{proxy}/guild/{guild}/dashboard", driver.current_url
        assert f"Guild {guild}" in driver.find_element(By.TAG_NAME, "h1").text
        cookie = driver.get_cookie("modbot_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        role = driver.find_element(By.ID, "moderator_role")
        role.clear()
        role.send_keys("424242424242")
        log = driver.find_element(By.ID, "mod_log")
        log.clear()
        log.send_keys("515151515151")
        driver.find_element(By.ID, "save").click()
        wait_for(
            driver, lambda d: "515151515151" in d.page_source and "424242424242" in d.page_source
        )
        assert driver.current_url == f"{proxy}/guild/{guild}/dashboard"
        driver.find_element(By.ID, "logout").click()
        wait_for(driver, lambda d: "signed out" in d.page_source)
        assert driver.get_cookie("modbot_session") is None
        driver.get(f"{proxy}/guild/{guild}/dashboard")
        assert "Authorize mod-bot" in driver.title  # signed out for real
    finally:
        driver.quit()


def member_journey(proxy: str, guild: int) -> str:
    driver = chrome()
    try:
        sign_in_as(driver, proxy, guild, "member")
        return str(driver.page_source)
    finally:
        driver.quit()


async def test_a_browser_signs_in_changes_a_setting_and_signs_out(browser_stack):
    stack, guild = browser_stack
    await asyncio.to_thread(manager_journey, stack.proxy.url, guild)
    path = f"/api/guilds/{guild}/settings"
    pod = next(iter(stack.pods.values()))
    async with stack.http.get(
        f"{pod.url}{path}", headers=stack.pod_headers("GET", path, guild)
    ) as r:
        assert (await r.json())["settings"]["moderator_role"] == "424242424242"


async def test_a_browser_without_manage_server_sees_403(browser_stack):
    stack, guild = browser_stack
    page = await asyncio.to_thread(member_journey, stack.proxy.url, guild)
    assert "You cannot open guild" in page and "sign in again" in page
