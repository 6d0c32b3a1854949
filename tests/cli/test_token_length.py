"""Failed authentications are not rate-limited, so a short API token can be guessed over the network:
the service says so when it starts with one."""

from __future__ import annotations

import logging

import pytest

from chronos_app.container import build_job_types
from chronos_app.settings import Settings


@pytest.mark.parametrize(("tokens", "readonly", "warned"), [
    (["admin"], [], True), ([], ["viewer-12345"], True), (["x" * 16], ["y" * 48], False)])
def test_a_short_api_token_is_warned_about(tokens: list[str], readonly: list[str], warned: bool,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    build_job_types(Settings(api_tokens=tokens, readonly_tokens=readonly, database_url="memory"))
    said = [r.getMessage() for r in caplog.records if "guessable" in r.getMessage()]
    assert bool(said) is warned, said
    assert not any(t in m for m in said for t in (*tokens, *readonly))  # the token itself is never logged
