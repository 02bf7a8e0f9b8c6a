"""The config loader: typed models, units, env expansion, and errors that point at YAML lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from gateway.config import (
    AdminConfig,
    ConfigError,
    ConfigIssue,
    Duration,
    GatewayConfig,
    Listen,
    ListenAddress,
    MemoryConfig,
    RouteConfig,
    Size,
    TenantConfig,
    load_config,
)
from gateway.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "origins:\n  loader: {url: 'http://127.0.0.1:9000'}\n"


ONE_ROUTE = "origins: {o: {url: 'http://127.0.0.1:9'}}\nroutes: [{name: any, origin: o}]\n"


def write(tmp_path: Path, text: str, name: str = "gw.yaml") -> Path:
    """The YAML as given; one route (and its origin) appended when it has neither, since a
    file without routes is refused. Appended at the end, so lines of issues do not move."""
    text = textwrap.dedent(text).lstrip("\n")
    if "routes" not in text and "origins" not in text:
        text += ("" if text.endswith("\n") or not text else "\n") + ONE_ROUTE
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(path: Path, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.issues


def located(issues: list[ConfigIssue]) -> list[tuple[int | None, str]]:
    return [(i.line, i.field) for i in issues]


# ---------------------------------------------------------------- shipped files


def test_demo_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "gateway.yaml", env={})
    assert cfg.listen == Listen("127.0.0.1", 8080)
    assert cfg.admin.listen == Listen("127.0.0.1", 8081)
    assert cfg.admin.tokens[0].token == "dev-admin-token"
    assert cfg.admin.tokens[0].tenants == ["*"]
    assert [r.name for r in cfg.routes] == ["loader-code", "server-data", "default"]
    code, data, default = cfg.routes
    assert code.tenant is not None and code.tenant.query == "projectId"
    assert code.cache.stale_while_revalidate == 60.0
    assert code.cache.stale_if_error == 300.0
    assert code.cache.ignore_query == ["utm_*"]
    assert not data.cache.enabled
    assert default.match.path_prefix == "/" and default.cache.enabled
    assert cfg.origins["loader"].breaker.reset == 10.0
    assert cfg.cache.memory.max_bytes == 256 * 2**20
    assert cfg.source_path == str(ROOT / "config" / "gateway.yaml")


def test_demo_config_takes_admin_token_from_env() -> None:
    env = {"GATEWAY_ADMIN_TOKEN": "s3cret"}
    cfg = load_config(ROOT / "config" / "gateway.yaml", env=env)
    assert cfg.admin.tokens[0].token == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_full_example_loads() -> None:
    cfg = load_config(ROOT / "config" / "example-full.yaml", env={"GATEWAY_ADMIN_TOKEN": "t"})
    assert cfg.admin.listen == Listen("::1", 8081)
    assert cfg.origins["api"].host_header == "api.example.com"
    assert cfg.routes[0].match.methods == ["GET", "HEAD"]
    assert cfg.routes[0].cache.max_stale_if_error == 86400.0
    assert cfg.routes[1].tenant is not None and cfg.routes[1].tenant.host_label == 0
    assert cfg.routes[-1].match.host == "*"


def test_brief_shape_parses_with_unquoted_addresses_in_flow_mappings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen: 127.0.0.1:8080
        admin: {listen: 127.0.0.1:8081, tokens: [{name: ops, token: "${T}", tenants: ["*"]}]}
        """,
    )
    cfg = load_config(path, env={"T": "x"})
    assert cfg.admin.listen == Listen("127.0.0.1", 8081)


def test_leading_colon_in_flow_mapping_must_be_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, "admin: {listen: :8081}\n")
    [issue] = errors(path)
    assert issue.line == 1 and "invalid YAML" in issue.message
    ok = write(tmp_path, 'admin: {listen: ":8081"}\n', "ok.yaml")
    assert load_config(ok, env={}).admin.listen == Listen("0.0.0.0", 8081)


# ---------------------------------------------------------------- models and defaults


def test_a_file_with_one_route_gets_defaults_for_the_rest(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), env={})
    assert cfg.listen == Listen("127.0.0.1", 8080)
    assert cfg.admin == AdminConfig()
    assert cfg.cache.name == "edge" and cfg.cache.bust_grace == 300.0
    assert cfg.cache.pass_ttl == 10.0 and cfg.cache.collapse_timeout == 15.0
    assert cfg.cache.memory == MemoryConfig(max_bytes=256 << 20, max_object_bytes=16 << 20)
    assert (cfg.client_header_timeout, cfg.keepalive_timeout) == (10.0, 60.0)
    assert [r.name for r in cfg.routes] == ["any"]
    assert cfg.routes[0].cache.client_no_cache == "coalesce"


