"""check_fingerprint: the one model-identity check every caller of a collection uses."""

from __future__ import annotations

import doctest

import pytest

import indexes.fingerprint as fingerprint_mod
from indexes.fingerprint import check_fingerprint


def test_equal_or_unknown_fingerprints_pass():
    check_fingerprint("abc", "abc", what="collection c")
    check_fingerprint(None, "abc", what="collection c")
    check_fingerprint("abc", None, what="collection c")
    check_fingerprint(None, None, what="collection c")


def test_a_mismatch_names_both_fingerprints_what_and_the_fix():
    with pytest.raises(ValueError) as info:
        check_fingerprint("old-model", "new-model", what="collection photos/", fix="re-embed it")
    message = str(info.value)
    assert "collection photos/" in message and "re-embed it" in message
    assert "fingerprint old-model," in message and message.index("old-model") < message.index("new-model")


def test_docstring_examples():
    assert doctest.testmod(fingerprint_mod, raise_on_error=False).failed == 0
