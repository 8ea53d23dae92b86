// Segment sizes over time and the scores' progressive AUC, drawn by plotly.js.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("segments-data").textContent);
  const options = { displayModeBar: false, responsive: true };
  const draw = () => {
    if (!window.Plotly) return;
    if (document.getElementById("chart-segments")) {
      window.Plotly.newPlot("chart-segments", data.segments.map((s) => ({
        type: "scatter", mode: "lines", line: { shape: "hv" }, name: s.name, x: s.times, y: s.sizes,
      })), { height: 320, margin: { t: 10, r: 10, b: 80, l: 60 }, yaxis: { title: { text: "customers" }, rangemode: "tozero" }, legend: { orientation: "h", y: -0.3 } }, options);
    }
    if (document.getElementById("chart-scores")) {
      window.Plotly.newPlot("chart-scores", [
        { type: "bar", orientation: "h", name: "AUC", y: data.scores.map((s) => s.name), x: data.scores.map((s) => s.auc), marker: { color: "#2f5fb3" } },
        { type: "scatter", mode: "markers", name: "minimum", y: data.scores.map((s) => s.name), x: data.scores.map((s) => s.min_auc), marker: { symbol: "line-ns-open", size: 18, color: "#a86400" } },
      ], { height: 100 + 40 * data.scores.length, margin: { t: 10, r: 10, b: 40, l: 140 }, xaxis: { range: [0.4, 1], title: { text: "progressive ROC AUC" } }, legend: { orientation: "h" } }, options);
    }
    document.body.dataset.charts = "drawn";
  };
  if (document.readyState === "complete") draw(); else window.addEventListener("load", draw);
})();
