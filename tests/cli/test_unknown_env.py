"""A misspelt ``CHRONOS_*`` variable is not ignored without a word: the service processes log which one,
naming the setting it was probably meant to be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chronos_app.settings import Settings

CHRONOS = str(Path(sys.executable).with_name("chronos"))


def test_unknown_names_are_reported_with_the_closest_setting() -> None:
    environ = {"CHRONOS_CONCURENCY": "4", "CHRONOS_CONCURRENCY": "4", "CHRONOS_URL": "http://x",
               "CHRONOS_TOKEN": "t", "CHRONOS_JOB_ID": "j", "CHRONOS_NOTHING_LIKE_IT": "1", "DB_HOST": "db",
               "CHRONOS_SMTP_PASS": "p", "HOME": "/"}
    assert Settings.unknown_env(environ) == [
        "CHRONOS_CONCURENCY is not a setting (did you mean CHRONOS_CONCURRENCY?): ignored",
        "CHRONOS_NOTHING_LIKE_IT is not a setting: ignored",
        "CHRONOS_SMTP_PASS is not a setting (did you mean CHRONOS_SMTP_PASSWORD?): ignored",
    ]
    names = Settings.env_names()
    assert {"CHRONOS_HISTORY_MAX_AGE", "CHRONOS_NOTIFIER_LEASE", "DB_HOST", "SMTP_PASS"} <= names


def test_a_service_process_logs_a_misspelt_name(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    env.update(CHRONOS_DATABASE_URL=f"sqlite:///{tmp_path}/m.db", CHRONOS_HISTORY_MAX_AGES="60")
    r = subprocess.run([CHRONOS, "migrate"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert (b"CHRONOS_HISTORY_MAX_AGES is not a setting (did you mean CHRONOS_HISTORY_MAX_AGE?)"
            in r.stderr)


def test_a_refused_setting_is_named_without_echoing_its_value(tmp_path: Path) -> None:
    """A setting refused at start-up is named with its reason and a non-zero exit, but its value is not
    printed: a webhook header of CHRONOS_NOTIFY_DEFAULT past the bounds is typically a credential."""
    secret = "Bearer " + "s3cr3t-" * 1300  # past the 8,192-character bound for a header value
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    env.update(CHRONOS_DATABASE_URL=f"sqlite:///{tmp_path}/m.db", CHRONOS_NOTIFY_DEFAULT=(
        '[{"on": ["failed"], "webhook": {"url": "https://ops.example/h", "headers": {"Authorization": "'
        + secret + '"}}}]'))
    r = subprocess.run([CHRONOS, "migrate"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "invalid configuration: notify_default: Value error, notify.0.webhook.headers: header " \
           "'Authorization' is 13 characters with a value of 9107" in err
    assert "s3cr3t" not in err and "s3cr3t" not in r.stdout.decode()