@pytest.mark.parametrize("text", ["", "# nothing here\n", "listen: 127.0.0.1:8080\n", ORIGIN])
def test_a_file_without_routes_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    [issue] = errors(path)
    assert issue.field == "routes" and "at least one route" in issue.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("cache: {name: edge}\nroutes: [\0]\n", 2, "character U+0000 is not allowed"),
        ("cache: {cache_bust: \"a\\0b\"}\n", 1, "control characters are not allowed"),
        ("cache: {cache_bust: \"a\\x1bb\"}\n", 1, "control characters are not allowed"),
    ],
)
def test_control_characters_are_config_errors_with_a_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text + ONE_ROUTE if "routes" not in text else text)
    issues = errors(path)
    assert (issues[0].line, message in issues[0].message) == (line, True), issues


def test_route_defaults_and_cache_flag(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ORIGIN
        + """
        routes:
          - {name: a, origin: loader}
          - {name: b, origin: loader, cache: true}
          - {name: c, origin: loader, cache: false}
          - {name: d, origin: loader, cache: {heuristic: true}, preserve_host: true}
        """.replace("\n        ", "\n"),
    )
    a, b, c, d = load_config(path, env={}).routes
    assert a.match.host == "*" and a.match.path_prefix == "/" and a.match.methods is None
    assert a.cache == b.cache and a.cache.enabled and a.tenant is None
    assert not c.cache.enabled
    assert d.cache.heuristic and d.cache.heuristic_fraction == 0.1 and d.preserve_host


def test_models_are_frozen_and_strict() -> None:
    cfg = GatewayConfig()
    with pytest.raises(ValidationError):
        cfg.listen = Listen("0.0.0.0", 1)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        TenantConfig.model_validate({"max_bytes": 1, "min_bytes": 0})


def test_tenant_quota_falls_back_to_default() -> None:
    cfg = GatewayConfig.model_validate(
        {"tenants": {"default": {"max_bytes": "1KiB"}, "acme": {"max_bytes": 10}}}
    )
    assert cfg.tenant_quota("acme") == 10
    assert cfg.tenant_quota("other") == 1024
    assert GatewayConfig().tenant_quota("acme") is None


def test_cross_checks_also_run_without_the_loader() -> None:
    with pytest.raises(ValidationError, match=r"routes\[0\]\.origin: unknown origin 'x'"):
        GatewayConfig.model_validate({"routes": [{"name": "r", "origin": "x"}]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080)),
        ("[::1]:8080", Listen("::1", 8080)),
        (":8080", Listen("0.0.0.0", 8080)),
        ("localhost:80", Listen("localhost", 80)),
        (9000, Listen("0.0.0.0", 9000)),
    ],
)
def test_listen_parses(text: object, expected: Listen) -> None:
    assert TypeAdapter(ListenAddress).validate_python(text) == expected


@pytest.mark.parametrize("text", ["8080x", "::1:8080", "[::1]8080", "[nope]:1", "h:70000", "h:"])
def test_listen_rejects(text: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(ListenAddress).validate_python(text)


def test_listen_str_round_trips() -> None:
    for listen in (Listen("::1", 1), Listen("10.0.0.1", 2)):
        assert TypeAdapter(ListenAddress).validate_python(str(listen)) == listen


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"url": "http://x/?a=1"}, "query"),
        ({"url": "http://x:99999"}, "invalid port"),
        ({"url": "http://x", "retries": -1}, "greater than or equal"),
        ({"url": "http://x", "connect_timeout": 0}, "greater than"),
        ({"url": "http://x", "host_header": ""}, "at least 1"),
    ],
)
def test_origin_validation(origin: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"origins": {"o": origin}})


