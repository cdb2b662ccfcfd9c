"""Issue 11, "a run started in English reads in Chinese for a Chinese user": a failed run's pages
rendered for a user of 简体中文 hold none of the English words of that run's diagnoses.

The English words are what diagnoses.render() gives with English active, for every cause, every
failed check and every warning of the run; each sentence of them is searched for in the page.
Until the catalogue (locale/) translates the issue-11 diagnoses, this test fails by design.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import translation
from django.utils.html import escape

from routes.verification import causes as cz
from routes.verification import diagnoses as dx
from tests.test_cause_scenarios import LIBRARY_TEXT, run_scenario
from tests.test_verification_page import CPA_DOWN, failing, make_run, passing

# Words that stay as they are in any language: names, paths, config keys and code.
_UNTRANSLATED = re.compile(r"`[^`]*`|https?://\S+|/[\w./~^-]*|[\w.-]+:\d+|\b[A-Z][\w-]*[A-Z]\w*\b")
_WORD = re.compile(r"\b[a-z]{3,}\b")


def english_sentences(texts: list[str]) -> set[str]:
    """Return the sentences of texts that hold English prose (three words or more)."""
    sentences = set()
    for text in texts:
        for sentence in re.split(r"(?<=[.:?])\s+", text):
            sentence = sentence.strip()
            if len(_WORD.findall(_UNTRANSLATED.sub(" ", sentence))) >= 3:
                sentences.add(sentence)
    return sentences


def english_words_of(run) -> set[str]:
    """Return the English sentences of every diagnosis and warning of run."""
    with translation.override("en"):
        texts = [c["diagnosis"] for c in cz.render_causes(run)]
        for result in run.results.all():
            if not result.passed:
                texts.append(dx.render_result_diagnosis(result))
            texts.append(dx.render_result_warning(result))
    return english_sentences([t for t in texts if t])


def pages_in_chinese(client, run) -> dict[str, str]:
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    deployment = run.job.deployment
    urls = {
        "verify": reverse("admin:routes_deployment_verify", args=[deployment.pk])
        + f"?run={run.pk}",
        "run": reverse("admin:routes_verificationrun_change", args=[run.pk]),
        "dashboard": reverse("admin:index"),
    }
    pages = {}
    for name, url in urls.items():
        response = client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        assert '<html lang="zh-hans"' in page, url
        pages[name] = page
    return pages


def english_left(pages: dict[str, str], sentences: set[str]) -> dict[str, list[str]]:
    return {
        name: sorted(s for s in sentences if s in page or escape(s) in page)
        for name, page in pages.items()
        if any(s in page or escape(s) in page for s in sentences)
    }


def stored_run(deployment):
    """A failed run with many causes and warnings, as the worker stores it (codes, no words)."""
    setup = {"status": 428, "panel": "https://api.example.com/management.html", "cpa_url": ""}
    rows: list[Any] = [
        passing("panel"),
        failing("cpa_health", "upstream_down", **CPA_DOWN),
        failing("usage_service_info", "setup_incomplete", **setup),
        failing("api_models", "unknown_api_key", key="ci ••••7f3a"),
        failing("plugin_resources", "plugin_rule_missing", path="/v0/resource/plugins/"),
        failing("cpa_fallback", "fallback_missing", status=404, path="/console-fallback-probe"),
        failing("management_config", "saved_management_key_refused", status=401),
        failing(
            "api_refuses_admin_key",
            "wrong_key_type",
            role="cpa_api",
            actual="cpamp_admin",
            path="/v1/models",
        ),
        failing("request_monitoring", "usage_publishing_off"),
        passing("models_compat", "not_found_is_fine"),
        passing("certificate", "certificate_not_verified", reason="self_signed"),
        failing("cpa_direct", "connection_refused", host="127.0.0.1:8317", target="cpa"),
    ]
    return make_run(deployment, rows)


def test_the_stored_run_has_english_words_to_look_for(deployment):
    run = stored_run(deployment)
    sentences = english_words_of(run)
    # One sentence at least from each of its causes and warnings: the search is not empty.
    assert len(run.causes) >= 8 and len(sentences) >= 15


def test_a_failed_runs_pages_hold_no_english_diagnosis_for_a_chinese_user(
    client, users, deployment
):
    run = stored_run(deployment)
    client.force_login(users["operator"])
    left = english_left(pages_in_chinese(client, run), english_words_of(run))
    assert left == {}


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "name",
    [
        "cpa_down",
        "setup_not_finished",
        "stale_saved_key_untraced",
        "cpamp_cannot_reach_cpa",
        "plugin_rule_to_cpa",
        "untrusted_certificate",
    ],
)
def test_a_real_failed_run_reads_in_chinese_without_library_text(
    client, make_user, deployment, name
):
    run = run_scenario(deployment, name)
    assert run.status == "failed" and run.causes
    client.force_login(make_user("olga", team=deployment.team, role="operator"))
    pages = pages_in_chinese(client, run)
    for page in (pages["verify"], pages["run"]):
        causes = page.split("data-run-causes", 1)[1].split("</section>", 1)[0]
        assert not LIBRARY_TEXT.search(causes), name
    assert english_left(pages, english_words_of(run)) == {}
