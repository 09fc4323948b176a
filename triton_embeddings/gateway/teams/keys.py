"""Named keys: parsed from `EMBEDDINGS_API_KEYS` and the key file, held only as sha256 digests, re-read when the
file changes (polled) or on SIGHUP; each change is logged by team name, never by key.

One key per line: the key (or `sha256:` and its 64 hex digits, so the file need not hold it in clear), then
optional `NAME=VALUE` fields: `team=`, `rpm=`, `tpm=`, `tpd=`. A line with the key alone, the old format, belongs
to the default team with the default quotas. Blank lines and `#` comments are ignored.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from triton_embeddings.gateway.teams.buckets import Limits

log = logging.getLogger("gateway.teams")
TEAM_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a metric label: bounded, printable
FIELDS = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "tpd": "tokens_per_day"}
HASHED = re.compile(r"^sha256:([0-9a-f]{64})$")


class KeyFileError(ValueError):
    """A key entry that cannot be read; the message names the entry's place, never its text."""


@dataclass(frozen=True)
class Key:
    """A valid key as the gateway holds it: its sha256 (hex), its team and its quotas."""

    id: str
    team: str
    limits: Limits


def key_id(key: str) -> str:
    """The sha256 hex digest of a presented key: how keys are held, and `request.state.key_id`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_entry(entry: str, where: str, default_team: str, defaults: Limits) -> Key:
    """One entry (`KEY [team=NAME] [rpm=N] [tpm=N] [tpd=N]`)."""
    secret, *fields = entry.split()
    hashed = HASHED.match(secret)
    team, limits = default_team, dict(requests_per_minute=defaults.requests_per_minute,
                                      tokens_per_minute=defaults.tokens_per_minute,
                                      tokens_per_day=defaults.tokens_per_day)
    for f in fields:
        name, _, value = f.partition("=")
        if name == "team" and TEAM_NAME.match(value):
            team = value
        elif name in FIELDS and value.isdigit():
            limits[FIELDS[name]] = int(value)
        else:
            raise KeyFileError(f"{where}: fields after the key are team=NAME ({TEAM_NAME.pattern}), rpm=N, "
                               "tpm=N, tpd=N (N a whole number, 0: no limit)")
    return Key(hashed.group(1) if hashed else key_id(secret), team, Limits(**limits))


def file_entries(path: Path) -> list[tuple[str, str]]:
    """The file's entries with their places (`file:LINE`)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line, f"{path.name}:{n}"))
    return out


def parse_keys(entries: list[tuple[str, str]], default_team: str, defaults: Limits) -> dict[str, Key]:
    """Every entry, by key id; the same key twice with other fields is an error."""
    keys: dict[str, Key] = {}
    for entry, where in entries:
        key = parse_entry(entry, where, default_team, defaults)
        if keys.get(key.id, key) != key:
            raise KeyFileError(f"{where}: this key is listed before with another team or other quotas")
        keys[key.id] = key
    return keys


def describe_change(old: dict[str, Key], new: dict[str, Key]) -> str:
    """The change by team: keys added, revoked, or with new team or quotas; nothing about the keys themselves."""
    added = Counter(new[k].team for k in new.keys() - old.keys())
    revoked = Counter(old[k].team for k in old.keys() - new.keys())
    changed = Counter(new[k].team for k in new.keys() & old.keys() if new[k] != old[k])
    parts = [f"team {t}: {what}" for counts, verb in ((added, "added"), (revoked, "revoked"), (changed, "changed"))
             for t, n in sorted(counts.items()) for what in [f"{n} key{'s' if n > 1 else ''} {verb}"]]
    return "; ".join(parts) or "no change"


class KeyStore:
    """The keys in force: the environment's entries and the file's, swapped whole on a good reload."""

    def __init__(self, env_entries: list[str], path: Path | None, default_team: str, defaults: Limits):
        self.path = path
        self.default_team = default_team
        self.defaults = defaults
        self._env = [(e, f"EMBEDDINGS_API_KEYS[{i}]") for i, e in enumerate(env_entries) if e.strip()]
        self._stamp = self._file_stamp()
        self.keys = self._read()

    @property
    def auth_on(self) -> bool:
        return bool(self.keys) or self.path is not None

    def get(self, key_id_: str) -> Key | None:
        return self.keys.get(key_id_)

    def teams(self) -> dict[str, list[Key]]:
        out: dict[str, list[Key]] = {}
        for key in self.keys.values():
            out.setdefault(key.team, []).append(key)
        return out

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat() if self.path else None
        except OSError:
            return None
        return st and (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, Key]:
        entries = self._env + (file_entries(self.path) if self.path else [])
        return parse_keys(entries, self.default_team, self.defaults)

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stat changed (polled); True when it was re-read."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.reload("file changed")
        return True

    def reload(self, why: str) -> None:
        """Re-read the keys; an unreadable file keeps the keys in force (and says where it failed)."""
        try:
            new = self._read()
        except (OSError, UnicodeDecodeError, KeyFileError) as e:
            reason = e if isinstance(e, KeyFileError) else type(e).__name__
            log.error("API keys not reloaded (%s): %s; the %d keys in force stay", why, reason, len(self.keys))
            return
        change = describe_change(self.keys, new)
        self.keys = new
        log.info("API keys reloaded (%s): %s; %d keys in %d teams", why, change, len(new), len(self.teams()))