def test_origin_base_path_allowed() -> None:
    cfg = GatewayConfig.model_validate({"origins": {"o": {"url": "https://h:8443/base/"}}})
    assert cfg.origins["o"].url == "https://h:8443/base/"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"match": {"path_prefix": "api/"}}, "must start with '/'"),
        ({"match": {"methods": []}}, "at least one method"),
        ({"name": "bad name"}, "invalid route name"),
        ({"tenant": {}}, r"exactly one of query, header, host_label, path_segment, fixed"),
        ({"tenant": {"fixed": "-x"}}, "invalid tenant name"),
        ({"cache": "no"}, "expected true, false or a mapping"),
        ({"cache": {"heuristic_fraction": 2}}, "less than or equal to 1"),
    ],
)
def test_route_validation(route: dict[str, object], message: str) -> None:
    data = {"name": "r", "origin": "o", **route}
    with pytest.raises(ValidationError, match=message):
        RouteConfig.model_validate(data)


def test_methods_are_uppercased() -> None:
    route = RouteConfig.model_validate({"name": "r", "origin": "o", "match": {"methods": ["get"]}})
    assert route.match.methods == ["GET"]


def test_memory_object_limit_must_fit() -> None:
    with pytest.raises(ValidationError, match="must not exceed max_bytes"):
        MemoryConfig.model_validate({"max_bytes": "1MiB", "max_object_bytes": "2MiB"})


def test_cache_name_must_be_a_token_and_bust_may_be_int() -> None:
    cfg = GatewayConfig.model_validate({"cache": {"cache_bust": 2}})
    assert cfg.cache.cache_bust == "2"
    with pytest.raises(ValidationError, match="HTTP token"):
        GatewayConfig.model_validate({"cache": {"name": "my cache"}})


def test_admin_tokens_validated() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        AdminConfig.model_validate({"tokens": [{"name": "a", "token": ""}]})
    with pytest.raises(ValidationError, match="unique"):
        AdminConfig.model_validate(
            {"tokens": [{"name": "a", "token": "x"}, {"name": "a", "token": "y"}]}
        )
    with pytest.raises(ValidationError, match="invalid tenant name"):
        AdminConfig.model_validate({"tokens": [{"name": "a", "token": "x", "tenants": ["a b"]}]})


def test_yaml_11_booleans_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ORIGIN
        + """
        cache: {cache_bust: on}
        tenants: {no: {max_bytes: 1}}
        routes: [{name: r, origin: loader, tenant: {fixed: yes}, preserve_host: true}]
        """.replace("\n        ", "\n"),
    )
    cfg = load_config(path, env={})
    assert cfg.cache.cache_bust == "on"
    assert "no" in cfg.tenants
    route = cfg.routes[0]
    assert route.tenant is not None and route.tenant.fixed == "yes" and route.preserve_host


