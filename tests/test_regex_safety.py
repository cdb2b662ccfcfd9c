"""Regexes cannot hang anything (issue 9, item 4).

A regex override is refused when a static check proves it catastrophic (nested repeats over the
same characters), and every regex that is accepted still runs under CONSOLE_REGEX_TIMEOUT in the
simulator, the routes tester, the lint, the config page and ``export_nginx --all``: a slow one is
a clear message, never a 500 or a hang.
"""

from __future__ import annotations

import re
import time

import pytest
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from routes import validators as v
from routes.models import Deployment, RouteOverride
from routes.nginx import regexes
from routes.nginx.lint import lint
from routes.nginx.render import InvalidDeployment, effective_locations, render_site
from routes.nginx.simulate import Router
from tests.test_export_nginx import export

# Accepted by every validator (no nested repeat), yet a backtracking engine tries 6**n ways to
# fail on a run of n word characters: only the time limit can stop it.
SLOW = r"^/(\w|\w|\w|\w|\w|\w)+!"
SLOW_PATH = "/" + "a" * 40
LIMIT = 0.05
# Generous: the regex package checks the clock every few thousand steps, so a search may run
# past the limit by a little; without the limit these take hours.
BOUND = 5.0

CATASTROPHIC = [
    r"(a+)+",
    r"^/(a+)+$",
    r"(a*)*",
    r"^/(.*a){3,}$",
    r"^/x(.*a){20,}",
    r"^/([a-z]+-?)+$",
    r"^/((ab)+)+$",
    r"^/(a{1,3})+$",
    r"^/(.+/)*x$",
    r"^/(\d+\.?)+$",
    r"(?i)^/(A+a)+$",
    r"^/(?:x|(?<inner>b+))+$",
    r"^/(a+?)+?$",
]
SAFE_NESTED = [
    r"^/(\w+/)+$",
    r"^/(/[a-z]+)+$",
    r"^/(v[0-9]+/)*x",
    r"^/([^/]+/)*x$",
    r"^/api/(?:[a-z0-9-]+\.)+json$",
    r"^/(ab+)+$",
    r"^/(A+a)+$",
    r"^/(?>a+)+$",
    r"^/(a++)+$",
    r"^/(a|aa)+$",
    r"^/(?<ver>v[0-9]+)/\k<ver>$",
    r"^/(?P<ver>v[0-9]+)/(?P=ver)$",
    r"^/v2/.+",
    r"\.(png|css)$",
]


@pytest.fixture(autouse=True)
def _short_limit(settings):
    settings.CONSOLE_REGEX_TIMEOUT = LIMIT


def refusal(pattern: str) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        v.validate_location_regex(pattern)
    return raised.value


# --- The static check -----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_it_refuses_nested_repeats_over_the_same_characters(pattern):
    error = refusal(pattern)
    assert error.code == "catastrophic"
    message = " ".join(error.messages)
    assert "nests repeats" in message and "(a+)+" in message


@pytest.mark.parametrize("pattern", SAFE_NESTED)
def test_it_accepts_nested_repeats_that_cannot_split_the_same_text(pattern):
    v.validate_location_regex(pattern)
    assert regexes.catastrophic_overlap(pattern) is None


def test_the_refusal_names_the_character_both_repeats_match():
    assert "'a'" in " ".join(refusal(r"^/([a-z]+-?)+$").messages)
    assert "'/'" in " ".join(refusal(r"^/(.+/)*x$").messages)
    assert regexes.catastrophic_overlap(r"^/(.*a){3,}$") == "a"


def test_a_case_insensitive_location_is_judged_case_insensitively():
    assert regexes.catastrophic_overlap(r"^/(A+a)+$") is None
    assert regexes.catastrophic_overlap(r"^/(A+a)+$", caseless=True) == "A"


