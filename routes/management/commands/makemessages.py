"""``makemessages`` that also extracts ``N_("...")``: route notes are marked with gettext_noop
under that short name (routes/nginx/boundaries.py) and translated where they are shown."""

from django.core.management.commands import makemessages


class Command(makemessages.Command):
    xgettext_options = [*makemessages.Command.xgettext_options, "--keyword=N_"]
