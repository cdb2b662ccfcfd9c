"""Create the first superuser with a generated password, shown once (like CPAMP's admin key)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser
from django.db import transaction
from django.utils.translation import gettext as _

from routes.management.base import ConsoleCommand


class Command(ConsoleCommand):
    help = "Create a superuser with a generated password if none exists; print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="Username to create (admin).")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            existing = User.objects.filter(is_superuser=True).order_by("pk").first()
            if existing is not None:
                self.stdout.write(
                    _(
                        "A superuser exists (%(name)s); its password is not shown again. Reset "
                        "it with `manage.py changepassword`."
                    )
                    % {"name": existing.get_username()}
                )
                return
            username = options["username"]
            if User.objects.filter(**{User.USERNAME_FIELD: username}).exists():
                raise CommandError(
                    _(
                        "%(name)s: a user with this name exists but is not a superuser; pass "
                        "--username with another name."
                    )
                    % {"name": username}
                )
            password = secrets.token_urlsafe(18)
            User.objects.create_superuser(username, "", password)
        self.stdout.write(
            _("Console superuser created. This password is shown only once; store it now:")
        )
        self.stdout.write(f"  username: {username}\n  password: {password}")
