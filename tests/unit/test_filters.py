"""The one list-filter parser the library, the API and the stream share."""

from __future__ import annotations

import pytest

from chronos_app.api.problems import InvalidParameters
from chronos_core.errors import InvalidArgument
from chronos_core.filters import enum_set
from chronos_core.models import EventType, RunStatus


def test_strings_members_and_collections() -> None:
    assert enum_set(RunStatus, "failed, timed_out,,", "status", "run status") == {
        RunStatus.FAILED, RunStatus.TIMED_OUT}
    assert enum_set(RunStatus, RunStatus.QUEUED, "status", "run status") == {RunStatus.QUEUED}
    assert enum_set(RunStatus, ["running", RunStatus.QUEUED], "status", "run status") == {
        RunStatus.RUNNING, RunStatus.QUEUED}
    assert enum_set(EventType, "run.log", "types", "event type") == {EventType.RUN_LOG}


def test_no_filter_and_an_empty_one() -> None:
    assert enum_set(RunStatus, None, "status", "run status") is None
    assert enum_set(RunStatus, " , ", "status", "run status") is None  # a string with no item
    assert enum_set(RunStatus, [], "status", "run status") == set()  # a collection: matches nothing


def test_an_unknown_value_names_the_argument_and_the_known_values() -> None:
    with pytest.raises(InvalidArgument) as exc:
        enum_set(RunStatus, "failed,nope", "last_status", "run status")
    [error] = exc.value.errors
    assert error.loc == ("last_status",)
    assert error.reason.startswith("unknown run status 'nope'; known: queued, running")
    with pytest.raises(InvalidParameters):  # the API's own kind of 422
        enum_set(EventType, "run.nope", "types", "event type", error=InvalidParameters)
