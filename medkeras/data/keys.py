"""Keyed patient and series keys: an HMAC of the ID with a secret of this user's, so a list of guessed IDs cannot
recover them (a fixed-salt hash could be reversed by hashing the guesses).

The secret is created once (32 random bytes, a file readable by its owner only: `$XDG_CONFIG_HOME/medkeras/
patient.key`, else `~/.config/medkeras/patient.key`) and is never written into a run, a store or a model. The same ID
gives the same key for the same secret, so splits stay stable across runs. To share keys across a team, share the
file (or its content): `MEDKERAS_PATIENT_KEY_FILE=/path/to/team.key`, `data.patient_key_file`, or the secret itself
in `MEDKERAS_PATIENT_KEY`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from medkeras.errors import ConfigError

KEY_ENV = "MEDKERAS_PATIENT_KEY"
KEY_FILE_ENV = "MEDKERAS_PATIENT_KEY_FILE"
KEY_LENGTH = 16  # hex characters of the HMAC kept: 64 bits, no collision among any realistic number of patients

_SECRETS: dict = {}


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medkeras" / "patient.key"


def _create(path: Path) -> None:
    """Write a new random secret to `path` (mode 0600), atomically: two processes starting at once keep one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".patient.key.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it meanwhile: theirs is kept
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def secret(key_file=None) -> bytes:
    """This user's secret: `MEDKERAS_PATIENT_KEY`, else the file (`key_file`, `MEDKERAS_PATIENT_KEY_FILE` or the
    default), created on first use."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip().encode()
    path = Path(key_file or os.environ.get(KEY_FILE_ENV) or default_key_file()).expanduser()
    if path not in _SECRETS:
        if not path.is_file():
            if key_file or os.environ.get(KEY_FILE_ENV):
                raise ConfigError(f"{path}: patient key file not found (share the team's key file, or remove the "
                                  "setting to use your own)")
            _create(path)
        value = path.read_bytes().strip()
        if len(value) < 16:
            raise ConfigError(f"{path}: patient key is too short ({len(value)} bytes; at least 16)")
        _SECRETS[path] = value
    return _SECRETS[path]


def keyed(kind: str, value, key_file=None) -> str | None:
    """The key of an ID (`kind` "patient", "series", "frame-of-reference"), or None for an empty ID."""
    text = str(value or "").strip()
    if not text:
        return None
    digest = hmac.new(secret(key_file), f"{kind}:{text}".encode(), hashlib.sha256).hexdigest()
    return digest[:KEY_LENGTH]


def patient_key(patient_id, key_file=None) -> str | None:
    return keyed("patient", patient_id, key_file)


def id_masks(path, raw_id, key: str | None) -> tuple:
    """((part, shown), ...) for each folder or file name of `path` holding the raw patient ID (TCIA names each
    patient's folder by its PatientID): what outputs show in its place, the ID replaced by `patient-KEY`. Nothing
    of the raw ID is kept beyond the path itself."""
    import re

    text = str(raw_id or "").strip()
    if len(text) < 3 or key is None:  # a one- or two-character ID would mask every path
        return ()
    pattern = re.compile(re.escape(text), re.IGNORECASE)
    return tuple((part, pattern.sub(f"patient-{key}", part)) for part in Path(str(path)).parts if pattern.search(part))


def masked_name(name: str, masks) -> str:
    """`name` (a relative path) with each part that holds a patient ID shown as `id_masks` gives it."""
    if not masks:
        return name
    shown = dict(masks)
    return "/".join(shown.get(part, part) for part in name.split("/"))

