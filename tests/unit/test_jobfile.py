"""Job files: YAML or JSON, one job or many, turned into plain JSON data for the API."""

from __future__ import annotations

import re

import pytest

from chronos_app.jobfile import JobFileError, parse_jobs


def test_yaml_with_timestamps_becomes_json_data() -> None:
    jobs, single = parse_jobs("name: a\ntype: shell\nstart_at: 2027-01-01T09:00:00+01:00\n"
                              "end_at: 2027-02-01\npayload: {command: 'true'}\n")
    assert single
    assert jobs == [{"name": "a", "type": "shell", "start_at": "2027-01-01T09:00:00+01:00",
                     "end_at": "2027-02-01", "payload": {"command": "true"}}]


def test_json_a_list_and_several_documents() -> None:
    assert parse_jobs('{"name": "a", "type": "http"}') == ([{"name": "a", "type": "http"}], True)
    assert parse_jobs('[{"name": "a"}, {"name": "b"}]')[1] is False
    jobs, single = parse_jobs("name: a\n---\nname: b\n---\n")
    assert [j["name"] for j in jobs] == ["a", "b"] and not single
    # starts like JSON but is a YAML flow mapping
    assert parse_jobs("{name: a, type: shell}") == ([{"name": "a", "type": "shell"}], True)


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no job"),
    ("- a\n- b\n", "job #1 is a str, not a mapping"),
    ("schedule: @every 5m\n", "quote values that start with"),
    ("schedule: */5 * * * *\n", 'schedule: "*/5 * * * *"'),
    ("name: [unclosed\n", "neither JSON nor YAML"),
])
def test_refusals_say_why(text: str, message: str) -> None:
    with pytest.raises(JobFileError, match=re.escape(message)):
        parse_jobs(text, "jobs.yaml")
