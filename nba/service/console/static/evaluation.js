// An evaluation's page: its progress while it runs (read again every second), then its
// estimates with their intervals, drawn by plotly.js.
"use strict";

(() => {
  const root = document.getElementById("evaluation");
  const id = root.dataset.id;

  async function poll() {
    const response = await fetch(`/console/api/evaluations/${id}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const state = await response.json();
    document.getElementById("evaluation-status").textContent = state.status;
    const bar = document.getElementById("progress-bar");
    if (bar) bar.style.width = `${Math.round(100 * state.progress)}%`;
    const stage = document.getElementById("progress-stage");
    if (stage) stage.textContent = state.stage;
    if (state.status === "waiting" || state.status === "running") setTimeout(poll, 1000);
    else window.location.reload();
  }

  function draw() {
    const data = document.getElementById("report-data");
    if (!data || !window.Plotly) return;
    const report = JSON.parse(data.textContent);
    const estimators = [...new Set(report.estimates.map((e) => e.estimator))];
    const traces = estimators.map((estimator) => {
      const rows = report.estimates.filter((e) => e.estimator === estimator && e.value !== null);
      return {
        // one row per policy and estimator: four intervals on one row would hide each other
        type: "scatter", mode: "markers", name: estimator, y: rows.map((e) => `${e.policy} · ${estimator}`), x: rows.map((e) => e.value),
        error_x: { type: "data", symmetric: false, array: rows.map((e) => (e.high ?? e.value) - e.value), arrayminus: rows.map((e) => e.value - (e.low ?? e.value)) },
        marker: { size: estimator === "dr" ? 12 : 8 },
      };
    });
    window.Plotly.newPlot("chart-estimates", traces, {
      height: 100 + 22 * report.estimates.length,
      margin: { t: 10, r: 10, b: 40, l: 200 }, xaxis: { title: { text: "mean reward per decision" } }, legend: { orientation: "h" },
    }, { displayModeBar: false, responsive: true });
    document.body.dataset.charts = "drawn";
  }

  if (root.dataset.status === "waiting" || root.dataset.status === "running") setTimeout(poll, 1000);
  if (document.readyState === "complete") draw(); else window.addEventListener("load", draw);
})();
