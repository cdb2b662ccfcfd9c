/* The live status board on the dashboard and on a deployment's verification page.
 *
 * Polls the board's JSON (admin:routes_deployment_board, or _board_detail for one deployment)
 * every few seconds while the page is visible, and redraws in place, without a reload: each
 * deployment's heartbeat bar, its uptime figures and latest latency, and the latency chart per
 * check (uPlot, vendored in static/vendor/uplot/). Text goes in through textContent only, never
 * as HTML; uPlot styles its elements through the CSSOM, which the strict CSP allows.
 */
(function () {
  "use strict";

  var POLL_MS = 5000;
  var RETRY_MS = 15000;
  var CHART_HEIGHT = 220;
  // Seconds (uPlot time scales are in seconds).
  var HALF_HOUR = 1800;
  // Distinct in light and dark themes; a check keeps its colour while the series stay the same.
  var COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#5254a3", "#637939", "#b5a133", "#ad494a"
  ];

  function cssVar(name, fallback) {
    var value = window.getComputedStyle(document.documentElement).getPropertyValue(name);
    return (value && value.trim()) || fallback;
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  function beatsKey(beats) {
    return beats.map(function (beat) { return beat.id + ":" + beat.status; }).join(",");
  }

  function drawBeats(bar, beats, limit) {
    var key = beatsKey(beats);
    if (bar.getAttribute("data-beats-key") === key) {
      return; // unchanged: keep the elements, so an open hover text stays put
    }
    bar.setAttribute("data-beats-key", key);
    clear(bar);
    for (var i = beats.length; i < limit; i += 1) {
      var slot = document.createElement("span");
      slot.className = "console-beat empty";
      slot.setAttribute("aria-hidden", "true");
      bar.appendChild(slot);
    }
    beats.forEach(function (beat) {
      var link = document.createElement("a");
      link.className = "console-beat " + beat.status;
      link.href = beat.url;
      link.title = beat.title;
      link.setAttribute("data-run", String(beat.id));
      var text = document.createElement("span");
      text.className = "visually-hidden";
      text.textContent = beat.title;
      link.appendChild(text);
      bar.appendChild(link);
    });
  }

  function drawRow(row, data, limit) {
    var bar = row.querySelector("[data-heartbeats]");
    if (bar) {
      drawBeats(bar, data.heartbeats, limit);
    }
    Object.keys(data.uptime_text).forEach(function (window_) {
      var cell = row.querySelector('[data-uptime="' + window_ + '"]');
      if (cell) {
        cell.textContent = data.uptime_text[window_];
      }
    });
    var latency = row.querySelector("[data-latency]");
    if (latency) {
      latency.textContent = data.latency_text;
    }
  }

  function Chart(box) {
    this.box = box;
    this.plotBox = box.querySelector("[data-chart-plot]");
    this.empty = box.querySelector("[data-chart-empty]");
    this.plot = null;
    this.shape = "";
  }

  Chart.prototype.options = function (chart) {
    var box = this.box;
    var unit = this.plotBox.getAttribute("data-unit") || "ms";
    var axisColour = cssVar("--body-quiet-color", "#666");
    var gridColour = cssVar("--hairline-color", "#e8e8e8");
    // The time series: its legend label in the page's language (uPlot's default is "Time").
    var series = [{ label: this.plotBox.getAttribute("data-time-label") || "Time" }];
    chart.series.forEach(function (line, index) {
      series.push({
        label: line.check,
        stroke: COLOURS[index % COLOURS.length],
        width: 2,
        points: { show: true, size: 5 },
        value: function (u, v) { return v === null || v === undefined ? "\u2014" : v + " " + unit; }
      });
    });
    var axis = {
      stroke: axisColour,
      grid: { stroke: gridColour, width: 1 },
      ticks: { stroke: gridColour, width: 1 }
    };
    return {
      width: Math.max(this.plotBox.clientWidth, 240),
      height: CHART_HEIGHT,
      scales: {
        x: { time: true },
        // From zero: a latency chart that starts at its minimum exaggerates small changes.
        y: { range: function (u, min, max) { return [0, Math.max(max || 0, 1) * 1.1]; } }
      },
      series: series,
      axes: [
        // Wider tick spacing than uPlot's default: its first label carries the whole date.
        Object.assign({}, axis, { space: 90 }),
        Object.assign({}, axis, {
          label: this.plotBox.getAttribute("data-axis-label") || unit,
          size: 60
        })
      ],
      fmtDate: localDates(),
      legend: { live: true },
      hooks: {
        // The seconds the time axis spans, for whoever reads the page's markup (the tests).
        setScale: [function (u, key) {
          if (key === "x" && u.scales.x.max !== null) {
            box.setAttribute("data-chart-span", String(Math.round(u.scales.x.max - u.scales.x.min)));
          }
        }]
      }
    };
  };

  Chart.prototype.draw = function (chart) {
    var hasRuns = chart && chart.x.length > 0;
    if (this.empty) {
      this.empty.hidden = Boolean(hasRuns);
    }
    this.box.setAttribute("data-chart-runs", hasRuns ? chart.runs.join(",") : "");
    if (!hasRuns || typeof window.uPlot !== "function") {
      this.destroy();
      return;
    }
    var data = [chart.x].concat(chart.series.map(function (line) { return line.latency_ms; }));
    var checks = chart.series.map(function (line) { return line.check; });
    var shape = chart.deployment + ":" + checks.join(",");
    if (this.plot && this.shape === shape) {
      this.plot.setData(data);
    } else {
      this.destroy();
      this.shape = shape;
      this.plot = new window.uPlot(this.options(chart), data, this.plotBox);
    }
    fitMoment(this.plot, chart.x);
  };

  // uPlot's date templates are American ("4/12/26", "3:00pm", "Apr"): a 24-hour clock, ISO
  // dates and month and day names in the page's language (Intl) read right in both languages.
  function localDates() {
    var lang = document.documentElement.lang || "en";
    function names(option, count, at) {
      var format = new Intl.DateTimeFormat(lang, option);
      var out = [];
      for (var i = 0; i < count; i++) {
        out.push(format.format(at(i)));
      }
      return out;
    }
    function month(i) { return new Date(2001, i, 1); }
    function day(i) { return new Date(2001, 0, 7 + i); } // 7 January 2001 was a Sunday
    var local = {
      MMMM: names({ month: "long" }, 12, month),
      MMM: names({ month: "short" }, 12, month),
      WWWW: names({ weekday: "long" }, 7, day),
      WWW: names({ weekday: "short" }, 7, day)
    };
    return function (template) {
      var iso = template
        .replace("{M}/{D}/{YY}", "{YYYY}-{MM}-{DD}")
        .replace("{M}/{D}", "{MM}-{DD}")
        .replace("{h}", "{HH}")
        .replace("{aa}", "");
      return window.uPlot.fmtDate(iso, local);
    };
  }

  // Runs within an hour show on an hour of axis around them: uPlot spreads a single instant
  // over a thousand days (its own range for min == max), and seconds apart fill the width.
  function fitMoment(plot, xs) {
    var first = xs[0];
    var last = xs[xs.length - 1];
    if (last - first < 2 * HALF_HOUR) {
      var middle = (first + last) / 2;
      plot.setScale("x", { min: middle - HALF_HOUR, max: middle + HALF_HOUR });
    }
  }

  Chart.prototype.destroy = function () {
    if (this.plot) {
      this.plot.destroy();
      this.plot = null;
    }
    this.shape = "";
  };

  Chart.prototype.resize = function () {
    if (this.plot) {
      this.plot.setSize({ width: Math.max(this.plotBox.clientWidth, 240), height: CHART_HEIGHT });
    }
  };

  function Board(box) {
    this.box = box;
    this.url = box.getAttribute("data-board-url");
    this.select = box.querySelector("[data-chart-select]");
    var chartBox = box.querySelector("[data-chart]");
    this.chart = chartBox ? new Chart(chartBox) : null;
    this.timer = null;
    this.busy = false;
    this.again = false;
    this.polls = 0;
  }

  Board.prototype.address = function () {
    if (!this.select || !this.select.value) {
      return this.url;
    }
    return this.url + "?chart=" + encodeURIComponent(this.select.value);
  };

  Board.prototype.draw = function (data) {
    var box = this.box;
    data.deployments.forEach(function (deployment) {
      var row = box.querySelector('[data-board-deployment="' + deployment.id + '"]');
      if (row) {
        drawRow(row, deployment, data.limit);
      }
    });
    if (this.chart) {
      this.chart.draw(data.chart);
    }
    if (this.select && data.chart && this.select.value !== String(data.chart.deployment)) {
      this.select.value = String(data.chart.deployment);
    }
    this.polls += 1;
    box.setAttribute("data-board-polls", String(this.polls));
  };

  Board.prototype.schedule = function (delay) {
    var self = this;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(function () { self.poll(); }, delay);
  };

  Board.prototype.poll = function () {
    var self = this;
    window.clearTimeout(this.timer);
    // A hidden page does not poll; visibilitychange starts again when it is shown.
    if (document.visibilityState !== "visible") {
      return;
    }
    if (this.busy) {
      this.again = true; // the chart choice changed mid-request: ask again when it is back
      return;
    }
    this.busy = true;
    fetch(this.address(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("board " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        self.busy = false;
        self.draw(data);
        self.schedule(self.again ? 0 : POLL_MS);
        self.again = false;
      })
      .catch(function () {
        self.busy = false;
        self.schedule(RETRY_MS);
      });
  };

  Board.prototype.start = function () {
    var self = this;
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") {
        self.poll();
      }
    });
    if (this.select) {
      this.select.addEventListener("change", function () { self.poll(); });
    }
    if (this.chart) {
      window.addEventListener("resize", function () { self.chart.resize(); });
    }
    // The page shows the numbers already; the first poll draws the chart.
    this.poll();
  };

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("status-board");
    if (box && box.getAttribute("data-board-url")) {
      new Board(box).start();
    }
  });
})();
