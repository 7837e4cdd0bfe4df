"""Where a collection lives: one parser for every location string the toolkit accepts.

Three kinds of location::

    photos.coll                                   a local folder (indexes.Collection)
    milvus://HOST[:PORT]/NAME[?OPTIONS]           collection NAME on a Milvus server or cluster
    milvus-lite://PATH.db/NAME[?timeout=S]        collection NAME in a Milvus Lite database

``PORT`` defaults to 19530. ``PATH.db`` is a Milvus Lite database (created on first use);
``milvus-lite:///data/vectors.db/photos`` is absolute, ``milvus-lite://vectors.db/photos``
relative to the working directory. ``NAME`` follows Milvus's rule: a letter or ``_``, then
letters, digits and ``_`` (at most 255 characters).

Options of ``milvus://`` (query parameters):

=============== ===========================================================================
``db``          database name (default: the server's default database)
``tls``         ``true`` to connect over TLS (also implied by any of the files below)
``server_pem``  server certificate (one-way TLS)
``server_name`` the name the server certificate was issued for
``ca_pem``, ``client_pem``, ``client_key``   CA and client certificate and key (mutual TLS)
``timeout``     seconds to wait for the server on each request (default 30)
=============== ===========================================================================

Credentials come from the environment, so they stay out of shell history, process lists
and logs: ``MILVUS_TOKEN`` (an API key or ``user:password``), or ``MILVUS_USER`` and
``MILVUS_PASSWORD``. ``milvus://user:password@host/NAME`` and ``?token=...`` work as well
but put the secret in the command line. Secrets never appear in ``str()``, ``repr()``, error
messages or logs of a :class:`Location`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["DEFAULT_MILVUS_PORT", "DEFAULT_TIMEOUT", "Location", "local_folder", "parse_location"]

DEFAULT_MILVUS_PORT = 19530
DEFAULT_TIMEOUT = 30.0  # seconds per request, and to connect
MILVUS = "milvus"
MILVUS_LITE = "milvus-lite"
LOCAL = "local"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_SERVER_OPTIONS = (
    "db",
    "tls",
    "server_pem",
    "server_name",
    "ca_pem",
    "client_pem",
    "client_key",
    "timeout",
    "token",
)
_LITE_OPTIONS = ("timeout",)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Location:
    """A parsed collection location. Build it with :func:`parse_location`; ``str()`` shows it without secrets."""

    kind: str  # "local" | "milvus" | "milvus-lite"
    path: Path | None = None  # the local folder, or the Milvus Lite database
    name: str | None = None  # Milvus collection name
    host: str | None = None  # Milvus server host (IPv6 without brackets)
    port: int | None = None  # Milvus server port
    db: str | None = None  # Milvus database; None: the server's default
    tls: bool = False  # connect over TLS
    server_pem: str | None = None  # server certificate (one-way TLS)
    server_name: str | None = None  # name the server certificate was issued for
    ca_pem: str | None = None  # CA certificate (mutual TLS)
    client_pem: str | None = None  # client certificate (mutual TLS)
    client_key: str | None = None  # client key (mutual TLS)
    timeout: float = DEFAULT_TIMEOUT  # seconds to connect and per request
    token: str | None = field(default=None, repr=False)  # API key or "user:password"; never shown

    @property
    def is_milvus(self) -> bool:
        """True for a Milvus server or Milvus Lite location."""
        return self.kind in (MILVUS, MILVUS_LITE)

    @property
    def uri(self) -> str:
        """What the Milvus client connects to: ``http(s)://host:port`` or the Lite database path (no secrets)."""
        if self.kind == MILVUS:
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        if self.kind == MILVUS_LITE:
            return str(self.path)
        raise ValueError(f"{self} is a local folder, not a Milvus location")

    def __str__(self) -> str:
        if self.kind == LOCAL:
            return str(self.path)
        if self.kind == MILVUS_LITE:
            return f"milvus-lite://{self.path}/{self.name}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        extra = []
        if self.db:
            extra.append(f"db={self.db}")
        if self.tls:
            extra.append("tls=true")
        return f"milvus://{host}:{self.port}/{self.name}" + ("?" + "&".join(extra) if extra else "")

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"


def _flag(value: str, what: str, text: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"location {text}: {what}={value!r} is not a boolean; use true or false")


def _timeout(value: str, text: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"location {text}: timeout={value!r} must be a positive number of seconds")
    return seconds


def _check_name(name: str, text: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"location {text}: collection name {name!r} is not valid in Milvus; use a letter or '_' "
            "followed by letters, digits and '_' (at most 255 characters)"
        )
    return name


