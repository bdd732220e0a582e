"""The embedded subject, loaded once per test session: every smoke test here reads it, none changes its weights."""

from __future__ import annotations

import functools

from experiments.subject import Subject, load_subject


@functools.cache
def shared_subject() -> Subject:
    return load_subject()
