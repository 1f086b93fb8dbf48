"""Guild names for the operator's page, asked of the pods that hold them.

Names live only in each pod's discord.py guild cache (the config service never talks to
Discord), so ``/ops`` asks every online pod, in parallel and with a short deadline, for
the names of the guilds it is about to show (``GET /internal/names?ids=...`` on the
pods' migration API). A pod that does not answer costs its names, never the page: the
page shows ids for those and says which pods could not be asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp

from .store import PodRecord

MAX_IDS = 500  # what one page shows at most; the pod refuses more


@dataclass
class NameLookup:
    names: dict[str, str] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)  # pods that could not be asked

    def note(self) -> str | None:
        """One sentence for the page when some names could not be had."""
        if not self.unavailable:
            return None
        pods = ", ".join(sorted(self.unavailable))
        return (
            f"Guild names are unavailable from {pods} (not answering, or no guild cache): "
            "those guilds are shown by id."
        )


async def _ask(
    http: aiohttp.ClientSession, pod: PodRecord, token: str, ids: str, timeout: float
) -> dict[str, str]:
    async with http.get(
        f"{pod.url}/internal/names",
        params={"ids": ids},
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=timeout),
    ) as resp:
        if resp.status != 200:
            raise aiohttp.ClientResponseError(
                resp.request_info, resp.history, status=resp.status, message="names refused"
            )
        body = await resp.json()
    got = body.get("names") if isinstance(body, dict) else None
    if not isinstance(got, dict):
        raise ValueError("malformed names answer")
    return {str(k): str(v) for k, v in got.items() if isinstance(v, str) and v}


async def guild_names(
    pods: Sequence[PodRecord], guild_ids: Iterable[object], token: str, *, timeout: float = 1.5
) -> NameLookup:
    """Names for ``guild_ids`` from every online pod's cache; never raises."""
    wanted = sorted({str(g) for g in guild_ids if str(g).isdigit()})[:MAX_IDS]
    result = NameLookup()
    if not wanted:
        return result
    if not token:
        result.unavailable = ["every pod (the config service has no migration token)"]
        return result
    asked = [p for p in pods if p.online and p.url]
    result.unavailable = sorted(p.name for p in pods if not (p.online and p.url))
    ids = ",".join(wanted)
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(_ask(http, p, token, ids, timeout) for p in asked), return_exceptions=True
        )
    for pod, answer in zip(asked, answers, strict=True):
        if isinstance(answer, BaseException):
            result.unavailable.append(pod.name)
        else:
            result.names.update(answer)
    if all(g in result.names for g in wanted):  # nothing is missing: nothing to apologise for
        result.unavailable = []
    return result
