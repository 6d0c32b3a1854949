"""What payload models declare secret (the worker masks these in output, events and errors)."""

from __future__ import annotations

from chronos_core.payloads import HttpPayload, SqlPayload


def test_http_secrets_cover_url_password_auth_headers_and_secret_query_params() -> None:
    p = HttpPayload.model_validate({
        "url": "https://bob:pa55word@api.example/x?y=1",
        "headers": {"Authorization": "Bearer abc.def", "Accept": "text/plain"},
        "query": {"api_key": "k-123", "page": "2", "token": ["t-1", "t-2"]},
    })
    assert set(p.secrets()) == {"pa55word", "bob:pa55word", "Bearer abc.def", "abc.def", "k-123", "t-1",
                                "t-2"}
    shown = p.redacted()
    assert shown["url"] == "https://bob:***@api.example/x?y=1"
    assert shown["headers"] == {"Authorization": "***", "Accept": "text/plain"}
    assert shown["query"] == {"api_key": "***", "page": "2", "token": "***"}


def test_http_without_secrets() -> None:
    p = HttpPayload.model_validate({"url": "https://api.example/a@b"})
    assert p.secrets() == [] and p.redacted()["url"] == "https://api.example/a@b"


def test_sql_secret_params() -> None:
    p = SqlPayload.model_validate({"connection": "main", "statement": "UPDATE u SET pw = :new_password",
                                   "params": {"new_password": "letmein1", "id": 3}})
    assert p.secrets() == ["letmein1"]
    assert p.redacted()["params"] == {"new_password": "***", "id": 3}
