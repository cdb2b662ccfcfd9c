"""English and Simplified Chinese: a complete catalogue, and custom pages with no English left."""

from __future__ import annotations

import gettext
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import NoReverseMatch, reverse

from routes.models import (
    CheckResult,
    ConfigExport,
    Deployment,
    Key,
    VerificationJob,
    VerificationRun,
)

LOCALE = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"
PO = LOCALE / "django.po"
MO = LOCALE / "django.mo"
ADMIN_KEY = "cpamp_" + "Q7w8E9r0" * 4
MANAGEMENT_KEY = "mgmt-Zh-Secret-2468"
API_KEY = "sk-zh-client-1357"
# Product names and the names of CPAMP's own form fields stay in English inside translations.
KEPT_IN_ENGLISH = (
    "CLI Proxy API",
    "CPA Manager Plus",
    "Manager Server",
    "CPA Panel",
    "Full Docker",
    "Admin Key",
)
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sdr]|%[sd]|\{[a-z_]*\}")


def parse_po(text: str) -> list[dict]:
    """Return the entries of a .po file: msgid, msgid_plural, msgstr list, flags, references."""
    entries: list[dict] = []
    entry: dict = {}
    current: tuple[str, int | None] | None = None

    def finish() -> None:
        nonlocal entry, current
        if "msgid" in entry:
            entries.append(entry)
        entry, current = {}, None

    def unquote(value: str) -> str:
        return value[1:-1].encode("raw_unicode_escape").decode("unicode_escape")

    for line in text.splitlines():
        line = line.strip()
        if not line:
            finish()
        elif line.startswith("#,"):
            entry.setdefault("flags", set()).update(f.strip() for f in line[2:].split(","))
        elif line.startswith("#:"):
            entry.setdefault("refs", []).extend(line[2:].split())
        elif line.startswith("#"):
            continue
        elif line.startswith("msgctxt "):
            if "msgstr" in entry:
                finish()
            entry["msgctxt"] = unquote(line[8:])
            current = ("msgctxt", None)
        elif line.startswith("msgid_plural "):
            entry["msgid_plural"] = unquote(line[13:])
            current = ("msgid_plural", None)
        elif line.startswith("msgid "):
            if "msgstr" in entry:
                finish()
            entry["msgid"] = unquote(line[6:])
            current = ("msgid", None)
        elif line.startswith("msgstr["):
            index = int(line[7 : line.index("]")])
            entry.setdefault("msgstr", {})[index] = unquote(line[line.index("]") + 2 :])
            current = ("msgstr", index)
        elif line.startswith("msgstr "):
            entry["msgstr"] = {0: unquote(line[7:])}
            current = ("msgstr", 0)
        elif line.startswith('"') and current is not None:
            name, index = current
            if name == "msgstr":
                entry["msgstr"][index] += unquote(line)
            else:
                entry[name] += unquote(line)
    finish()
    return [e for e in entries if e["msgid"]]


@pytest.fixture(scope="module")
def catalogue() -> list[dict]:
    return parse_po(PO.read_text(encoding="utf-8"))


def test_the_catalogue_has_no_untranslated_entry(catalogue):
    untranslated = [e["msgid"] for e in catalogue if not all(e["msgstr"].values())]
    assert untranslated == []
    assert len(catalogue) > 100


def test_the_catalogue_has_no_fuzzy_entry(catalogue):
    assert [e["msgid"] for e in catalogue if "fuzzy" in e.get("flags", ())] == []


def test_translations_keep_every_placeholder(catalogue):
    broken = []
    for entry in catalogue:
        # Chinese has one plural form, used for every count: it follows msgid_plural.
        source = entry.get("msgid_plural", entry["msgid"])
        for text in entry["msgstr"].values():
            if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(source)):
                broken.append(entry["msgid"])
    assert broken == []


def looked_up(compiled: gettext.GNUTranslations, entry: dict) -> str:
    """Return the compiled translation of a .po entry, in its context if it has one."""
    if "msgctxt" in entry:
        return compiled.pgettext(entry["msgctxt"], entry["msgid"])
    return compiled.gettext(entry["msgid"])


