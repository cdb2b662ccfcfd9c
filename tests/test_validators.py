"""Property tests of routes.validators: valid values pass, forbidden characters never do."""

from __future__ import annotations

import ipaddress
import re

import pytest
from django.core.exceptions import ValidationError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from routes import validators as v

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
# All-digit names are left out: resolvers read "0" or "10.1" as IPv4, so they are refused.
HOST_NAME = (
    st.lists(LABEL, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda h: len(h) <= 253 and not re.fullmatch(r"[0-9.]+", h))
)
PORT = st.integers(min_value=1, max_value=65535)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
# Characters that end a directive, open a block, start a comment or a quote, or are invisible.
DIRECTIVE_BREAKERS = list(" \t\n\r\"';{}#\\\x00\x1b\x7f")
SAFE_PATH_CHAR = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\"';{}#\\"
)
# Named groups are left out: the PCRE form (?<name>...) does not compile with Python's re,
# so the validator refuses it (reported to the lead).
REGEX_PIECES = [
    "/v1",
    "/v1beta",
    "/api",
    "/logs",
    "/",
    r"\.json",
    "(models|chat)",
    "[0-9]{1,3}",
    ".+",
    ".*",
    "[a-z]+",
    "(?:x|y)",
    r"\d+",
    "-",
    "_",
    "(/v[0-9])?",
]
REGEX = st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=6).map(
    lambda pieces: "^" + "".join(pieces) + "$"
)


def refuses(validator, value) -> bool:
    try:
        validator(value)
    except ValidationError:
        return True
    return False


def insert(value: str, char: str, at: int) -> str:
    at = at % (len(value) + 1)
    return value[:at] + char + value[at:]


# --- Server and host names -----------------------------------------------------------------------


@given(HOST_NAME)
def test_rfc_1123_host_names_are_accepted_as_server_names(name):
    v.validate_server_name(name)
    v.validate_server_name("*." + name)


@given(HOST_NAME, st.sampled_from(list("_ !@$%&*()+=[]{};:'\",<>/?\\|`~\x00")), st.integers())
def test_a_host_name_with_any_other_character_is_refused(name, char, at):
    assert refuses(v.validate_server_name, insert(name, char, at))


@given(HOST_NAME)
def test_upper_case_or_a_trailing_dot_must_be_normalised_first(name):
    assume(any(c.isalpha() for c in name))
    assert refuses(v.validate_server_name, name.upper())
    v.validate_server_name(v.normalize_server_name(name.upper() + "."))


@given(st.text(alphabet="abcdeü", min_size=1, max_size=20))
def test_idn_labels_normalise_to_accepted_punycode(label):
    normalised = v.normalize_server_name(f"{label}.example")
    assert normalised.isascii()
    v.validate_server_name(normalised)


def test_host_names_over_253_characters_are_refused():
    assert refuses(v.validate_server_name, ".".join(["a" * 63] * 4))
    assert refuses(v.validate_server_name, "a" * 64 + ".example")


# --- Upstreams -----------------------------------------------------------------------------------


@given(HOST_NAME | IPV4, PORT)
def test_host_and_ipv4_upstreams_round_trip(host, port):
    value = f"{host}:{port}"
    v.validate_upstream(value)
    assert v.split_host_port(value) == (host, port)


@given(IPV6, PORT)
def test_bracketed_ipv6_upstreams_round_trip(host, port):
    value = f"[{host}]:{port}"
    v.validate_upstream(value)
    found_host, found_port = v.split_host_port(value)
    assert ipaddress.ip_address(found_host) == ipaddress.ip_address(host)
    assert found_port == port


@given(HOST_NAME, st.integers(min_value=65536, max_value=99999) | st.just(0))
def test_ports_outside_1_to_65535_are_refused(host, port):
    assert refuses(v.validate_upstream, f"{host}:{port}")


@given(HOST_NAME, PORT, st.sampled_from(["http", "https", "tcp", "unix"]))
def test_an_upstream_with_a_scheme_is_refused(host, port, scheme):
    assert refuses(v.validate_upstream, f"{scheme}://{host}:{port}")


@given(HOST_NAME)
def test_an_upstream_without_a_port_is_refused(host):
    assert refuses(v.validate_upstream, host)


@pytest.mark.parametrize("value", ["300.1.1.1:80", "[::g]:80", "::1:80", "a_b:80", "a b:80"])
def test_malformed_upstreams_are_refused(value):
    assert refuses(v.validate_upstream, value)


# --- URLs ----------------------------------------------------------------------------------------


