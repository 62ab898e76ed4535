"""Superset's REST API: a session logged in as the admin, and the Rison its list endpoints take."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from urllib.parse import quote

from pipelines.config import Settings
from pipelines.serve.superset_server import ADMIN, base_url, ensure_secrets
from pipelines.stack.services import StackError


def rison(value) -> str:
    """Superset's list endpoints take their query (`q`) in Rison, JSON's URL-friendly cousin."""
    if isinstance(value, dict):
        return "(" + ",".join(f"{k}:{rison(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list | tuple):
        return "!(" + ",".join(rison(v) for v in value) + ")"
    if isinstance(value, bool):
        return "!t" if value else "!f"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("!", "!!").replace("'", "!'") + "'"


class SupersetApi:
    """A logged-in session: a JWT for the API, and the CSRF token Superset also asks of writes."""

    def __init__(self, base: str, user: str, password: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.headers = {"Content-Type": "application/json", "Referer": base}
        token = self.call("POST", "/api/v1/security/login",
                          {"username": user, "password": password, "provider": "db", "refresh": False})
        self.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.headers["X-CSRFToken"] = self.call("GET", "/api/v1/security/csrf_token/")["result"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with self.opener.open(request, timeout=60) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise StackError(f"Superset answered {exc.code} to {method} {path}: {exc.read()[:500]!r}") from exc

    def find(self, kind: str, **equal) -> dict | None:
        """The one object of a kind (database, dataset, chart) whose columns equal these values."""
        query = {"filters": [{"col": col, "opr": "eq", "value": value} for col, value in equal.items()]}
        found = self.call("GET", f"/api/v1/{kind}/?q={quote(rison(query))}")["result"]
        return found[0] if found else None

    def upsert(self, kind: str, existing: dict | None, body: dict) -> int:
        if existing is None:
            return self.call("POST", f"/api/v1/{kind}/", body)["id"]
        self.call("PUT", f"/api/v1/{kind}/{existing['id']}", body)
        return existing["id"]


def login(settings: Settings) -> SupersetApi:
    return SupersetApi(base_url(settings), ADMIN, ensure_secrets(settings)["SUPERSET_ADMIN_PASSWORD"])
