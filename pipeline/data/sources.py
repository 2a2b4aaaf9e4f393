"""Downloading the data's files: URL downloads with retries, size caps and md5 checks (fetch's
`url` source; archives are unpacked by data/archives.py).

Secrets in a URL (a `user:password@` or query values such as `?token=`) are sent but never
shown: every message prints `redact_url(url)`, never a parser's or http.client's own text. Credentials may also come from `~/.netrc`
(or the file `$NETRC` names), which keeps them out of params.yaml and dvc.lock.
"""

from __future__ import annotations

import http.client
import netrc
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, printable
from pipeline.files import DISK_WRITE_ERRNOS, atomic_path
from pipeline.reporting import console, download_progress

DOWNLOAD_ATTEMPTS = 4
DOWNLOAD_BACKOFF_SECONDS = 2.0  # doubled after each failed attempt
DOWNLOAD_CHUNK_BYTES = 1 << 20
MAX_DOWNLOAD_BYTES = 256 << 20  # the official cifar-10-python.tar.gz is 163 MiB
REDACTED = "***"


# --- URLs and their secrets -------------------------------------------------------------------


# What every URL reader (urllib, curl, browsers) takes for the host part: up to the first '/', '?'
# or '#'. A password holding one of them (`alice:s3cr/et@host`) puts part of it there.
_HOST_PART_END = re.compile(r"[/?#]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)(?::[0-9]*)?")


@dataclass(frozen=True)
class _SplitURL:
    """A URL cut around its user info, read the way its writer meant it."""

    prefix: str  # "https://", or "" for no scheme
    userinfo: str | None  # "user:password" as written; None when the URL has none
    rest: str  # from the host on: "host:port/path?query#fragment"
    ambiguous: bool  # the user info holds an unencoded '/', '?' or '#'


def _host_part(text: str) -> str:
    end = _HOST_PART_END.search(text)
    return text[: end.start()] if end else text


def _names_a_host(host_port: str, *, only_plausible: bool = False) -> bool:
    """Whether `host_port` reads as host[:port]; `only_plausible`: a dotted name, an IP, or
    localhost, not a lone word such as the user name before a password's '/'."""
    match = _HOST_PORT.fullmatch(host_port)
    if match is None:
        return False
    host = match.group(1)
    return not only_plausible or "." in host or host[0] == "[" or host.lower() == "localhost"


