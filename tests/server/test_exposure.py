"""Safe by default: a server reachable from other machines refuses to start without real user and admin keys, and
no message ever shows a key (config-level, no engine)."""

from __future__ import annotations

import pytest

from server.auth import MIN_KEY_LENGTH, is_loopback
from server.config import ConfigError, load_config
from tests.plugins.live_server import build_tiny_family, tiny_config, write_config

USER = "u" * 24
ADMIN = "a" * 24


@pytest.fixture(scope="module")
def family(tmp_path_factory, tiny_model):
    return build_tiny_family(tmp_path_factory.mktemp("family"), base=tiny_model)


def _load(tmp_path, family, *, host: str, auth: dict, cli_host: str | None = None, engine: dict | None = None):
    cfg = tiny_config(tmp_path, family, port=1, judges=[])
    cfg["auth"] = auth
    cfg["server"]["host"] = host
    if engine:
        cfg["engine"].update(engine)
    return load_config(write_config(tmp_path / "server.yaml", cfg), host=cli_host)


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("127.0.0.5", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                           ("::", False), ("example.org", False)])
def test_loopback(host, expected):
    assert is_loopback(host) is expected


def test_loopback_may_run_without_keys(tmp_path, family):
    cfg = _load(tmp_path, family, host="127.0.0.1", auth={})
    assert cfg.auth.open


@pytest.mark.parametrize("auth,needles", [
    ({}, ["0.0.0.0", "user keys", "admin keys", "are missing"]),
    ({"api_keys": [USER]}, ["admin keys (auth.admin_keys_env) are missing"]),
    ({"admin_keys": [ADMIN]}, ["user keys", "are missing"]),
    ({"api_keys": ["sk-demo-user"], "admin_keys": [ADMIN]}, ["placeholder or demo key", "openssl rand"]),
    ({"api_keys": [USER], "admin_keys": ["change-me-admin-key"]}, ["admin key is a placeholder"]),
    ({"api_keys": ["short-but-real"], "admin_keys": [ADMIN]}, [f"at least {MIN_KEY_LENGTH} characters"]),
])
def test_reachable_server_needs_real_keys(tmp_path, family, auth, needles):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, family, host="0.0.0.0", auth=auth)
    for n in needles:
        assert n in str(e.value), str(e.value)
    for k in auth.get("api_keys", []) + auth.get("admin_keys", []):
        assert k not in str(e.value)  # the refusal says why, never which key


def test_the_cli_host_counts_and_env_keys_pass(tmp_path, family, monkeypatch):
    with pytest.raises(ConfigError, match="would listen on 0.0.0.0"):
        _load(tmp_path, family, host="127.0.0.1", auth={}, cli_host="0.0.0.0")
    monkeypatch.setenv("T_USER_KEYS", f"{USER},{'v' * 30}")
    monkeypatch.setenv("T_ADMIN_KEYS", ADMIN)
    cfg = _load(tmp_path, family, host="0.0.0.0", auth={"api_keys_env": "T_USER_KEYS", "admin_keys_env": "T_ADMIN_KEYS"})
    assert cfg.auth.user_keys == (USER, "v" * 30) and cfg.auth.admin_keys == (ADMIN,)


def test_scoped_keys_reach_only_their_models(tmp_path, family):
    safe_key = "s" * 24
    cfg = _load(tmp_path, family, host="0.0.0.0", auth={
        "api_keys": [USER], "admin_keys": [ADMIN], "scoped_keys": [{"keys": [safe_key], "models": ["*+safegene"]}]})
    full, safe = cfg.auth.scope_of(USER), cfg.auth.scope_of(safe_key)
    assert full.allows("alpha") and full.allows("alpha+safegene")
    assert safe.allows("alpha+safegene") and not safe.allows("alpha") and not safe.allows("tiny")
    assert cfg.auth.scope_of("nope") is None and cfg.auth.scope_of(ADMIN).allows("alpha")
    assert not cfg.auth.is_admin(safe_key) and cfg.auth.is_admin(ADMIN)


@pytest.mark.parametrize("scoped,needle", [
    ([{"keys": ["x" * 20]}], "expected a mapping with 'keys' or 'keys_env', and 'models'"),
    ([{"keys": ["x" * 20], "models": []}], "models: expected a non-empty list"),
    ([{"models": ["*"]}], "no keys"),
    ([{"keys": [USER], "models": ["*"]}], "the same user key is listed twice"),
    ([{"keys": ["x" * 20], "models": ["*"], "role": "admin"}], "unknown key(s) role"),
])
def test_scoped_key_errors_name_the_entry(tmp_path, family, scoped, needle):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, family, host="127.0.0.1",
              auth={"api_keys": [USER], "admin_keys": [ADMIN], "scoped_keys": scoped})
    assert needle in str(e.value) and "scoped_keys[0]" in str(e.value) or "twice" in str(e.value)


def test_a_refused_flag_never_echoes_its_value(tmp_path, family):
    for extra in (["--api-key=sk-live-123456789"], ["--api-key", "sk-live-123456789"]):
        with pytest.raises(ConfigError) as e:
            _load(tmp_path, family, host="127.0.0.1", auth={}, engine={"extra_args": extra})
        assert "--api-key" in str(e.value) and "sk-live-123456789" not in str(e.value)