def test_sexagesimal_and_octal_are_not_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "cache: {cache_bust: 1:30, pass_ttl: 010}\n")
    cfg = load_config(path, env={})
    assert cfg.cache.cache_bust == "1:30" and cfg.cache.pass_ttl == 10.0


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (10, 10.0),
        (0.5, 0.5),
        ("30", 30.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1m0.5s", 60.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert TypeAdapter(Duration).validate_python(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        ("5x", "invalid duration"),
        ("1h30", "invalid duration"),
        ("", "invalid duration"),
        (True, "expected a duration"),
        (float("inf"), "finite"),
    ],
)
def test_bad_durations(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (512, 512),
        ("512", 512),
        ("64KiB", 64 << 10),
        ("256MiB", 256 << 20),
        ("1GiB", 1 << 30),
        ("10MB", 10_000_000),
        ("1kB", 1000),
        ("1.5KiB", 1536),
        ("7B", 7),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert TypeAdapter(Size).validate_python(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1KiB", "must not be negative"),
        (-1, "must not be negative"),
        ("12 parsecs", "invalid size"),
        ("1.0001kB", "whole number of bytes"),
        (1.5, "whole number of bytes"),
        (False, "expected a size"),
    ],
)
def test_bad_sizes(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**62))
def test_size_format_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "B", "kB", "KB", "MB", "GB", "KiB", "MiB", "GiB", "TiB"]),
)
def test_size_units(count: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9}.get(unit)
    expected = count * (factor or 1 << {"KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[unit])
    assert parse_size(f"{count}{unit}") == expected


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_duration_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(*(st.integers(min_value=0, max_value=999) for _ in range(5)))
def test_duration_parts_add_up(d: int, h: int, m: int, s: int, ms: int) -> None:
    text = f"{d}d{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == d * 86400 + h * 3600 + m * 60 + s + ms / 1000


# ---------------------------------------------------------------- environment


def test_env_expansion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen: "${HOST}:${PORT}"
        cache:
          cache_bust: "${BUST:-7}"
          name: "${NAME:-edge}$$x"
        """,
    )
    cfg = load_config(path, env={"HOST": "0.0.0.0", "PORT": "9999", "BUST": ""})
    assert cfg.listen == Listen("0.0.0.0", 9999)
    assert cfg.cache.cache_bust == "7"
    assert cfg.cache.name == "edge$x"


def test_env_expansion_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_BUST", "from-os")
    cfg = load_config(write(tmp_path, "cache: {cache_bust: '${GW_TEST_BUST}'}\n"))
    assert cfg.cache.cache_bust == "from-os"


def test_expanded_value_is_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "cache: {cache_bust: '${X}'}\n")
    assert load_config(path, env={"X": "{a: 1}"}).cache.cache_bust == "{a: 1}"


def test_missing_env_var_names_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        admin:
          tokens:
            - name: ops
              token: "${GATEWAY_ADMIN_TOKEN}"
        """,
    )
    [issue] = errors(path)
    assert (issue.line, issue.field) == (4, "admin.tokens[0].token")
    assert "GATEWAY_ADMIN_TOKEN is not set" in issue.message
    assert str(issue).startswith(f"{path}:4: admin.tokens[0].token: environment variable")


def test_bad_env_reference(tmp_path: Path) -> None:
    path = write(tmp_path, "cache:\n  cache_bust: '${not valid}'\n  name: '${OPEN'\n")
    assert located(errors(path)) == [(2, "cache.cache_bust"), (3, "cache.name")]


# ---------------------------------------------------------------- located errors


def test_duplicate_key_reports_line_of_duplicate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ORIGIN
        + """
        routes:
          - name: a
            origin: loader
            name: b
        """.replace("\n        ", "\n"),
    )
    [issue] = errors(path)
    assert (issue.line, issue.field) == (7, "routes[0].name")
    assert issue.message == "duplicate key 'name' (first defined on line 5)"


def test_unknown_key_names_exact_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        origins:
          loader: {url: "http://127.0.0.1:9000"}
        routes:
          - name: a
            origin: loader
          - name: b
            origin: loader
            cahce: false
        """,
    )
    [issue] = errors(path)
    assert str(issue) == f"{path}:8: routes[1].cahce: unknown field 'cahce' (did you mean 'cache'?)"


def test_bad_origin_reference_names_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        origins:
          loader: {url: "http://127.0.0.1:9000"}
        routes:
          - name: a
            match: {path_prefix: /}
            origin: lodaer
        """,
    )
    [issue] = errors(path)
    assert str(issue) == f"{path}:6: routes[0].origin: unknown origin 'lodaer' (known: loader)"


def test_duplicate_route_names(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "routes:\n  - {name: a, origin: loader}\n  - name: a\n")
    issues = errors(path)
    assert located(issues) == [(5, "routes[1].name"), (5, "routes[1].origin")]
    assert "duplicate route name 'a'" in issues[0].message
    assert issues[1].message == "field required"


def test_tenant_source_with_two_choices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ORIGIN
        + """
        routes:
          - name: a
            origin: loader
            tenant:
              query: projectId
              header: X-Tenant
        """.replace("\n        ", "\n"),
    )
    [issue] = errors(path)
    assert (issue.line, issue.field) == (7, "routes[0].tenant")
    assert "exactly one of query, header, host_label, path_segment, fixed" in issue.message
    assert "(got: query, header)" in issue.message


def test_invalid_tenant_name_key(tmp_path: Path) -> None:
    path = write(tmp_path, "tenants:\n  ok: {max_bytes: 1}\n  'bad name': {max_bytes: 1}\n")
    [issue] = errors(path)
    assert (issue.line, issue.field) == (3, "tenants['bad name']")
    assert "invalid tenant name" in issue.message


def test_missing_field_uses_parent_line(tmp_path: Path) -> None:
    path = write(tmp_path, "origins:\n  o:\n    urll: http://127.0.0.1:1\n")
    found = located(errors(path))
    assert (2, "origins.o.url") in found and (3, "origins.o.urll") in found


