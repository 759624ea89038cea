"""core.sql: the named statements' helpers that need no database."""
from __future__ import annotations

import uuid

import pytest

from core.sql import uuid_array


def test_uuids_become_one_array_literal_in_their_order():
    first, second = uuid.UUID(int=1), uuid.UUID(int=2)
    assert uuid_array([second, str(first)]) == f"{{{second},{first}}}"
    assert uuid_array([]) == "{}"


@pytest.mark.parametrize("value", ["a,b", str(uuid.UUID(int=3))[:-1], "{x}", 'a"b', "a b", "a\\b", "", "NULL"])
def test_a_value_that_could_end_or_escape_an_element_is_refused(value):
    with pytest.raises(ValueError, match="not a list of UUIDs"):
        uuid_array([uuid.UUID(int=1), value])
