"""Run and job ids: UUIDv7, strictly increasing within a process, apart across forked processes."""

from __future__ import annotations

import os
import uuid

from chronos_core import ids
from chronos_core.ids import new_id


def test_ids_are_uuid7_and_strictly_increasing() -> None:
    made = [new_id() for _ in range(20_000)]  # several per millisecond: the counter orders them
    assert made == sorted(made) and len(set(made)) == len(made)
    for text in made[:50]:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next random bits and leave at once
        os.write(write, str(ids._random.getrandbits(62)).encode())
        os._exit(0)
    os.close(write)
    child = int(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(pid, 0)
    assert child != ids._random.getrandbits(62)