def _options(query: str, allowed: tuple[str, ...], text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            raise ValueError(f"location {text}: unknown option {key!r}; expected one of {sorted(allowed)}")
        if key in options:
            raise ValueError(f"location {text}: option {key!r} is given twice")
        options[key] = value
    return options


def _redacted(text: str) -> str:
    """The location text with any password or token replaced (for error messages)."""
    text = re.sub(r"(token=)[^&#]*", r"\1***", text)
    return re.sub(r"^(milvus://)([^@/]*)@", r"\1***@", text)


def _credentials(user: str | None, password: str | None, token: str | None) -> str | None:
    if token:
        return token
    if user and password:
        return f"{user}:{password}"
    env_token = os.environ.get("MILVUS_TOKEN")
    if env_token:
        return env_token
    env_user, env_password = os.environ.get("MILVUS_USER"), os.environ.get("MILVUS_PASSWORD")
    if env_user and env_password:
        return f"{env_user}:{env_password}"
    return None


def _parse_server(text: str) -> Location:
    shown = _redacted(text)
    parts = urlsplit(text)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise ValueError(f"location {shown}: {exc}; expected milvus://HOST:PORT/NAME") from None
    if not host:
        raise ValueError(f"location {shown} names no host; expected milvus://HOST:PORT/NAME")
    name = parts.path.strip("/")
    if not name or "/" in name:
        raise ValueError(
            f"location {shown}: expected exactly one collection name after the host, as in "
            "milvus://HOST:PORT/NAME (choose the database with ?db=...)"
        )
    if parts.fragment:
        raise ValueError(f"location {shown}: unexpected '#{parts.fragment}'")
    options = _options(parts.query, _SERVER_OPTIONS, shown)
    files = {key: options.get(key) or None for key in ("server_pem", "ca_pem", "client_pem", "client_key")}
    mutual = [files["ca_pem"], files["client_pem"], files["client_key"]]
    if any(mutual) and not all(mutual):
        raise ValueError(f"location {shown}: mutual TLS needs all of ca_pem, client_pem and client_key")
    tls = _flag(options["tls"], "tls", shown) if "tls" in options else False
    tls = tls or any(files.values())
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return Location(
        kind=MILVUS,
        name=_check_name(name, shown),
        host=host,
        port=port or DEFAULT_MILVUS_PORT,
        db=options.get("db") or None,
        tls=tls,
        server_name=options.get("server_name") or None,
        timeout=_timeout(options["timeout"], shown) if "timeout" in options else DEFAULT_TIMEOUT,
        token=_credentials(user, password, options.get("token")),
        **files,
    )


def _parse_lite(text: str) -> Location:
    rest = text[len(MILVUS_LITE) + 3 :]
    rest, _, query = rest.partition("?")
    options = _options(query, _LITE_OPTIONS, text)
    db, _, name = rest.rpartition("/")
    if not db.endswith(".db") or not name:
        raise ValueError(
            f"location {text}: expected milvus-lite://PATH.db/NAME, e.g. milvus-lite:///data/vectors.db/photos "
            "(the database path must end in .db)"
        )
    return Location(
        kind=MILVUS_LITE,
        path=Path(db).expanduser(),
        name=_check_name(name, text),
        timeout=_timeout(options["timeout"], text) if "timeout" in options else DEFAULT_TIMEOUT,
    )


def parse_location(location: str | os.PathLike[str] | Location) -> Location:
    """Parse a location (see the module doc); a path or any string without ``scheme://`` is a local folder.

    Raises ``ValueError`` naming the problem (unknown scheme or option, missing name...).
    """
    if isinstance(location, Location):
        return location
    if isinstance(location, os.PathLike):
        return Location(kind=LOCAL, path=Path(location))
    if not isinstance(location, str):
        raise ValueError(
            f"a collection location must be a path or a string, received {type(location).__name__}"
        )
    text = location.strip()
    if not text:
        raise ValueError("the collection location is empty: give a folder or milvus://HOST:PORT/NAME")
    scheme, sep, _ = text.partition("://")
    if not sep or "/" in scheme or "\\" in scheme:
        return Location(kind=LOCAL, path=Path(location))
    scheme = scheme.lower()
    if scheme == MILVUS:
        return _parse_server(text)
    if scheme == MILVUS_LITE:
        return _parse_lite(text)
    if scheme == "file":
        return Location(kind=LOCAL, path=Path(unquote(text[len("file://") :])))
    raise ValueError(
        f"location {_redacted(text)} has unknown scheme {scheme!r}; expected a folder, milvus://HOST:PORT/NAME "
        "or milvus-lite://PATH.db/NAME"
    )


def describe(location: Any) -> str:
    """A printable form of any location (secrets removed), for messages."""
    try:
        return str(parse_location(location))
    except ValueError:
        return _redacted(str(location))


def local_folder(location: str | os.PathLike[str], what: str) -> Path:
    """The folder ``location`` names; ``ValueError`` when it is a Milvus location, which ``what``
    (e.g. "Collection.open") does not apply to, saying what to use instead."""
    if isinstance(location, str) and location.strip().lower().startswith(("milvus://", "milvus-lite://")):
        raise ValueError(
            f"{what} works on local folders, and {describe(location)} is a Milvus location: open it with "
            "indexes.open_collection (Milvus stores, compacts and checks its own segments)"
        )
    return Path(location)