@given(
    st.sampled_from(["http", "https"]),
    HOST_NAME | IPV4,
    st.none() | PORT,
    st.from_regex(r"(/[A-Za-z0-9._~-]{0,12}){0,3}", fullmatch=True),
)
def test_http_and_https_urls_are_accepted(scheme, host, port, path):
    authority = host if port is None else f"{host}:{port}"
    v.validate_url(f"{scheme}://{authority}{path}")


@given(st.sampled_from(["ftp", "file", "javascript", "ws", "gopher"]), HOST_NAME)
def test_other_url_schemes_are_refused(scheme, host):
    assert refuses(v.validate_url, f"{scheme}://{host}/")


@given(HOST_NAME, st.sampled_from(list(" \"'<>\\\x00\n")))
def test_urls_with_quotes_brackets_or_whitespace_are_refused(host, char):
    assert refuses(v.validate_url, f"http://{host}/a{char}b")


def test_urls_with_credentials_are_refused():
    assert refuses(v.validate_url, "http://user:pw@cli-proxy-api:8317")


# --- Location paths and regexes ------------------------------------------------------------------


@given(st.text(SAFE_PATH_CHAR, max_size=60))
def test_paths_without_directive_breakers_are_accepted(rest):
    v.validate_location_path("/" + rest)


@given(st.text(SAFE_PATH_CHAR, max_size=30), st.sampled_from(DIRECTIVE_BREAKERS), st.integers())
def test_a_path_with_any_directive_breaker_is_refused(rest, char, at):
    assert refuses(v.validate_location_path, insert("/" + rest, char, at))


@given(st.text(SAFE_PATH_CHAR, min_size=1, max_size=30))
def test_a_path_must_start_with_a_slash(rest):
    assume(not rest.startswith("/"))
    assert refuses(v.validate_location_path, rest)


@given(REGEX)
def test_compiling_regexes_with_braces_and_anchors_are_accepted(regex):
    v.validate_location_regex(regex)


@given(REGEX, st.sampled_from(list(" \t\n\"';\x00\x7f")), st.integers())
def test_a_regex_with_whitespace_quotes_or_semicolons_is_refused(regex, char, at):
    assert refuses(v.validate_location_regex, insert(regex, char, at))


@given(REGEX, st.sampled_from(["(", "[", "{1,", "*?+"]))
def test_a_regex_that_does_not_compile_is_refused(regex, broken):
    candidate = regex + broken
    try:
        re.compile(candidate)
    except re.error:
        assert refuses(v.validate_location_regex, candidate)


# --- Sizes and file paths ------------------------------------------------------------------------


@given(st.from_regex(r"\d{1,9}[kKmMgG]?", fullmatch=True))
def test_nginx_sizes_are_accepted(size):
    v.validate_size(size)


@given(st.text(max_size=12))
def test_anything_else_is_not_a_size(text):
    assume(not re.fullmatch(r"\d{1,9}[kKmMgG]?", text))
    assert refuses(v.validate_size, text)


SEGMENT = st.from_regex(r"[A-Za-z0-9._@+=-]{1,16}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(st.lists(SEGMENT, min_size=1, max_size=6))
def test_absolute_file_paths_of_safe_characters_are_accepted(segments):
    v.validate_file_path("/" + "/".join(segments))


@given(
    st.lists(SEGMENT, min_size=1, max_size=4),
    st.sampled_from(list(" ;{}#'\"$\\*\n")),
    st.integers(),
)
def test_file_paths_with_special_characters_are_refused(segments, char, at):
    path = "/" + "/".join(segments)
    assert refuses(v.validate_file_path, "/" + insert(path[1:], char, at))


@settings(max_examples=20)
@given(st.lists(SEGMENT, max_size=3))
def test_relative_and_parent_paths_are_refused(segments):
    assert refuses(v.validate_file_path, "/".join(["etc", *segments]))
    assert refuses(v.validate_file_path, "/" + "/".join([*segments, ".."]))


@pytest.mark.parametrize(
    ("validator", "value"),
    [
        (v.validate_upstream, "cli-proxy-api:8317\n"),
        (v.validate_upstream, "cli-proxy-api\n:8317"),
        (v.validate_upstream, "[::1]:8317\n"),
        (v.validate_size, "64m\n"),
        (v.validate_file_path, "/etc/nginx/ssl/fullchain.pem\n"),
        (v.validate_cpa_version, "v7.1.39\n"),
        (v.validate_url, "http://cli-proxy-api:8317\n"),
        (v.validate_location_path, "/config\n"),
        (v.validate_location_regex, "^/v1/.+$\n"),
    ],
)
def test_a_trailing_newline_is_refused_everywhere(validator, value):
    # Regex `$` matches before a final newline; the validators anchor with \Z instead.
    assert refuses(validator, value)
    validator(value[:-1].replace("\n", ""))
