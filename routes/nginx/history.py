"""The export history's retention: the newest CONSOLE_EXPORTS_KEPT exports of each deployment.

An export stores a ConfigExport only for a site file that changed (export.record_exports), so
the history holds a deployment's changes; ``manage.py prune_exports`` drops the oldest, as
``prune_runs`` does for verification runs. The newest export of each deployment always stays:
the next export, the config page's diff and drift compare with it.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import F, Window
from django.db.models.functions import RowNumber

from routes.models import ConfigExport, Team


def prune_exports(*, keep: int | None = None, team: Team | None = None) -> int:
    """Delete exports beyond the newest keep (at least 1) of each deployment; return how many.

    One DELETE whatever the number of deployments: each export is ranked within its
    deployment, newest first, and those ranked past keep go.
    """
    keep = settings.CONSOLE_EXPORTS_KEPT if keep is None else keep
    if keep < 1:
        raise ValueError("keep at least one export per deployment: the next export compares")
    exports = ConfigExport.objects.all()
    if team is not None:
        exports = exports.filter(deployment__team=team)
    ranked = exports.annotate(
        newer=Window(
            RowNumber(),
            partition_by=[F("deployment_id")],
            order_by=[F("created_at").desc(), F("id").desc()],
        )
    )
    old = ranked.filter(newer__gt=keep).values("pk")
    _total, by_model = ConfigExport.objects.filter(pk__in=old).delete()
    return by_model.get(ConfigExport._meta.label, 0)
