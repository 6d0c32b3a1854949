"""Issue #11 finding 10, email: recipients are bounded, and each entry is exactly one address - the one
the message is delivered to (a real SMTP server records the envelope)."""

from __future__ import annotations

import asyncio

import pytest

from chronos_adapters.executors import EmailExecutor, ExecutorConfig
from chronos_app import Chronos
from chronos_core.errors import ExecutionFailed, InvalidJob
from chronos_core.payloads import JobTypes
from tests.fixtures.smtp import LocalSmtpServer

from ._support import Lines, make_job, make_run


@pytest.mark.parametrize("entry", ["v1@x, v2@y, <a@example.com>", "a@example.com, b@example.com",
                                   "Doe, John <j@example.com>", "a@example.com; b@example.com",
                                   "<a@example.com> <b@example.com>", "x <a@example.com>\r\nBcc: b@e.com",
                                   "\"q\" <a@example.com>, c@example.com"])
def test_an_entry_that_is_not_exactly_one_address_is_refused(entry: str) -> None:
    with pytest.raises(InvalidJob) as err:
        JobTypes().validate("email", {"to": [entry], "text": "x"})
    assert err.value.errors[0].pointer == "/payload/to"


def test_single_addresses_are_kept_as_delivered() -> None:
    payload = JobTypes().validate("email", {"to": ["ann@example.com", "Ann <ann@example.com>",
                                                   '"Doe, John" <j@example.com>'], "text": "x"})
    assert payload["to"] == ["ann@example.com", "Ann <ann@example.com>", '"Doe, John" <j@example.com>']


async def test_the_delivered_address_is_the_validated_one(smtp_server: LocalSmtpServer) -> None:
    async with Chronos.embedded(executor_config=ExecutorConfig(
            smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_sender="ops@example.net")) as c:
        with pytest.raises(InvalidJob):
            await c.jobs.create({"name": "m", "type": "email",
                                 "payload": {"to": ["v1@x, v2@y, <a@example.com>"], "text": "x"}})
        job = await c.jobs.create({"name": "m", "type": "email", "payload": {
            "to": ['"Doe, John" <j@example.com>'], "text": "x"}})
        run = await c.jobs.trigger(job.id)
        async with asyncio.timeout(30):
            while not (await c.runs.get(run.id)).finished:  # noqa: ASYNC110 - polling the store
                await asyncio.sleep(0.05)
    [received] = smtp_server.received
    assert received.rcpt_tos == ["j@example.com"]


def test_recipients_are_bounded_when_the_job_is_made() -> None:
    many = [f"r{i}@example.com" for i in range(3000)]
    with pytest.raises(InvalidJob) as err:
        JobTypes().validate("email", {"to": many[:60], "bcc": many[60:], "text": "x"})
    assert "at most 100" in str(err.value)
    assert JobTypes(email_max_recipients=5000).validate("email", {"bcc": many, "text": "x"})
    JobTypes().validate("email", {"to": many[:100], "text": "x"})  # the limit itself is fine


async def test_the_executor_refuses_more_recipients_than_its_setting(smtp_server: LocalSmtpServer) -> None:
    ex = EmailExecutor(host=smtp_server.host, port=smtp_server.port, sender="ops@example.net",
                       max_recipients=10)
    job = make_job("email", {"bcc": [f"r{i}@example.com" for i in range(11)], "text": "x"})
    with pytest.raises(ExecutionFailed) as err:
        await ex.execute(job, make_run(job), Lines())
    assert not err.value.retryable and "at most 10" in str(err.value)
    assert smtp_server.received == []
