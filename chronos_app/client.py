"""A small synchronous client of the Chronos REST API (httpx), used by the ``chronos`` client commands and
reusable from scripts::

    with ChronosClient("http://127.0.0.1:8080", token=None) as c:
        job = c.resolve_job("nightly-report")      # by name or id
        run = c.trigger_job(job["id"])

Responses are returned as the API's JSON (dicts), unchanged. Every failure is a :class:`ClientError`:
:class:`ApiProblem` for an RFC 9457 answer (status, title, detail and each field error with its pointer),
:class:`ServerUnreachable` when no answer came. The token goes only into the ``Authorization`` header; it
is never part of a URL or an error message.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

__all__ = [
    "DEFAULT_URL",
    "FINISHED_STATUSES",
    "ApiProblem",
    "ChronosClient",
    "ClientError",
    "FieldProblem",
    "ServerUnreachable",
]

DEFAULT_URL = "http://127.0.0.1:8080"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_PAGE = 500  # the API's largest page
FINISHED_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped", "missed"})


class ClientError(Exception):
    """Any failure of a client call."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    pointer: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.reason}"


class ApiProblem(ClientError):
    """The API answered with an error (problem+json, or whatever a proxy in between sent)."""

    def __init__(self, status: int, title: str, detail: str | None = None, type: str | None = None,
                 errors: list[FieldProblem] | None = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}"
        if self.detail and not self.errors and self.detail.lower() != self.title.lower():
            # (with field errors the detail only repeats them)
            text += f": {self.detail}"
        return "\n".join([text, *(f"  {e}" for e in self.errors)])

    @classmethod
    def of(cls, response: httpx.Response) -> ApiProblem:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("title"), str):
            text = response.text.strip().splitlines()
            return cls(response.status_code, response.reason_phrase or "HTTP error",
                       text[0][:200] if text else None)
        errors = [FieldProblem(str(e.get("pointer", "")), str(e.get("reason", "")))
                  for e in body.get("errors") or () if isinstance(e, dict)]
        detail = body.get("detail")
        return cls(response.status_code, body["title"], detail if isinstance(detail, str) else None,
                   body.get("type") if isinstance(body.get("type"), str) else None, errors)


