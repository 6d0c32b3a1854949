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


# ------------------------------------- header injection through RFC 2047 encoded-words and line breaks

INJECTED_SUBJECTS = [
    "=?utf-8?q?hi=0D=0ABcc:_victim@evil.example?=",  # decoded: "hi\r\nBcc: victim@evil.example"
    "=?utf-8?b?aGkNCkJjYzogdmljdGltQGV2aWwuZXhhbXBsZQ==?=",  # the same, base64
    "=?utf-8?q?hi=0AX-Evil:_1?=", "ok =?iso-8859-1?q?hi=0D=0AX-Evil:_1?= end",
    "=?utf-8?q?hi=0D=0A=0D=0Aa_body_of_the_attacker's?=",  # a blank line: the body starts there
    "hi\u2028X-Evil: 1", "hi\x0bX-Evil: 1", "hi\x00there"]


@pytest.mark.parametrize("subject", INJECTED_SUBJECTS)
def test_a_subject_that_would_write_more_header_lines_is_refused(subject: str) -> None:
    with pytest.raises(InvalidJob) as err:
        JobTypes().validate("email", {"to": ["a@example.com"], "subject": subject, "text": "x"})
    assert err.value.errors[0].pointer == "/payload/subject"


@pytest.mark.parametrize("entry", ["=?utf-8?q?Bob=0D=0AX-Evil=3A_1?= <a@example.com>",
                                   "=?utf-8?b?Qm9iDQpYLUV2aWw6IDE=?= <a@example.com>",
                                   '"=?utf-8?q?Bob=0AX-Evil=3A_1?=" <a@example.com>', "a\x00b@example.com",
                                   "Bob\x1b[31m <a@example.com>"])
def test_a_name_that_decodes_to_a_line_break_is_refused(entry: str) -> None:
    for field in ("to", "cc", "bcc", "sender"):
        payload = {"to": ["a@example.com"], "text": "x", field: [entry] if field != "sender" else entry}
        with pytest.raises(InvalidJob) as err:
            JobTypes().validate("email", payload)
        assert err.value.errors[0].pointer == f"/payload/{field}"


async def test_an_injected_subject_never_reaches_the_smtp_server(smtp_server: LocalSmtpServer) -> None:
    # a job stored before the check (or by a plugin path) still fails at its run, not retried
    ex = EmailExecutor(host=smtp_server.host, port=smtp_server.port, sender="ops@example.net")
    for subject in INJECTED_SUBJECTS[:5]:
        job = make_job("email", {"to": ["a@example.com"], "subject": subject, "text": "x"})
        with pytest.raises(ExecutionFailed) as err:
            await ex.execute(job, make_run(job), Lines())
        assert not err.value.retryable
    assert smtp_server.received == []


def test_the_written_headers_are_checked_whatever_the_payload_check_missed() -> None:
    from chronos_adapters.executors.email import build_message
    from chronos_core.payloads import EmailPayload

    unchecked = EmailPayload.model_construct(to=["a@example.com"], cc=[], bcc=[], sender=None,
                                             subject=INJECTED_SUBJECTS[0], text="x", html=None)
    with pytest.raises(ValueError, match="several lines"):
        build_message(unchecked, "ops@example.net")


async def test_encoded_words_and_unicode_still_send(smtp_server: LocalSmtpServer) -> None:
    ex = EmailExecutor(host=smtp_server.host, port=smtp_server.port, sender="ops@example.net")
    job = make_job("email", {"to": ["=?utf-8?q?J=C3=BCrgen?= <j@example.com>", "Zoë Ünal <z@example.com>"],
                             "subject": "=?utf-8?q?Gr=C3=BC=C3=9Fe?=, 日本語 " + "long " * 60,
                             "text": "x", "html": "<b>x</b>"})
    assert (await ex.execute(job, make_run(job), Lines())).ok
    [received] = smtp_server.received
    assert received.rcpt_tos == ["j@example.com", "z@example.com"]
    assert str(received.message["Subject"]).startswith("Grüße, 日本語 long")
    assert "X-Evil" not in received.message and "Bcc" not in received.message


async def test_a_job_name_cannot_inject_headers_into_its_notification_email(
        smtp_server: LocalSmtpServer) -> None:
    # the notification subject is "[chronos] <job name>: <event>" and a job name may hold =?...?=
    from datetime import UTC, datetime

    from chronos_adapters.notify import EmailNotifier
    from chronos_core.hooks import Notice, NoticeKind

    name = "=?utf-8?q?nightly=0D=0ABcc:_victim@evil.example?="
    notifier = EmailNotifier(EmailExecutor(host=smtp_server.host, port=smtp_server.port,
                                           sender="ops@example.net"))
    now = datetime.now(UTC)
    notice = Notice(id="n1", key="r:failed:0", kind=NoticeKind.NOTIFY, event="failed", job_id="j",
                    run_id="r", target={"email": {"to": ["ops@example.com"]}},
                    data={"event": "failed", "job": {"id": "j", "name": name}, "run": {"id": "r"}},
                    created_at=now, due_at=now)
    outcome = await notifier.deliver(notice)
    assert outcome.ok, outcome.error
    [received] = smtp_server.received
    assert received.rcpt_tos == ["ops@example.com"]
    assert "Bcc" not in received.message
    assert str(received.message["Subject"]) == f"[chronos] {name.replace('=?', '= ?')}: failed"


@pytest.mark.timeout(60)  # before: 30 s for 100 KB on the event loop, quadratic (a 1 MiB body: hours)
@pytest.mark.parametrize("entry", ["a@" + "b." * 50_000, '"' + "a," * 50_000 + '" <a@example.com>',
                                   "=?utf-8?q?" + "=41" * 30_000 + "?= <a@example.com>"])
def test_a_huge_address_is_refused_before_the_email_parser_reads_it(entry: str) -> None:
    for field in ("to", "sender"):
        with pytest.raises(InvalidJob) as err:
            JobTypes().validate("email", {"to": ["a@example.com"], "text": "x",
                                          field: [entry] if field == "to" else entry})
        assert "longer than 320 characters" in str(err.value)
