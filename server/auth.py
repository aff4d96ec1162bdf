"""Bearer keys, their scopes, the exposure rule, and OpenAI-style error bodies.

Three kinds of key (config ``auth``, docs/server.md):

* ``api_keys`` / ``api_keys_env``: user keys that reach every served model;
* ``scoped_keys``: user keys that reach only the models matching their ``models`` patterns (``fnmatch``), e.g. an
  operator hands a team a key for ``*+safegene`` variants only; any other model answers 403;
* ``admin_keys`` / ``admin_keys_env``: the admin API (``/admin/...``), and every model.

The exposure rule (:func:`check_exposure`): a server listening beyond loopback needs both user and admin keys, none of
them a shipped placeholder or demo key, each at least :data:`MIN_KEY_LENGTH` characters. Messages never contain a
key. Keys are compared in constant time.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any

#: keys that ship in this repository (demo config, .env.example, docs): never valid on a reachable server
PLACEHOLDER_KEYS = frozenset({
    "sk-demo-user", "sk-demo-admin", "change-me", "change-me-user-key", "change-me-admin-key", "sk-test-user",
    "sk-test-admin", "sk-bench", "none", "changeme", "secret", "password",
})
#: the shortest key a reachable server accepts (a random 24-byte hex key has 48)
MIN_KEY_LENGTH = 16


class AuthConfigError(ValueError):
    """The auth section is invalid (the message names the entry, never a key)."""


@dataclass(frozen=True)
class KeyScope:
    """User keys and the models they may use (``fnmatch`` patterns; ``("*",)``: every model)."""

    keys: tuple[str, ...]
    models: tuple[str, ...] = ("*",)

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)


ADMIN_SCOPE = KeyScope((), ("*",))


@dataclass(frozen=True)
class AuthConfig:
    user: tuple[KeyScope, ...] = ()
    admin_keys: tuple[str, ...] = ()
    #: where the keys came from, for messages: "auth.api_keys_env=SAFEGENE_API_KEYS" and the like (never a key)
    sources: tuple[str, ...] = field(default=())

    @property
    def user_keys(self) -> tuple[str, ...]:
        return tuple(k for s in self.user for k in s.keys)

    @property
    def open(self) -> bool:
        """No user key at all: /v1 is open (allowed on loopback only)."""
        return not self.user_keys

    def scope_of(self, token: str | None) -> KeyScope | None:
        """The scope a bearer token grants (admins: every model), or None. Every key is compared, in constant time."""
        found: KeyScope | None = None
        for scope in self.user:
            if key_matches(token, list(scope.keys)) and found is None:
                found = scope
        if key_matches(token, list(self.admin_keys)):
            found = ADMIN_SCOPE
        return found

    def is_admin(self, token: str | None) -> bool:
        return key_matches(token, list(self.admin_keys))


def _key_list(section: dict[str, Any], name: str, where: str) -> list[str]:
    """Keys from a list, plus a comma-separated env var named by ``<name>_env`` (keeps secrets out of YAML)."""
    keys = section.get(name) or []
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise AuthConfigError(f"{where}.{name}: expected a list of non-empty strings")
    env = section.get(f"{name}_env")
    if env:
        keys = keys + [k.strip() for k in os.environ.get(str(env), "").split(",") if k.strip()]
    return list(keys)


def parse_auth(raw: Any, where: str) -> AuthConfig:
    """The ``auth`` section. Raises :class:`AuthConfigError` naming the entry."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise AuthConfigError(f"{where}: expected a mapping with 'api_keys' and 'admin_keys'")
    allowed = {"api_keys", "api_keys_env", "admin_keys", "admin_keys_env", "scoped_keys"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise AuthConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    user = [KeyScope(tuple(_key_list(raw, "api_keys", where)))]
    scoped = raw.get("scoped_keys") or []
    if not isinstance(scoped, list):
        raise AuthConfigError(f"{where}.scoped_keys: expected a list of {{keys|keys_env, models}} mappings")
    for i, entry in enumerate(scoped):
        w = f"{where}.scoped_keys[{i}]"
        if not isinstance(entry, dict) or "models" not in entry:
            raise AuthConfigError(f"{w}: expected a mapping with 'keys' or 'keys_env', and 'models' (patterns)")
        bad = sorted(set(entry) - {"keys", "keys_env", "models"})
        if bad:
            raise AuthConfigError(f"{w}: unknown key(s) {', '.join(bad)} (allowed: keys, keys_env, models)")
        models = entry["models"]
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise AuthConfigError(f"{w}.models: expected a non-empty list of model names or patterns like "
                                  "'*+safegene'")
        keys = _key_list(entry, "keys", w)
        if not keys:
            raise AuthConfigError(f"{w}: no keys (set 'keys' or the variable named by 'keys_env')")
        user.append(KeyScope(tuple(keys), tuple(models)))
    admin = tuple(_key_list(raw, "admin_keys", where))
    all_user = [k for s in user for k in s.keys]
    if set(all_user) & set(admin):
        raise AuthConfigError(f"{where}: an admin key must not also be a user API key")
    if len(set(all_user)) != len(all_user):
        raise AuthConfigError(f"{where}: the same user key is listed twice (give each key one scope)")
    sources = tuple(f"auth.{k}={raw[k]}" for k in ("api_keys_env", "admin_keys_env") if raw.get(k))
    return AuthConfig(user=tuple(s for s in user if s.keys), admin_keys=admin, sources=sources)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(auth: AuthConfig, host: str, where: str) -> None:
    """Refuse to listen beyond loopback without real keys (AuthConfigError saying what to set; no key in it)."""
    if is_loopback(host):
        return
    why = (f"{where}: the server would listen on {host}, which other machines can reach, so it needs ")
    if not auth.user_keys or not auth.admin_keys:
        missing = " and ".join(n for n, ks in (("user keys (auth.api_keys_env or auth.scoped_keys)", auth.user_keys),
                                               ("admin keys (auth.admin_keys_env)", auth.admin_keys)) if not ks)
        raise AuthConfigError(why + f"both user and admin keys; {missing} are missing. Set them through environment "
                              "variables (docs/deploy.md), or listen on 127.0.0.1.")
    every = [("user", k) for k in auth.user_keys] + [("admin", k) for k in auth.admin_keys]
    for kind, k in every:
        if k.lower() in PLACEHOLDER_KEYS:
            raise AuthConfigError(why + f"real keys, but a {kind} key is a placeholder or demo key shipped with "
                                  "SafeGene Serve. Generate one, e.g. `openssl rand -hex 24`.")
        if len(k) < MIN_KEY_LENGTH:
            raise AuthConfigError(why + f"keys of at least {MIN_KEY_LENGTH} characters; a {kind} key has {len(k)}. "
                                  "Generate one, e.g. `openssl rand -hex 24`.")


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for k, v in scope.get("headers") or []:
        if k == b"authorization":
            text = v.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
            return None
    return None


def key_matches(token: str | None, keys: list[str]) -> bool:
    """Constant-time membership test (never short-circuits on the first differing byte)."""
    if token is None:
        return False
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(token.encode(), k.encode())
    return ok


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None, extra: dict | None = None) -> bytes:
    """The body OpenAI returns for errors: ``{"error": {"message", "type", "param", "code"}}``; ``extra``: fields
    a client acts on without parsing the message (e.g. a refused gate's job id), added beside those four."""
    return json.dumps({"error": {**(extra or {}), "message": message, "type": type_, "param": param,
                                 "code": code}}).encode()
