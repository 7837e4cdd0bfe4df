"""The one check that vectors and the collection they meet come from the same model.

A collection records the fingerprint of the model that filled it (``manifest.json``,
``Collection.fingerprint``). Adding vectors of another model, searching with it or evaluating
it against the collection would give garbage, so every such place calls
:func:`check_fingerprint` and gets the same clear error instead.
"""

from __future__ import annotations

__all__ = ["check_fingerprint"]

DEFAULT_FIX = "use the model that made it, or re-embed the corpus with this model"


def check_fingerprint(
    expected: str | None, received: str | None, *, what: str, fix: str = DEFAULT_FIX
) -> None:
    """Raise ``ValueError`` unless ``received`` equals ``expected``; ``None`` on either side passes
    (a fingerprint that was never recorded, or a model that has none).

    ``what`` names the thing that recorded ``expected`` (e.g. ``"collection photos/"``) and ``fix``
    says what to do about a mismatch; both go into the message, with both fingerprints.

    >>> check_fingerprint("abc", "abc", what="collection c")
    >>> check_fingerprint(None, "abc", what="collection c")
    >>> check_fingerprint("abc", "xyz", what="collection c")
    Traceback (most recent call last):
    ...
    ValueError: collection c was made by the model with fingerprint abc, but the model given has fingerprint xyz: use the model that made it, or re-embed the corpus with this model
    """
    if expected is None or received is None or str(expected) == str(received):
        return
    raise ValueError(
        f"{what} was made by the model with fingerprint {expected}, but the model given has "
        f"fingerprint {received}: {fix}"
    )
