/* Live steps of an apply to nginx on the deployment's config page.
 *
 * Polls the apply's progress JSON (admin:routes_nginxapply_progress) once a second until the
 * apply has ended, and redraws its result badge, its reason and its list of steps (written,
 * tested, reloaded, confirmed, verified, or rolled back) in place. Text goes in through
 * textContent only, never as HTML; no inline script or style (the CSP allows neither).
 */
(function () {
  "use strict";

  var POLL_MS = 1000;

  function badge(box, ok) {
    var span = document.createElement("span");
    var kind = ok === null ? "skipped" : ok ? "ok" : "failed";
    span.className = "console-badge" + (ok === null ? "" : ok ? " passed" : " failed");
    span.textContent = box.getAttribute("data-label-" + kind) || kind;
    return span;
  }

  function drawSteps(box, list, steps) {
    while (list.firstChild) {
      list.removeChild(list.firstChild);
    }
    steps.forEach(function (step) {
      var item = document.createElement("li");
      item.setAttribute("data-step", step.step);
      item.setAttribute("data-phase", step.phase);
      item.appendChild(badge(box, step.ok));
      item.appendChild(document.createTextNode(" "));
      var label = document.createElement("strong");
      label.textContent = step.label;
      item.appendChild(label);
      if (step.detail) {
        item.appendChild(document.createTextNode(" "));
        var detail = document.createElement("span");
        detail.className = "console-muted console-apply-detail";
        detail.textContent = step.detail;
        item.appendChild(detail);
      }
      list.appendChild(item);
    });
  }

  function draw(box, data) {
    var result = box.querySelector("[data-apply-result]");
    if (result) {
      result.className = "console-badge " + (data.badge || "");
      result.textContent = data.result_label;
    }
    var reason = box.querySelector("[data-apply-reason]");
    if (reason) {
      reason.textContent = data.reason || "";
      reason.hidden = !data.reason;
    }
    // The admin's .errornote overrides [hidden]: the banner is added once, when it applies.
    if (data.result === "rollback_failed" && !box.querySelector("[data-apply-loud]")) {
      var loud = document.createElement("p");
      loud.className = "errornote";
      loud.setAttribute("data-apply-loud", "");
      loud.textContent = box.getAttribute("data-label-rollback-failed") || data.result_label;
      box.insertBefore(loud, box.querySelector("[data-apply-steps]"));
    }
    var list = box.querySelector("[data-apply-steps]");
    if (list) {
      drawSteps(box, list, data.steps);
    }
    if (data.finished) {
      var button = document.querySelector("[data-apply-button]");
      if (button) {
        button.disabled = false;
      }
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("apply-run");
    if (box && box.getAttribute("data-finished") !== "1") {
      window.consolePoll(box, draw, POLL_MS);
    }
  });
})();