class ServerUnreachable(ClientError):
    """No answer from the API: connection refused, name not resolved, timed out, connection dropped."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Chronos API at {url}: {reason}")
        self.url = url
        self.reason = reason


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__


def _segment(value: str) -> str:
    return quote(value, safe="")


class ChronosClient:
    """One HTTP connection pool to one Chronos API. ``timeout`` is per request (streams have none)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Loading the CA bundle is a third of a CLI call's time. A plain-http API never uses TLS: its
        # context verifies as strictly as ever but trusts no CA, so any TLS use would fail, not pass.
        verify: ssl.SSLContext | bool = (True if self.url.lower().startswith("https:")
                                         else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport,
                                  follow_redirects=False, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChronosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- plumbing

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json_body: Any = None, content_type: str = "application/json",
                accept: str = "application/json") -> httpx.Response:
        """One call; a 4xx/5xx answer raises :class:`ApiProblem`, no answer :class:`ServerUnreachable`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        content = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Accept": accept}
        if content is not None:
            headers["Content-Type"] = content_type
        try:
            response = self._http.request(method, path, params=query, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from None
        if response.is_error:
            raise ApiProblem.of(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def _pages(self, path: str, params: dict[str, Any], cursor: str, limit: int | None
               ) -> Iterator[dict[str, Any]]:
        """Items of a keyset-paginated list, following ``next_cursor`` until ``limit`` items."""
        left = limit
        params = dict(params)
        while left is None or left > 0:
            params["limit"] = _PAGE if left is None else min(left, _PAGE)
            page = self._json("GET", path, params=params)
            yield from page["items"]
            if left is not None:
                left -= len(page["items"])
            if not page.get("next_cursor") or not page["items"]:
                return
            params[cursor] = page["next_cursor"]

    # ------------------------------------------------------------------------------------------- jobs

    def list_jobs(self, *, status: str | None = None, type: str | None = None, name: str | None = None,
                  last_status: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Jobs in id order: ``name`` is a prefix, ``last_status`` a comma list of run statuses."""
        return self._pages("/jobs", {"status": status, "type": type, "name": name,
                                     "last_status": last_status}, "after", limit)

    def get_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/jobs/{_segment(job_id)}")
        return result

    def find_job(self, name: str) -> dict[str, Any] | None:
        """The job with exactly this name, or None."""
        name = name.strip()
        for job in self.list_jobs(name=name):
            if job["name"] == name:
                return job
        return None

    def resolve_job(self, ref: str) -> dict[str, Any]:
        """A job named by its id or its name (an id is tried first when ``ref`` looks like one)."""
        if _UUID.match(ref.strip()):
            try:
                return self.get_job(ref.strip())
            except ApiProblem as exc:
                if exc.status != 404:
                    raise
        job = self.find_job(ref)
        if job is None:
            raise ApiProblem(404, "Job not found", f"no job has the name or id {ref!r}")
        return job

    def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/jobs", json_body=spec)
        return result

    def apply_jobs(self, specs: list[dict[str, Any]], *, prune: bool = False,
                   dry_run: bool = False) -> dict[str, Any]:
        """``POST /jobs/apply``: created/updated/unchanged/deleted job names."""
        result: dict[str, Any] = self._json("POST", "/jobs/apply", json_body={"jobs": specs, "prune": prune},
                                            params={"dry_run": "true" if dry_run else None})
        return result

    def replace_job(self, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("PUT", f"/jobs/{_segment(job_id)}", json_body=spec)
        return result

    def patch_job(self, job_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge-patch (RFC 7396) of a job's definition."""
        result: dict[str, Any] = self._json("PATCH", f"/jobs/{_segment(job_id)}", json_body=patch,
                                            content_type="application/merge-patch+json")
        return result

    def delete_job(self, job_id: str) -> None:
        self.request("DELETE", f"/jobs/{_segment(job_id)}")

    def set_job_status(self, job_id: str, status: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("PATCH", f"/jobs/{_segment(job_id)}/status",
                                            json_body={"status": status})
        return result

    def trigger_job(self, job_id: str) -> dict[str, Any]:
        """Run the job now: the queued run."""
        result: dict[str, Any] = self._json("POST", f"/jobs/{_segment(job_id)}/run")
        return result

    def job_history(self, job_id: str, *, status: str | None = None, limit: int | None = None
                    ) -> Iterator[dict[str, Any]]:
        return self._pages(f"/jobs/{_segment(job_id)}/history", {"status": status}, "before", limit)

    # ------------------------------------------------------------------------------------------- runs

    def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/runs/{_segment(run_id)}")
        return result

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/runs/{_segment(run_id)}/cancel")
        return result

    def list_runs(self, *, job_id: str | None = None, status: str | None = None,
                  trigger: str | None = None, since: str | None = None, until: str | None = None,
                  limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Runs of all jobs (or one), newest first; ``status`` and ``trigger`` are comma lists,
        ``since``/``until`` bound ``scheduled_for`` (ISO 8601 with a UTC offset)."""
        return self._pages("/runs", {"job_id": job_id, "status": status, "trigger": trigger,
                                     "since": since, "until": until}, "before", limit)

    def run_log(self, run_id: str) -> str:
        """The run's output so far (plain text, secrets masked)."""
        return self.request("GET", f"/runs/{_segment(run_id)}/log", accept="text/plain").text

    def follow_log(self, run_id: str) -> Iterator[str]:
        """The run's output so far, then each new line as it is printed, until the run ends."""
        try:
            with self._http.stream("GET", f"/runs/{_segment(run_id)}/log", params={"follow": "true"},
                                   headers={"Accept": "text/plain"},
                                   timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.is_error:
                    response.read()
                    raise ApiProblem.of(response)
                yield from response.iter_text()
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, _reason(exc)) from None

    # -------------------------------------------------------------------------------------- schedules

    def preview(self, schedule: str, timezone: str = "UTC", count: int = 5) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/schedules/preview",
                                            params={"schedule": schedule, "timezone": timezone,
                                                    "count": count})
        return result
