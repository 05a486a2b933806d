"""A plain-HTTP client for the console's pages (no JavaScript): a cookie jar, forms
posted with the page's CSRF token and this origin, like a browser without scripts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp

# The forms' hidden field, or the token htmx sends (on every page with a session).
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"|"X-CSRF-Token": "([0-9a-f]+)"')


@dataclass
class Page:
    status: int
    headers: Any
    text: str
    url: str

    def csrf(self) -> str:
        m = CSRF_RE.search(self.text)
        assert m, f"no CSRF token on {self.url}: {self.text[:300]}"
        return m.group(1) or m.group(2)


class ConsoleClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, *, htmx: bool = False, **headers: str) -> Page:
        hdrs = dict(headers)
        if htmx:
            hdrs["HX-Request"] = "true"
        async with self.session.get(self.base + path, headers=hdrs, allow_redirects=False) as r:
            return Page(r.status, r.headers, await r.text(), str(r.url))

    async def follow(self, path: str) -> Page:
        async with self.session.get(self.base + path) as r:
            return Page(r.status, r.headers, await r.text(), str(r.url))

    async def post(
        self,
        path: str,
        form: dict[str, str] | None = None,
        *,
        csrf: str | None = None,
        origin: str | None = "same",
    ) -> Page:
        data = dict(form or {})
        if csrf is not None:
            data["csrf"] = csrf
        headers = {}
        if origin == "same":
            headers["Origin"] = self.base
        elif origin is not None:
            headers["Origin"] = origin
        async with self.session.post(
            self.base + path, data=data, headers=headers, allow_redirects=False
        ) as r:
            return Page(r.status, r.headers, await r.text(), str(r.url))

    async def login(self, key: str) -> Page:
        return await self.post("/console/login", {"api_key": key})
