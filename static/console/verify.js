/* Live progress of a verification run on the deployment's verification page.
 *
 * Polls the run's progress JSON (admin:routes_verificationrun_progress) once a second until the
 * run has finished, and redraws the status badge, the counter, the progress bar, the causes and
 * the compact check rows in place: no page reload. The rows are check_table.html's, cell for
 * cell, so a reload shows the same. When the run ends, the page's "Run #N queued" message turns
 * into its outcome. Text goes in through textContent only, never as HTML.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;

  function dash(value) {
    return value === null || value === undefined || value === "" ? "\u2014" : String(value);
  }

  function span(className, text) {
    var element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  // The cells of check_table.html, in its order: class, and the column's label from the header.
  var COLUMNS = ["result", "name", "request", "status", "latency", "note"];

  function drawRows(box, tbody, rows) {
    var headers = tbody.parentNode.querySelectorAll("thead th");
    while (tbody.firstChild) {
      tbody.removeChild(tbody.firstChild);
    }
    if (!rows.length) {
      var empty = document.createElement("tr");
      empty.className = "console-check-none";
      var td = document.createElement("td");
      td.colSpan = 6;
      td.className = "console-muted";
      td.textContent = box.getAttribute("data-label-empty") || "";
      empty.appendChild(td);
      tbody.appendChild(empty);
      return;
    }
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.className = "console-check-" + row.state;
      tr.setAttribute("data-check", row.id);
      var cells = {};
      COLUMNS.forEach(function (name, index) {
        var td = document.createElement("td");
        td.className = "console-check-" + name + (name === "request" ? " console-mono" : "");
        td.setAttribute("data-label", headers[index] ? headers[index].textContent.trim() : "");
        cells[name] = td;
        tr.appendChild(td);
      });
      var kind = row.state;
      cells.result.appendChild(span("console-badge" + (kind === "skipped" ? "" : " " + kind),
        box.getAttribute("data-label-" + kind) || kind));
      cells.name.appendChild(document.createTextNode(row.label + " "));
      cells.name.appendChild(span("console-mono console-muted", row.id));
      cells.request.textContent = row.request;
      if (row.excerpt) {
        cells.status.setAttribute("title", row.excerpt);
      }
      cells.status.appendChild(document.createTextNode(dash(row.status_code)));
      if (row.answered_by) {
        cells.status.appendChild(document.createTextNode(" "));
        cells.status.appendChild(span("console-muted", row.answered_by));
      }
      cells.latency.textContent = row.latency_ms === null ? "\u2014" : row.latency_ms + " ms";
      if (row.cause) {
        var link = document.createElement("a");
        link.setAttribute("href", "#cause-" + row.cause);
        link.textContent = (box.getAttribute("data-label-see-cause") || "{number}")
          .replace("{number}", row.cause);
        cells.note.appendChild(link);
      } else if (row.note) {
        var note = document.createElement("span");
        if (row.state === "passed") {
          note.className = "console-check-warning";
        }
        note.textContent = row.note;
        cells.note.appendChild(note);
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
      form.setAttribute("method", "post");
      form.setAttribute("action", fix.url);
      var hidden = document.createElement("input");
      hidden.setAttribute("type", "hidden");
      hidden.setAttribute("name", "csrfmiddlewaretoken");
      hidden.setAttribute("value", token.value);
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
      link.setAttribute("href", fix.url);
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
      item.setAttribute("data-cause-code", cause.code);
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

  // The "Run #N queued" message of the page's run, if it has one (extra_tags name the run).
  function flashOf(box) {
    var run = box.getAttribute("data-run-id");
    return document.querySelector(".messagelist li.console-run-flash-" + run);
  }

  function drawFlash(box, data) {
    var flash = flashOf(box);
    if (!flash || !data.finished) {
      return;
    }
    var failed = (data.rows || []).filter(function (row) {
      return row.state === "failed";
    }).length;
    var outcome = data.status === "passed" || data.status === "error" ? data.status : "failed";
    var template = box.getAttribute("data-flash-" + outcome) || "";
    flash.textContent = template.replace("{id}", data.id).replace("{failed}", failed)
      .replace("{total}", data.total).replace("{error}", data.error || "");
    flash.className = "console-run-flash console-run-flash-" + data.id + " " +
      (outcome === "passed" ? "success" : "error");
  }

  function drawError(box, data) {
    var note = box.querySelector("[data-run-error]");
    if (!data.error) {
      if (note) {
        note.parentNode.removeChild(note);
      }
      return;
    }
    if (!note) {
      note = document.createElement("p");
      note.className = "errornote";
      note.setAttribute("data-run-error", "");
      var causes = box.querySelector("[data-run-causes]");
      box.insertBefore(note, causes);
    }
    note.textContent = data.error;
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
    drawError(box, data);
    drawFlash(box, data);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("verify-run");
    var bar = box && box.querySelector("[data-run-progress]");
    if (bar) {
      // Through the CSSOM: the CSP allows no inline style attribute.
      bar.style.width = "100%";
    }
    var flash = box && flashOf(box);
    if (flash) {
      // Announced when it changes from "queued" to the outcome.
      flash.setAttribute("role", "status");
    }
    // A run may have finished before this page loaded: one poll still turns its message.
    if (box && (box.getAttribute("data-finished") !== "1" || flash)) {
      window.consolePoll(box, draw, POLL_MS);
    }
  });
})();