@pytest.mark.django_db
def test_a_catastrophic_override_is_refused_with_its_field_named(deployment):
    override = RouteOverride(deployment=deployment, match="regex", path=r"^/(a+)+$", target="cpa")
    with pytest.raises(ValidationError) as raised:
        override.full_clean()
    assert list(raised.value.error_dict) == ["path"]
    with pytest.raises(InvalidDeployment) as rendered:
        render_site(deployment, [override])
    assert "overrides[regex ^/(a+)+$].path" in str(rendered.value)


PIECES = ["a", "b", "/", r"\w", r"\d", "[a-z]", "[^/]", ".", "-", r"\.", "(?:x|y)"]
QUANTIFIERS = ["", "+", "*", "?", "{2}", "{1,3}", "+?"]


@st.composite
def nested_patterns(draw):
    inner = "".join(
        draw(st.sampled_from(PIECES)) + draw(st.sampled_from(QUANTIFIERS))
        for _ in range(draw(st.integers(1, 3)))
    )
    return "^/(" + inner + ")" + draw(st.sampled_from(["+", "*", "{2,}", "{3}", "?"])) + "$"


@given(nested_patterns())
def test_every_pattern_the_check_passes_still_compiles_and_every_refusal_says_why(pattern):
    overlap = regexes.catastrophic_overlap(pattern)
    if overlap is None:
        v.validate_location_regex(pattern)
        return
    # Only an unbounded outer repeat is judged; a bounded one ({3}, ?) is left to the limit.
    assert pattern.endswith(("+$", "*$", "{2,}$"))
    assert overlap in " ".join(refusal(pattern).messages)


def test_it_refuses_deep_nesting_instead_of_crashing_on_it():
    deep = "(" * 340 + "a+" + ")+" * 340
    assert len(deep) <= 1024
    error = refusal(deep)
    assert "more than 20 deep" in " ".join(error.messages)
    v.validate_location_regex("(" * 10 + "a" + ")" * 10)


@given(st.text(alphabet="()[]{}^$.*+?|\\:<>=!aPk0-9,/", max_size=80))
def test_any_text_is_accepted_or_refused_with_a_reason_never_a_crash(text):
    try:
        v.validate_location_regex(text)
    except ValidationError as exc:
        assert exc.messages
    else:
        assert regexes.catastrophic_overlap(text) is None
        assert regexes.compile_location(text, caseless=False) is not None


def test_the_refused_examples_really_are_exponential_for_a_backtracking_engine():
    # Python's re has no guard against nested repeats, like nginx's PCRE: 2**n steps.
    re.compile(r"^/(a+)+$")
    fast = time.perf_counter()
    re.search(r"^/(a+)+$", "/" + "a" * 10 + "!")
    fast = time.perf_counter() - fast
    slow = time.perf_counter()
    re.search(r"^/(a+)+$", "/" + "a" * 20 + "!")
    slow = time.perf_counter() - slow
    assert slow > 50 * fast


def test_pcre_named_groups_match_in_the_simulator_as_in_nginx():
    locations = effective_locations(
        _Mode(), [_Override("regex", r"^/(?<ver>v[0-9]+)/\k<ver>$", "cpamp")]
    )
    result = Router(locations).simulate("/v7/v7")
    assert result.location is not None and result.location.path.startswith("^/(?<ver>")
    assert result.upstream == "cpamp"


class _Mode:
    mode = "manager_server"


class _Override:
    def __init__(self, match: str, path: str, target: str):
        self.match, self.path, self.target = match, path, target
        self.enabled, self.position, self.pk, self.note = True, 0, 1, ""


# --- The time limit -------------------------------------------------------------------------


def test_the_slow_example_passes_every_validator():
    v.validate_location_regex(SLOW)
    assert regexes.catastrophic_overlap(SLOW) is None


def test_the_simulator_stops_a_slow_regex_at_the_limit_with_a_clear_message():
    router = Router(effective_locations(_Mode(), [_Override("regex", SLOW, "cpamp")]))
    started = time.monotonic()
    with pytest.raises(regexes.RegexTimeout) as raised:
        router.simulate(SLOW_PATH)
    assert time.monotonic() - started < BOUND
    message = raised.value.message
    assert message == (
        f"The regular expression {SLOW} took longer than {LIMIT:g} s to match {SLOW_PATH}; "
        "simplify it."
    )
    # The router remembers the slow pattern: the next path does not wait out the limit again.
    started = time.monotonic()
    with pytest.raises(regexes.RegexTimeout):
        router.simulate(SLOW_PATH + "b")
    assert time.monotonic() - started < LIMIT


