"""Django's own makemessages extracts the route notes; the console needs no command of its own."""

import shutil
from pathlib import Path

from django.conf import settings
from django.core.management import call_command, get_commands
from django.test import override_settings

from routes.nginx import boundaries
from tests.test_i18n import parse_po

NOTES = sorted(
    {route.note for route in (*boundaries.BUILTIN_ROUTES, boundaries.ROOT_REDIRECT)}
    | {boundaries.FALLBACK.note}
)


def test_makemessages_is_djangos_own_command():
    assert get_commands()["makemessages"] == "django.core"


def test_djangos_makemessages_extracts_every_route_note(tmp_path, monkeypatch):
    # Only boundaries.py is copied, into a scratch tree, so the real catalogue is never written.
    source = tmp_path / "src" / "routes" / "nginx"
    source.mkdir(parents=True)
    shutil.copy(Path(settings.BASE_DIR) / "routes" / "nginx" / "boundaries.py", source)
    locale = tmp_path / "locale"
    locale.mkdir()
    monkeypatch.chdir(tmp_path / "src")
    with override_settings(LOCALE_PATHS=[locale]):
        call_command("makemessages", locale=["zh_Hans"], verbosity=0)
    po = locale / "zh_Hans" / "LC_MESSAGES" / "django.po"
    extracted = {entry["msgid"] for entry in parse_po(po.read_text(encoding="utf-8"))}
    assert NOTES
    assert [note for note in NOTES if note not in extracted] == []
