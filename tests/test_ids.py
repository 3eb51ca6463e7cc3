"""gateway/ids.py: ids with no system call each, unique within a process and across forks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from gateway.ids import unique_hex


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [unique_hex() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_its_own_prefix() -> None:
    """A child forked after ids were made would otherwise repeat the parent's next ones."""
    mine = unique_hex()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without the test runner's teardown
        os.write(write, unique_hex().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child[:16] != mine[:16]
    assert unique_hex()[:16] == mine[:16]


def test_each_process_draws_its_own_prefix() -> None:
    code = "from gateway.ids import unique_hex; print(unique_hex())"
    prefixes = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()[:16]
        for _ in range(3)
    }
    assert len(prefixes) == 3