def test_a_fast_path_through_the_same_regex_still_matches():
    router = Router(effective_locations(_Mode(), [_Override("regex", SLOW, "cpamp")]))
    assert router.simulate("/abc!").upstream == "cpamp"
    assert router.simulate("/v1/models").upstream == "cpa"


@pytest.fixture
def slow(deployment):
    RouteOverride.objects.create(deployment=deployment, match="regex", path=SLOW, target="cpamp")
    # A second override whose lint warning must survive the slow one.
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/v1/", target="cpamp", position=1
    )
    return Deployment.objects.prefetch_related("overrides").get(pk=deployment.pk)


@pytest.mark.django_db
def test_the_lint_reports_a_slow_regex_and_still_checks_the_other_overrides(slow):
    started = time.monotonic()
    warnings = lint(slow)
    assert time.monotonic() - started < BOUND
    codes = [w.code for w in warnings]
    assert codes.count("regex_timeout") == 1
    assert "boundary_moved" in codes
    timeout = next(w for w in warnings if w.code == "regex_timeout")
    assert timeout.subject == f"~ {SLOW}"
    assert f"took longer than {LIMIT:g} s to match" in timeout.message
    assert "simplify it" in timeout.message


@pytest.mark.django_db
def test_the_routes_tester_answers_a_slow_regex_with_a_message_not_a_hang(client, operator, slow):
    client.force_login(operator)
    url = reverse("admin:routes_deployment_routes", args=[slow.pk])
    started = time.monotonic()
    response = client.get(url, {"path": SLOW_PATH})
    assert time.monotonic() - started < BOUND
    assert response.status_code == 200
    page = response.content.decode()
    assert "took longer than" in page and "simplify it" in page
    assert 'id="tester-result"' not in page
    assert 'id="routing-table"' in page


@pytest.mark.django_db
def test_the_config_page_shows_a_slow_regex_as_a_lint_warning(client, operator, slow, settings):
    settings.CONSOLE_NGINX_BIN = ""
    client.force_login(operator)
    started = time.monotonic()
    response = client.get(reverse("admin:routes_deployment_config", args=[slow.pk]))
    assert time.monotonic() - started < BOUND
    assert response.status_code == 200
    page = response.content.decode()
    assert "regex_timeout" in page and "boundary_moved" in page


@pytest.mark.django_db
def test_export_all_finishes_on_slow_regexes_and_says_which(slow, team, tmp_path):
    other = Deployment.objects.create(
        slug="staging", name="Staging", team=team, server_name="staging.example.com"
    )
    RouteOverride.objects.create(deployment=other, match="regex_i", path=SLOW, target="cpa")
    started = time.monotonic()
    out, err = export("--all", "--output-dir", str(tmp_path))
    assert time.monotonic() - started < 2 * BOUND
    assert "prod.conf" in out and "staging.conf" in out
    lines = [line for line in err.splitlines() if "regex_timeout" in line]
    assert [line.split(":")[1].strip() for line in lines] == ["prod", "staging"]
    assert all("took longer than" in line for line in lines)


@pytest.mark.django_db
def test_export_all_refuses_a_catastrophic_regex_stored_behind_the_validators(slow, tmp_path):
    # Older rows or raw SQL: the export refuses with the field named, and nothing hangs.
    RouteOverride.objects.filter(deployment=slow, match="regex").update(path=r"^/(a+)+$")
    started = time.monotonic()
    with pytest.raises(CommandError) as raised:
        export("--all", "--output-dir", str(tmp_path))
    assert time.monotonic() - started < BOUND
    assert "overrides[regex ^/(a+)+$].path" in str(raised.value)
    assert "nests repeats" in str(raised.value)
    assert not (tmp_path / "prod.conf").exists()
