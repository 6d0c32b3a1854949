"""The SSE streams accept ``?token=``; the access log must not write the token down."""

from __future__ import annotations

import logging

from chronos_app.serving import RedactQuery as RedactTokens


def _access(path: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:50000", "GET", path, "1.1", 200), None)


def test_tokens_in_query_strings_are_masked() -> None:
    record = _access("/monitor/logs/abc?token=s3cr3t&after=5")
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:50000 - "GET /monitor/logs/abc?token=***&after=5 HTTP/1.1" 200'
    record = _access("/monitor/logs?after=5&TOKEN=s3cr3t")
    RedactTokens().filter(record)
    assert "s3cr3t" not in record.getMessage()


def test_other_lines_are_untouched() -> None:
    record = _access("/jobs?name=tokenizer&limit=5")
    RedactTokens().filter(record)
    assert record.getMessage().endswith('"GET /jobs?name=tokenizer&limit=5 HTTP/1.1" 200')
