/* Live progress of a verification run on the deployment's verification page.
 *
 * Polls the run's progress JSON (admin:routes_verificationrun_progress) once a second until the
 * run has finished, and redraws the status badge, the counter, the progress bar and the check
 * table in place: no page reload. Text goes in through textContent only, never as HTML.
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

  function drawRows(box, tbody, results) {
    while (tbody.firstChild) {
      tbody.removeChild(tbody.firstChild);
    }
    if (!results.length) {
      var empty = document.createElement("tr");
      var td = cell(empty, box.getAttribute("data-label-empty") || "");
      td.colSpan = 7;
      td.className = "console-muted";
      tbody.appendChild(empty);
      return;
    }
    results.forEach(function (result) {
      var row = document.createElement("tr");
      cell(row, result.id);
      cell(row, result.method + " " + result.url, "console-mono");
      cell(row, dash(result.status_code));
      cell(row, dash(result.expected_upstream));
      cell(row, dash(result.observed_upstream));
      cell(row, result.latency_ms === null ? "\u2014" : result.latency_ms + " ms");
      var kind = result.skipped ? "skipped" : result.passed ? "passed" : "failed";
      var verdict = cell(row, box.getAttribute("data-label-" + kind) || kind,
        "console-badge" + (kind === "skipped" ? "" : " " + kind));
      if (result.diagnosis) {
        var diagnosis = document.createElement("span");
        diagnosis.className = "console-diagnosis";
        diagnosis.textContent = result.diagnosis;
        verdict.appendChild(diagnosis);
      }
      tbody.appendChild(row);
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
    var tbody = box.querySelector("[data-check-rows]");
    if (tbody) {
      drawRows(box, tbody, data.results);
    }
  }

  function poll(box) {
    var url = box.getAttribute("data-progress-url");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("progress " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        draw(box, data);
        box.setAttribute("data-finished", data.finished ? "1" : "0");
        if (!data.finished) {
          window.setTimeout(function () { poll(box); }, POLL_MS);
        }
      })
      .catch(function () {
        // A network hiccup: try again a little later rather than giving up on the run.
        window.setTimeout(function () { poll(box); }, POLL_MS * 3);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("verify-run");
    var bar = box && box.querySelector("[data-run-progress]");
    if (bar) {
      // Through the CSSOM: the CSP allows no inline style attribute.
      bar.style.width = "100%";
    }
    if (box && box.getAttribute("data-finished") !== "1") {
      poll(box);
    }
  });
})();
