"""A small async HTTP client for the config service's ``/v1`` API.

Used by the operator CLI, by gateway pods (register, heartbeat) and as the routing
table client's fallback. Errors surface as :class:`ConfigApiError` carrying the HTTP
status and the service's one-line JSON message.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

__all__ = ["ConfigApi", "ConfigApiError"]


class ConfigApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConfigApi:
    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> ConfigApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body)
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        url = f"{self.base_url}{path}"
        try:
            async with self._client().request(
                method, url, data=data, params=params, headers=all_headers
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ConfigApiError(resp.status, _message(text, resp.status))
                if resp.status == 204 or not text:
                    return None
                return json.loads(text)
        except aiohttp.ClientError as exc:
            raise ConfigApiError(
                0, f"cannot reach the config service at {self.base_url}: {exc}"
            ) from None
        except TimeoutError:
            raise ConfigApiError(
                0, f"the config service at {self.base_url} did not answer in time"
            ) from None

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("PUT", path, body=body, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("POST", path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.request("DELETE", path, **kw)


def _message(text: str, status: int) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200] or f"HTTP {status}"
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else f"HTTP {status}"