def _split_url(url: str) -> _SplitURL:
    """Find the user info by the last '@' before a host, even where a password holds '/?#'.

    Where the standard host part reads as a host (with an '@': any host; without one: a
    plausible one), that is the reading. Otherwise (`alice:s3cr` of `alice:s3cr/etPW@host`, or
    the lone word `tok` of `tok/en@host`) an '@' further on followed by a host ends the user
    info: it is hidden whole, and `_opener_for` refuses the URL rather than guess where to send
    credentials. The cost: a one-word host with an '@' in its path (`http://files/pkg@2/x`) is
    read as user info too, and refused with the same way out (percent-encoding).
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _SplitURL("", None, url, ambiguous=False)
    prefix, rest = scheme.group(), url[scheme.end() :]
    userinfo, at, host_port = _host_part(rest).rpartition("@")
    standard = _SplitURL(prefix, userinfo if at else None, rest[len(userinfo + at) :], False)
    if _names_a_host(host_port, only_plausible=not at):
        return standard
    for index in reversed([i for i, char in enumerate(rest) if char == "@"]):
        if _names_a_host(_host_part(rest[index + 1 :])):
            return _SplitURL(prefix, rest[:index], rest[index + 1 :], ambiguous=True)
    return standard  # no host anywhere: `_opener_for` says it is not a valid URL


def redact_url(url: str) -> str:
    """`url` fit to print: the whole user info (`user:password@`, a lone `token@`) and every
    query value (and fragment) become ***.

    The user name goes too: it is often the token itself (`ghp_...:x-oauth-basic@`). All query
    values go, not only those of token-like keys: signed URLs hide their secret under many
    names (token, sig, X-Amz-Signature, key, ...).
    """
    split = _split_url(url)
    hidden = "" if split.userinfo is None else f"{REDACTED}@"
    try:
        parts = urllib.parse.urlsplit(split.prefix + hidden + split.rest)
    except ValueError:
        return "(an unparseable URL)"
    query = "&".join(
        f"{piece.partition('=')[0]}={REDACTED}" if "=" in piece else REDACTED
        for piece in parts.query.split("&")
        if piece
    )
    fragment = REDACTED if parts.fragment else ""
    return printable(urllib.parse.urlunsplit(parts._replace(query=query, fragment=fragment)))


def url_has_secrets(url: str) -> bool:
    """Whether `url` carries what `redact_url` hides (user info, a query or a fragment)."""
    split = _split_url(url)
    try:
        parts = urllib.parse.urlsplit(split.prefix + split.rest)
    except ValueError:
        return True
    return split.userinfo is not None or bool(parts.query or parts.fragment)


def _opener_for(url: str) -> tuple[urllib.request.OpenerDirector, str]:
    """An opener that sends the URL's (or ~/.netrc's) credentials, and the URL without them.

    Checked before any connection, and refused in words of our own: a parser's or http.client's
    message quotes the URL, secrets and all. urllib cannot open `user:password@host` itself (it
    takes the password for a port). The credentials go in an Authorization header from the
    first request on (servers that answer 404 rather than 401 never ask), only to this URL: a
    redirect elsewhere does not carry them.
    """
    shown = redact_url(url)
    if not all("!" <= char <= "~" for char in url):
        raise PipelineError(
            f"{shown}: a URL cannot hold spaces, control or non-ASCII characters; percent-encode "
            "them (a space is %20)"
        )
    split = _split_url(url)
    if split.ambiguous:
        raise PipelineError(
            f"{shown}: cannot tell where the host starts; percent-encode '/', '?' and '#' in a "
            "user name or password (%2F, %3F, %23) and '@' elsewhere (%40), or put the "
            "credentials in ~/.netrc"
        )
    try:
        parts = urllib.parse.urlsplit(split.prefix + split.rest)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise PipelineError(f"{shown}: not a valid URL (its host or port cannot be read)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineError(f"{shown}: not an http:// or https:// URL")
    plain_url = urllib.parse.urlunsplit(parts)
    if split.userinfo is not None:
        user, _, password = split.userinfo.partition(":")
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    else:
        user, password = _netrc_credentials(parts.hostname)
    if user is None:
        return urllib.request.build_opener(), plain_url
    passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
    passwords.add_password(None, plain_url, user, password, is_authenticated=True)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords)), plain_url


def _netrc_credentials(hostname: str) -> tuple[str | None, str]:
    """The login and password `~/.netrc` (or `$NETRC`) holds for the host (or its `default`)."""
    path = os.environ.get("NETRC")  # None: ~/.netrc, with Python's check that only you can read it
    try:
        entries = netrc.netrc(path)
    except FileNotFoundError:
        return None, ""
    except netrc.NetrcParseError as error:  # its message may quote a token, so only the line
        permissions = f" ({error.msg})" if error.msg.startswith("~/.netrc") else ""
        raise PipelineError(
            f"{error.filename}, line {error.lineno}: not a valid netrc file{permissions}"
        ) from None
    except OSError as error:
        raise PipelineError(f"{path or '~/.netrc'}: unreadable ({error.strerror})") from None
    entry = entries.authenticators(hostname)
    return (entry[0], entry[2] or "") if entry else (None, "")


# --- downloads --------------------------------------------------------------------------------


def download_file(url: str, destination: Path, md5: str | None) -> None:
    """Stream `url` to `destination` with a progress bar, retrying transient failures.

    The file lands only after its length and (if given) md5 check out; a client error (4xx), an
    oversized answer and a local disk problem (full, read-only: `DISK_WRITE_ERRNOS`, left for
    the caller to report) are not retried.
    """
    from torchvision.datasets.utils import check_integrity  # heavy import, only when downloading

    shown = redact_url(url)
    opener, plain_url = _opener_for(url)
    delay = DOWNLOAD_BACKOFF_SECONDS
    last_problem = ""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with atomic_path(destination) as temp_path:
                _stream_to(opener, plain_url, temp_path, shown)
                if md5 is not None and not check_integrity(str(temp_path), md5):
                    raise _TransientDownloadError(f"md5 mismatch (expected {md5})")
            return
        except http.client.InvalidURL:  # permanent; and its text quotes the URL, token and all
            raise PipelineError(f"{shown}: not a valid URL (the HTTP client refused it)") from None
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code not in (408, 429):
                raise PipelineError(
                    f"{shown}: download failed: HTTP {error.code} {error.reason}"
                    + _refused_hint(error.code)
                ) from None
            last_problem = f"HTTP {error.code} {error.reason}"
        except OSError as error:
            if error.errno in DISK_WRITE_ERRNOS:  # our disk, not the network: a retry cannot help
                raise
            last_problem = str(getattr(error, "reason", None) or error)
        except http.client.HTTPException as error:  # its text may quote the request line
            last_problem = f"not a valid HTTP answer ({type(error).__name__})"
        except _TransientDownloadError as error:
            last_problem = str(error)
        if attempt < DOWNLOAD_ATTEMPTS:
            console.print(
                f"download attempt {attempt} failed ({last_problem}); retrying in {delay:.0f} s",
                style="yellow",
            )
            time.sleep(delay)
            delay *= 2
    raise PipelineError(
        f"{shown}: download failed after {DOWNLOAD_ATTEMPTS} attempts: {last_problem}"
    )


def _refused_hint(code: int) -> str:
    if code in (401, 403):
        return " (check the credentials: user:password@ in the URL, ~/.netrc, or its token)"
    return ""


class _TransientDownloadError(Exception):
    pass


def _stream_to(opener: urllib.request.OpenerDirector, url: str, path: Path, shown: str) -> None:
    with opener.open(url, timeout=60) as response, path.open("wb") as handle:
        expected = int(response.headers.get("Content-Length") or 0) or None
        if expected is not None and expected > MAX_DOWNLOAD_BYTES:
            raise PipelineError(_oversized_download(shown, expected))
        received = 0
        with download_progress() as progress:
            name = Path(urllib.parse.urlsplit(url).path).name or "download"  # no query: no token
            task = progress.add_task(name, total=expected)
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:  # a server that never stops would fill the disk
                    raise PipelineError(_oversized_download(shown, received))
                handle.write(chunk)
                progress.update(task, advance=len(chunk))
    if expected is not None and received != expected:
        raise _TransientDownloadError(f"connection closed after {received} of {expected} bytes")


def _oversized_download(shown: str, size: int) -> str:
    return (
        f"{shown}: refused a download of {size:,}+ bytes, more than the "
        f"{MAX_DOWNLOAD_BYTES >> 20} MiB a CIFAR-10 archive needs (the wrong URL?)"
    )
