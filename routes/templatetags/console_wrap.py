"""``{{ url|url_breaks }}`` and ``{{ domain|domain_breaks }}``: long addresses wrap where a reader
expects them to, on a phone and in a narrow column.

A URL may break after a slash and before ``?`` or ``&``; a domain only between its labels, each
label kept whole (a browser would otherwise break at a hyphen inside it). The text is escaped
first; only ``<wbr>`` and the label spans are added, and the whole address stays in the title
(a tooltip, and one piece of text for whoever searches the page). console.css styles both.
"""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# After each run of slashes ("http://" stays whole), and before a query or a parameter.
URL_BREAK = re.compile(r"(?<=/)(?!/)|(?=[?&])")


@register.filter
def url_breaks(value: object) -> SafeString:
    """Return value escaped, with a break opportunity after each slash and before ? and &."""
    parts = [part for part in URL_BREAK.split(str(value)) if part]
    inner = mark_safe("<wbr>".join(escape(part) for part in parts))
    return format_html('<span class="console-url" title="{}">{}</span>', value, inner)


@register.filter
def domain_breaks(value: object) -> SafeString:
    """Return a domain escaped, each label whole and a break opportunity after each dot."""
    labels = [label for label in re.split(r"(?<=\.)", str(value)) if label]
    inner = format_html_join(
        mark_safe("<wbr>"), '<span class="console-label">{}</span>', ((lb,) for lb in labels)
    )
    return format_html('<span class="console-domain" title="{}">{}</span>', value, inner)
