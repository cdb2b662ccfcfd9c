/* Console conveniences. Loaded as a static file (no inline script: the CSP allows 'self' only).
 *
 * - [data-copy-target="#id"] buttons copy the text of the target element to the clipboard.
 * - select[data-autosubmit] submits its form on change (the language switcher).
 * - window.consolePoll(box, draw, ms) polls box's data-progress-url until the JSON says
 *   finished, calling draw(box, data) each time (the verification and apply pages).
 * - The "new deployment" wizard and the plain add form: a topology preset fills the upstream
 *   fields. In the wizard the slug follows the name (the plain form has Django's
 *   prepopulated_fields) and the certificate fields show only when HTTPS is on. Without
 *   JavaScript every field stays visible and the server applies the preset and derives a blank
 *   slug, so the pages work either way.
 */
(function () {
  "use strict";

  document.documentElement.classList.add("console-js");

  function copyText(text) {
    // navigator.clipboard exists only in secure contexts (HTTPS or localhost); a console served
    // over plain HTTP on a LAN name falls back to a hidden textarea and execCommand.
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (err) {
        ok = false;
      }
      document.body.removeChild(area);
      if (ok) {
        resolve();
      } else {
        reject(new Error("copy refused"));
      }
    });
  }

  function flash(button, label, className) {
    var original = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", original);
    button.textContent = label;
    button.classList.add(className);
    window.setTimeout(function () {
      button.textContent = original;
      button.classList.remove(className);
    }, 2000);
  }

  function setUpCopyButtons(root) {
    root.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function (event) {
        event.preventDefault();
        var target = document.querySelector(button.getAttribute("data-copy-target"));
        if (!target) {
          return;
        }
        var text = "value" in target && target.tagName !== "PRE" ? target.value : target.textContent;
        copyText(text).then(
          function () {
            flash(button, button.getAttribute("data-copied-label") || "Copied", "console-copied");
          },
          function () {
            flash(button, button.getAttribute("data-failed-label") || "Copy failed", "console-copy-failed");
          }
        );
      });
    });
  }

  function setUpAutosubmit(root) {
    root.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () {
        select.form.submit();
      });
    });
  }

  function setUpPresets(root) {
    // On the wizard's form itself; on the plain add form, an element inside the admin's form.
    var holder = root.querySelector("[data-wizard-presets]");
    var form = holder && holder.closest("form");
    if (!form) {
      return;
    }
    var presets = JSON.parse(holder.getAttribute("data-wizard-presets"));
    var fields = Object.keys(presets.docker || {});
    var radios = form.querySelectorAll("input[name='topology']");
    var applying = false;

    function apply(name) {
      var values = presets[name];
      if (!values) {
        return;
      }
      applying = true;
      fields.forEach(function (field) {
        var input = form.querySelector("[name='" + field + "']");
        if (input) {
          input.value = values[field];
        }
      });
      applying = false;
    }

    radios.forEach(function (radio) {
      radio.addEventListener("change", function () {
        if (radio.checked) {
          apply(radio.value);
        }
      });
    });
    fields.forEach(function (field) {
      var input = form.querySelector("[name='" + field + "']");
      if (!input) {
        return;
      }
      input.addEventListener("input", function () {
        if (applying) {
          return;
        }
        var custom = form.querySelector("input[name='topology'][value='custom']");
        if (custom) {
          custom.checked = true;
        }
      });
    });
  }

  // As django.utils.text.slugify: ASCII letters, digits, _ and -, lower case, spaces to -.
  function slugify(text) {
    return text.normalize("NFKD").replace(/[^\x00-\x7f]/g, "").toLowerCase()
      .replace(/[^\w\s-]/g, "").replace(/[-\s]+/g, "-").replace(/^[-_]+|[-_]+$/g, "");
  }

  function setUpSlugs(root) {
    root.querySelectorAll("input[data-slug-from]").forEach(function (slug) {
      var source = root.querySelector(slug.getAttribute("data-slug-from"));
      if (!source) {
        return;
      }
      var limit = parseInt(slug.getAttribute("maxlength") || "0", 10);
      // Follows the name until the user writes a slug of their own (as the plain form does).
      var own = slug.value !== "" && slug.value !== slugify(source.value);
      slug.addEventListener("input", function () {
        own = slug.value !== "";
      });
      source.addEventListener("input", function () {
        if (!own) {
          var value = slugify(source.value);
          slug.value = limit > 0 ? value.slice(0, limit).replace(/[-_]+$/, "") : value;
        }
      });
    });
  }

  function setUpTlsToggle(root) {
    var tls = root.querySelector("input[name='tls'][data-toggles]");
    if (!tls) {
      return;
    }
    var target = root.querySelector(tls.getAttribute("data-toggles"));
    function sync() {
      if (target) {
        target.hidden = !tls.checked;
      }
    }
    tls.addEventListener("change", sync);
    sync();
  }

  function poll(box, draw, ms) {
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
          window.setTimeout(function () { poll(box, draw, ms); }, ms);
        }
      })
      .catch(function () {
        // A network hiccup: try again a little later rather than giving up on the page.
        window.setTimeout(function () { poll(box, draw, ms); }, ms * 3);
      });
  }

  window.consolePoll = poll;

  function start() {
    setUpCopyButtons(document);
    setUpAutosubmit(document);
    setUpPresets(document);
    setUpSlugs(document);
    setUpTlsToggle(document);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
