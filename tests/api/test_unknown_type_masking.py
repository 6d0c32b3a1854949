"""A job whose type this process does not know - a plugin's type on an API process started without the
plugin (CHRONOS_PLUGINS set only on the workers), or a stored payload its type's model refuses now (a
stricter check after an upgrade) - is shown with its secrets masked at any depth, as a known type's are:
values under secret-looking names in nested objects, URL passwords and secret query parameters in strings
(secreview2). Before, only the payload's top-level keys were looked at, so a read-only token read
``{"config": {"password": ...}}`` and ``https://user:password@host``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chronos_core import Payload
from chronos_core.secrets import redact_named, walk_named
from tests.api.conftest import build_app, running

PASSWORD = "hunter2-vault-pw-77"
URL_PASSWORD = "url-pw-5a4b3c2d"
TOKEN = "query-tok-9f8e7d6c"


class VaultPayload(Payload):
    endpoint: str
    config: dict[str, Any] = {}
    tags: list[str] = []

    def redacted(self) -> dict[str, Any]:  # the plugin's own masking, where the plugin is loaded
        shown: dict[str, Any] = redact_named(self.model_dump(mode="json"))
        return shown

    def secrets(self) -> list[str]:
        return [v for _, v in walk_named(self.config)]


class StricterVault(Payload):
    endpoint: str  # config and tags no longer accepted: the stored payload fails this model


PAYLOAD = {"endpoint": f"https://svc:{URL_PASSWORD}@vault.example.com/v1?access_token={TOKEN}&x=1",
           "config": {"password": PASSWORD, "nested": {"api_key": PASSWORD + "-2"}, "mode": "ro"},
           "tags": ["prod"]}


def leaked(text: str) -> list[str]:
    return [s for s in (PASSWORD, URL_PASSWORD, TOKEN) if s in text]


async def test_a_type_this_process_does_not_know_is_masked_at_any_depth(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chronos.db"
    writer = build_app(scheduler=False, worker=False, database_url=url)
    writer.state.api.chronos.job_types.register("vault", VaultPayload)
    async with running(writer) as w:
        created = await w.post("/jobs", json={"name": "v", "type": "vault", "payload": PAYLOAD})
        assert created.status_code == 201, created.text
        assert not leaked(created.text)
    job_id = created.json()["id"]
    async with running(build_app(scheduler=False, worker=False, database_url=url)) as r:  # no plugin
        for path in (f"/jobs/{job_id}", "/jobs"):
            shown = await r.get(path)
            assert shown.status_code == 200, shown.text
            assert not leaked(shown.text), (path, shown.text)
        payload = (await r.get(f"/jobs/{job_id}")).json()["payload"]
        assert payload["config"]["password"] == "***" and payload["config"]["mode"] == "ro"
        assert payload["config"]["nested"]["api_key"] == "***" and payload["tags"] == ["prod"]


async def test_a_payload_its_model_now_refuses_is_masked_at_any_depth() -> None:
    app = build_app(scheduler=False, worker=False)
    types = app.state.api.chronos.job_types
    types.register("vault", VaultPayload)
    async with running(app) as c:
        job_id = (await c.post("/jobs", json={"name": "v", "type": "vault", "payload": PAYLOAD})).json()["id"]
        types.register("vault", StricterVault)
        for path in (f"/jobs/{job_id}", "/jobs"):
            shown = await c.get(path)
            assert shown.status_code == 200 and not leaked(shown.text), (path, shown.text)
