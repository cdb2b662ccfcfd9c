/* Live progress of a verification run on the deployment's verification page.
 *
 * Polls the run's progress JSON (admin:routes_verificationrun_progress) once a second until the
 * run has finished, and redraws the status badge, the counter, the progress bar, the causes and
 * the compact check rows in place: no page reload. Text goes in through textContent only, never
 * as HTML.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) {
      var span = document.createElement("span");
      span.className = className;
      span.textContent = text;
      td.appendChild(span);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
    return td;
  }

  function dash(value) {
    return value === null || value === undefined || value === "" ? "\u2014" : String(value);
  }

  function drawRows(box, tbody, rows) {
    while (tbody.firstChild) {
      tbody.removeChild(tbody.firstChild);
    }
    if (!rows.length) {
      var empty = document.createElement("tr");
      var td = cell(empty, box.getAttribute("data-label-empty") || "");
      td.colSpan = 6;
      td.className = "console-muted";
      tbody.appendChild(empty);
      return;
    }
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.className = "console-check-" + row.state;
      var kind = row.state;
      cell(tr, box.getAttribute("data-label-" + kind) || kind,
        "console-badge" + (kind === "skipped" ? "" : " " + kind));
      var name = cell(tr, row.label + " ");
      var id = document.createElement("span");
      id.className = "console-mono console-muted";
      id.textContent = row.id;
      name.appendChild(id);
      cell(tr, row.request).className = "console-mono";
      cell(tr, dash(row.status_code) + (row.answered_by ? " " + row.answered_by : ""));
      cell(tr, row.latency_ms === null ? "\u2014" : row.latency_ms + " ms");
      var note = cell(tr, "");
      note.className = "console-check-note";
      if (row.cause) {
        var link = document.createElement("a");
        link.href = "#cause-" + row.cause;
        link.textContent = (box.getAttribute("data-label-see-cause") || "{number}")
          .replace("{number}", row.cause);
        note.appendChild(link);
      } else if (row.note) {
        note.textContent = row.note;
        if (row.state === "passed") {
          note.classList.add("console-check-warning");
        }
      }
      tbody.appendChild(tr);
    });
  }

  function drawFix(item, fix) {
    if (fix.post) {
      // A POST button needs the page's CSRF token; without one (no form here) it is left out.
      var token = document.querySelector("input[name=csrfmiddlewaretoken]");
      if (!token) {
        return;
      }
      var form = document.createElement("form");
      form.method = "post";
      form.action = fix.url;
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "csrfmiddlewaretoken";
      hidden.value = token.value;
      var button = document.createElement("button");
      button.type = "submit";
      button.className = "console-button";
      button.textContent = fix.label;
      form.appendChild(hidden);
      form.appendChild(button);
      item.appendChild(form);
    } else if (fix.url) {
      var link = document.createElement("a");
      link.className = "console-button secondary";
      link.href = fix.url;
      link.textContent = fix.label;
      item.appendChild(link);
    } else if (fix.note) {
      var note = document.createElement("span");
      note.className = "console-muted";
      note.textContent = fix.note;
      item.appendChild(note);
    }
  }

  function drawCauses(box, section, causes) {
    var list = section.querySelector("[data-cause-items]");
    if (!list) {
      return;
    }
    while (list.firstChild) {
      list.removeChild(list.firstChild);
    }
    section.hidden = !causes.length;
    causes.forEach(function (cause) {
      var item = document.createElement("li");
      item.id = cause.anchor;
      var text = document.createElement("span");
      text.className = "console-cause-text";
      text.textContent = cause.diagnosis;
      item.appendChild(text);
      var meta = document.createElement("span");
      meta.className = "console-feed-meta";
      meta.textContent = (box.getAttribute("data-label-explains") || "") + " " +
        cause.checks.map(function (check) { return check.label; }).join(", ");
      item.appendChild(meta);
      if (cause.fixes.length) {
        var fixes = document.createElement("div");
        fixes.className = "console-cause-fixes";
        cause.fixes.forEach(function (fix) { drawFix(fixes, fix); });
        item.appendChild(fixes);
      }
      list.appendChild(item);
    });
  }

  function draw(box, data) {
    var badge = box.querySelector("[data-run-status]");
    if (badge) {
      badge.className = "console-badge " + data.status;
      badge.textContent = data.status_label;
    }
    var count = box.querySelector("[data-run-count]");
    var template = box.getAttribute("data-count-template");
    if (count && template) {
      count.textContent = template.replace("{done}", data.done).replace("{total}", data.total);
    }
    var bar = box.querySelector("[data-run-progress]");
    if (bar) {
      bar.max = Math.max(data.total, 1);
      bar.value = data.done;
    }
    // The run's entry in the recent-runs strip below says the same.
    var strip = document.querySelector('[data-strip-run="' + data.id + '"]');
    if (strip) {
      strip.className = "console-badge " + data.status;
      strip.textContent = "#" + data.id + " " + data.status_label;
    }
    var hint = box.querySelector("[data-run-hint]");
    if (hint && data.status !== "queued") {
      hint.parentNode.removeChild(hint);
    }
    var section = box.querySelector("[data-run-causes]");
    if (section && data.cause_views) {
      drawCauses(box, section, data.cause_views);
    }
    var tbody = box.querySelector("[data-check-rows]");
    if (tbody && data.rows) {
      drawRows(box, tbody, data.rows);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("verify-run");
    var bar = box && box.querySelector("[data-run-progress]");
    if (bar) {
      // Through the CSSOM: the CSP allows no inline style attribute.
      bar.style.width = "100%";
    }
    if (box && box.getAttribute("data-finished") !== "1") {
      window.consolePoll(box, draw, POLL_MS);
    }
  });
})();