def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:8080\ncache:\n  name: [edge\n  pass_ttl: 1s\n")
    [issue] = errors(path)
    assert issue.line is not None and issue.line >= 3
    assert issue.message.startswith("invalid YAML:")
    path = write(tmp_path, "a: 1\nb: [1, 2\n", "unclosed.yaml")
    [issue] = errors(path)
    assert "flow sequence started on line 2" in issue.message
    path = write(tmp_path, "a: 1\n b: 2\n", "indent.yaml")
    [issue] = errors(path)
    assert issue.line == 2


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("- 1\n- 2\n")
    [issue] = errors(path)
    assert (issue.line, issue.field) == (1, "")
    assert issue.message == "expected a mapping, got list"


def test_all_errors_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen: nowhere
        cache:
          pass_ttl: 5 minutes
          memory: {max_bytes: -1MiB}
        origins:
          loader: {url: "http://127.0.0.1:9000", retries: many}
        tenants:
          acme: {max_bytes: lots}
        routes:
          - name: a
            origin: lodaer
            cahce: false
          - name: b
            origin: loader
            tenant: {query: q, fixed: t}
            cache: {stale_if_error: 5x}
        admin:
          tokens: [{name: ops, token: "${MISSING}"}]
        """,
    )
    issues = errors(path)
    assert located(issues) == [
        (1, "listen"),
        (3, "cache.pass_ttl"),
        (4, "cache.memory.max_bytes"),
        (6, "origins.loader.retries"),
        (8, "tenants.acme.max_bytes"),
        (11, "routes[0].origin"),
        (12, "routes[0].cahce"),
        (15, "routes[1].tenant"),
        (16, "routes[1].cache.stale_if_error"),
        (18, "admin.tokens[0].token"),
    ]
    messages = {i.field: i.message for i in issues}
    assert "invalid duration '5 minutes'" in messages["cache.pass_ttl"]
    assert "must not be negative" in messages["cache.memory.max_bytes"]
    assert "valid integer" in messages["origins.loader.retries"]
    assert "(got 'many')" in messages["origins.loader.retries"]
    text = str(ConfigError(issues))
    assert text.count("\n") == len(issues) - 1
    assert f"{path}:11: routes[0].origin: unknown origin 'lodaer' (known: loader)" in text


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    [issue] = errors(path)
    assert issue.line is None and issue.field == ""
    assert str(issue).startswith(f"{path}: cannot read config:")


def test_config_issue_format() -> None:
    issue = ConfigIssue("config/bad.yaml", 12, "routes[0].origin", "unknown origin 'x'")
    assert str(issue) == "config/bad.yaml:12: routes[0].origin: unknown origin 'x'"
    assert str(ConfigIssue("f.yaml", None, "", "gone")) == "f.yaml: gone"
    error = ConfigError([issue, ConfigIssue("f.yaml", 1, "a", "b")])
    assert str(error) == "config/bad.yaml:12: routes[0].origin: unknown origin 'x'\nf.yaml:1: a: b"


# ---------------------------------------------------------------- the fleet


def test_the_fleet_config_loads_and_takes_its_ports_and_redis_from_the_env() -> None:
    env = {"GATEWAY_LISTEN": "127.0.0.1:8180", "REDIS_URL": "redis://127.0.0.1:6390/0"}
    cfg = load_config(ROOT / "config" / "fleet.yaml", env=env)
    assert cfg.listen == Listen("127.0.0.1", 8180)
    assert cfg.redis is not None and cfg.redis.url == "redis://127.0.0.1:6390/0"
    assert (cfg.redis.timeout, cfg.redis.lease, cfg.workers) == (0.1, 5.0, 1)


def test_workers_without_redis_are_refused_saying_why(tmp_path: Path) -> None:
    issues = errors(write(tmp_path, "workers: 2\n"))
    assert located(issues) == [(1, "workers")]
    assert "needs `redis:`" in issues[0].message


@pytest.mark.parametrize(
    ("redis", "field", "message"),
    [
        ("{url: 'http://127.0.0.1:6379'}", "redis.url", "redis://"),
        ("{url: 'redis://127.0.0.1:6379', timeout: 0s}", "redis.timeout", "greater than 0"),
        ("{url: 'redis://127.0.0.1:6379', prefix: 'a b'}", "redis.prefix", "pattern"),
        ("{timeout: 1s}", "redis.url", "required"),
    ],
)
def test_a_bad_redis_section_names_its_field(
    tmp_path: Path, redis: str, field: str, message: str
) -> None:
    issues = errors(write(tmp_path, f"redis: {redis}\n"))
    assert located(issues) == [(1, field)] and message in issues[0].message.lower()
