"""Shared fixtures: users in roles, teams and deployments."""

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import translation

from routes.models import Deployment, Membership, Team


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    """Use unhashed static URLs: the whitenoise manifest exists only after collectstatic."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Most tests create several users; PBKDF2 would dominate the run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _default_language():
    # LocaleMiddleware activates a request's language in the test's own thread and never
    # deactivates it, so a page viewed in Chinese would leak into the next test.
    yield
    translation.activate(settings.LANGUAGE_CODE)


@pytest.fixture
def team(db):
    return Team.objects.create(name="Ops", slug="ops")


@pytest.fixture
def other_team(db):
    return Team.objects.create(name="Other", slug="other")


@pytest.fixture
def make_user(db):
    def make(username, *, team=None, role="viewer", superuser=False, password="pw-Str0ng-enough!"):
        User = get_user_model()
        if superuser:
            user = User.objects.create_superuser(username, f"{username}@example.com", password)
        else:
            user = User.objects.create_user(username, f"{username}@example.com", password)
            user.is_staff = True
            user.save()
        if team is not None:
            Membership.objects.create(user=user, team=team, role=role)
        return user

    return make


@pytest.fixture
def viewer(make_user, team):
    return make_user("vic", team=team, role="viewer")


@pytest.fixture
def operator(make_user, team):
    return make_user("oli", team=team, role="operator")


@pytest.fixture
def owner(make_user, team):
    return make_user("ona", team=team, role="owner")


@pytest.fixture
def outsider(make_user, other_team):
    """An owner of other_team only."""
    return make_user("bob", team=other_team, role="owner")


@pytest.fixture
def superuser(make_user):
    return make_user("root", superuser=True)


@pytest.fixture
def users(viewer, operator, owner, outsider, superuser):
    """One user per role in team, an owner of other_team and a superuser."""
    return {
        "viewer": viewer,
        "operator": operator,
        "owner": owner,
        "outsider": outsider,
        "superuser": superuser,
    }


@pytest.fixture
def deployment(team):
    return Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="api.example.com"
    )


@pytest.fixture
def theirs(other_team):
    """A deployment of other_team."""
    return Deployment.objects.create(
        slug="theirs", name="Theirs", team=other_team, server_name="theirs.example.com"
    )


def pytest_collection_modifyitems(config, items):
    # Playwright's sync API leaves an event loop running in the session's thread, after which
    # Django refuses ORM calls ("async context"). Browser tests therefore run last; `make test`
    # also runs them in a pytest process of their own.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