def test_the_compiled_catalogue_matches_the_po_file(catalogue):
    with open(MO, "rb") as fh:
        compiled = gettext.GNUTranslations(fh)
    stale = [
        e["msgid"]
        for e in catalogue
        if "msgid_plural" not in e and looked_up(compiled, e) != e["msgstr"][0]
    ]
    assert stale == []


class _VisibleText(HTMLParser):
    """Collect the text a reader sees, without code blocks, scripts and attribute values."""

    SKIP = {"script", "style", "pre", "code", "svg", "textarea"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skipping += 1
        # Button and input labels are visible text too.
        if tag == "input" and dict(attrs).get("type") in ("submit", "button"):
            self.parts.append(dict(attrs).get("value") or "")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def english_left(text: str, catalogue: list[dict]) -> list[str]:
    """Return the translated msgids that still appear in English in text."""
    for name in KEPT_IN_ENGLISH:
        text = text.replace(name, " ")
    left = []
    for entry in catalogue:
        msgid, msgstr = entry["msgid"], entry["msgstr"][0]
        if msgid == msgstr or not re.search(r"[A-Za-z]{3}", msgid):
            continue
        fragments = [f.strip(" .:,;") for f in PLACEHOLDER.split(msgid)]
        for fragment in fragments:
            fragment = re.sub(r"\s+", " ", fragment)
            # Short fragments ("Keys", "Mode") are matched as whole words only, long ones as is.
            if len(fragment) < 4 or (PLACEHOLDER.search(msgid) and len(fragment) < 16):
                continue
            if fragment in msgstr:
                continue  # a product name kept in English inside the translation
            if " " not in fragment and fragment[0].islower():
                # Field names ("name", "keys") show as labels, capitalised by the admin; the
                # lower-case word also occurs in Django's own untranslated "Model name".
                fragment = fragment[0].upper() + fragment[1:]
            # Not inside identifiers, paths or file names (api-keys, cmp_admin_, config.yaml).
            pattern = r"(?<![\w\-./])" + re.escape(fragment) + r"(?![\w\-/]|\.\w)"
            if re.search(pattern, text):
                left.append(fragment)
    return sorted(set(left))


@pytest.fixture
def chinese(client):
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    return client


@pytest.fixture
def populated(make_user, team, deployment):
    """An owner and a deployment with keys, a failed run and an export."""
    owner = make_user("olga", team=team, role="owner")
    for role, secret in (
        ("cpamp_admin", ADMIN_KEY),
        ("cpa_management", MANAGEMENT_KEY),
        ("cpa_api", API_KEY),
    ):
        key = Key(deployment=deployment, role=role)
        key.set_secret(secret)
        key.save()
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, status="failed", trigger="manual")
    CheckResult.objects.create(
        run=run,
        check_id="api_models",
        method="GET",
        url="http://api.example.com/v1/models",
        expected="200",
        status_code=401,
        passed=False,
        diagnosis="",
    )
    ConfigExport.objects.create(
        deployment=deployment, content_hash="c" * 64, text="x\n", source="admin"
    )
    return owner, deployment, run


def custom_pages(deployment: Deployment, run: VerificationRun) -> list[str]:
    """Return the console's own pages (the admin's stock pages use Django's catalogue)."""
    names = [
        ("admin:index", []),
        ("admin:routes_deployment_wizard", []),
        ("admin:routes_deployment_wizard_keys", [deployment.pk]),
        ("admin:routes_deployment_wizard_finish", [deployment.pk]),
        ("admin:routes_deployment_config", [deployment.pk]),
        ("admin:routes_deployment_routes", [deployment.pk]),
        ("admin:routes_deployment_verify", [deployment.pk]),
        ("admin:routes_deployment_first_setup", [deployment.pk]),
        ("admin:routes_deployment_change", [deployment.pk]),
        ("admin:routes_deployment_changelist", []),
        ("admin:routes_verificationrun_changelist", []),
        ("admin:routes_verificationrun_change", [run.pk]),
    ]
    urls = []
    for name, args in names:
        try:
            urls.append(reverse(name, args=args))
        except NoReverseMatch:
            pytest.fail(f"{name} is not installed; every custom page must render in Chinese")
    return urls


