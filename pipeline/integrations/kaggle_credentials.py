"""Kaggle credentials: where the kaggle client finds them (named, never printed), and `redact`,
the one filter every text from Kaggle or the client passes before we print it."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.reporting import warn

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # characters: shorter "secrets" would blank ordinary words
# an HTTP credential as servers echo it: "Basic <base64 user:key>", "Bearer <token>"
HTTP_CREDENTIAL = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]{8,}")
CREDENTIALS_HELP = (
    "put kaggle.json in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, or set "
    "KAGGLE_API_TOKEN (from kaggle.com/settings)"
)


def _exists(path: Path, file: bool = False) -> bool:
    """`path` exists (is a file); a folder we may not look into (an odd HOME) is "no"."""
    try:
        return path.is_file() if file else path.exists()
    except OSError:
        return False


def kaggle_config_dir() -> Path:
    """Where the kaggle client looks for kaggle.json / access_token (its own rules)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home_dir = Path.home() / ".kaggle"
    if _exists(home_dir):
        return home_dir
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def kaggle_credentials_source() -> str | None:
    """Name where the kaggle client will find credentials (never their value), or None.

    The client's own places: KAGGLE_API_TOKEN, KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json in its
    config folder, and ~/.kaggle/access_token(.txt) and ~/.kaggle/credentials.json (`kaggle auth
    login`), which it reads from the home folder whatever KAGGLE_CONFIG_DIR says.
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    home_dir = Path.home() / ".kaggle"
    candidates = [kaggle_config_dir() / "kaggle.json"] + [
        home_dir / name for name in ("access_token", "access_token.txt", "credentials.json")
    ]
    return next((str(path) for path in candidates if _exists(path, file=True)), None)


def check_kaggle_json() -> None:
    """A kaggle.json that is not a JSON object (truncated, half-edited) was reported as
    "authentication failed". Its keys are the client's to judge: it may hold only settings,
    with the credentials elsewhere (an access token, `kaggle auth login`)."""
    path = kaggle_config_dir() / "kaggle.json"
    if not _exists(path, file=True):
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise PipelineError(
            f"{path}: not a JSON object (truncated or edited?); download a new token on "
            "kaggle.com → Settings → API, and replace it"
        )


def warn_if_readable_by_others() -> None:
    """kaggle.json holds the API key: other users of the machine must not be able to read it."""
    for path in (kaggle_config_dir() / "kaggle.json", Path.home() / ".kaggle" / "access_token"):
        if _exists(path, file=True) and path.stat().st_mode & 0o077:
            warn(
                f"{path} (your Kaggle key) can be read by other users of this "
                f"machine; run `chmod 600 {path}`"
            )


# --- keeping credentials off the console ----------------------------------------------------

known_secrets: set[str] = set()  # what connect() found, for redact()


def credential_strings(username: str | None, key: str | None, token: str | None) -> set[str]:
    """The strings that give the credentials away: key, token, base64 of username:key."""
    found = {value for value in (key, token) if value}
    if username and key:
        pair = f"{username}:{key}".encode()
        found |= {base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()}
    return {value for value in found if len(value) >= MIN_SECRET_LENGTH}


def redact(text: str) -> str:
    """`text` (from Kaggle or the client) without credentials: the one filter for what we print."""
    environment = os.environ.get
    secrets = known_secrets | credential_strings(
        environment("KAGGLE_USERNAME"), environment("KAGGLE_KEY"), environment("KAGGLE_API_TOKEN")
    )
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: b64 before the key
        text = text.replace(secret, REDACTED)
    return HTTP_CREDENTIAL.sub(rf"\1 {REDACTED}", text)