def test_every_custom_page_renders_in_chinese_without_english_ui_strings(
    chinese, catalogue, populated
):
    owner, deployment, run = populated
    chinese.force_login(owner)
    problems = {}
    for url in custom_pages(deployment, run):
        response = chinese.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        assert '<html lang="zh-hans"' in page, url
        left = english_left(visible_text(page), catalogue)
        if left:
            problems[url] = left
    assert problems == {}


def test_the_first_setup_reveal_page_is_translated(chinese, catalogue, populated):
    owner, deployment, _ = populated
    chinese.force_login(owner)
    response = chinese.post(reverse("admin:routes_deployment_first_setup", args=[deployment.pk]))
    assert response.status_code == 200
    assert english_left(visible_text(response.content.decode()), catalogue) == []


def test_form_errors_are_translated(chinese, catalogue, populated):
    owner, deployment, _ = populated
    chinese.force_login(owner)
    keys = chinese.post(
        reverse("admin:routes_deployment_wizard_keys", args=[deployment.pk]),
        {"cpa_management": "cpamp_" + "x" * 32, "cpa_api": "your-api-key-1"},
    ).content.decode()
    assert "不要混用" in keys or "混用" in keys
    start = chinese.post(
        reverse("admin:routes_deployment_wizard"),
        {
            "team": deployment.team_id,
            "name": "x",
            "slug": "bad slug",
            "mode": "manager_server",
            "topology": "custom",
            "server_name": "bad name",
            "http_port": "80",
            "https_port": "443",
            "tls": "on",
        },
    ).content.decode()
    for page in (keys, start):
        assert english_left(visible_text(page), catalogue) == []


def test_accept_language_alone_selects_chinese(client, populated):
    owner, _, _ = populated
    client.force_login(owner)
    page = client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content
    assert '<html lang="zh-hans"' in page.decode()


def test_the_language_switcher_posts_to_set_language(client, populated):
    owner, _, _ = populated
    client.force_login(owner)
    page = client.get(reverse("admin:index")).content.decode()
    assert f'action="{reverse("set_language")}"' in page
    assert 'value="zh-hans"' in page
    assert "简体中文" in page
    response = client.post(
        reverse("set_language"), {"language": "zh-hans", "next": reverse("admin:index")}
    )
    assert response.status_code == 302
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"
    assert '<html lang="zh-hans"' in client.get(reverse("admin:index")).content.decode()


def test_the_login_page_offers_the_language_switcher(client, db):
    page = client.get(reverse("admin:login")).content.decode()
    assert f'action="{reverse("set_language")}"' in page


def test_the_english_pages_stay_english(client, populated):
    owner, deployment, _ = populated
    client.force_login(owner)
    page = client.get(reverse("admin:routes_deployment_wizard_finish", args=[deployment.pk]))
    assert '<html lang="en"' in page.content.decode()
    assert "CPAMP first setup" in page.content.decode()


def test_the_parser_finds_an_untranslated_entry():
    entries = parse_po(
        'msgid ""\nmsgstr "Content-Type: text/plain\\n"\n\n'
        '#, fuzzy\nmsgid "Keys"\nmsgstr "密钥"\n\n'
        'msgid "Mode"\nmsgstr ""\n\n'
        'msgid "one"\nmsgid_plural "many"\nmsgstr[0] "x"\n'
    )
    assert [e["msgid"] for e in entries] == ["Keys", "Mode", "one"]
    assert "fuzzy" in entries[0]["flags"]
    assert entries[1]["msgstr"] == {0: ""}
    assert english_left("the Keys here", entries) == ["Keys"]
