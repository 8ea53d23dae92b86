// The overview's charts, drawn by plotly.js (served from the plotly wheel) from the figures the
// page was rendered with (the same GetOverview answer as the tables).
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("overview-data").textContent);
  const layout = (extra) => Object.assign({ height: 320, margin: { t: 10, r: 10, b: 60, l: 50 }, legend: { orientation: "h", y: -0.25 } }, extra);
  const options = { displayModeBar: false, responsive: true };
  const number = (v) => Number(v || 0);

  function series() {
    const x = data.series.map((p) => p.start_time);
    // one scale for all three: acceptances sit below impressions, which sit at or below decisions
    const trace = (name, key) => ({ type: "scatter", mode: "lines", name, x, y: data.series.map((p) => number(p.figures[key])) });
    window.Plotly.newPlot("chart-series", [
      trace("decisions", "decisions"),
      trace("impressions", "impressions"),
      trace("acceptances", "acceptances"),
    ], layout({ yaxis: { title: { text: `per ${data.bucket}` }, rangemode: "tozero" }, margin: { t: 10, r: 10, b: 60, l: 60 } }), options);
  }

  function offers() {
    const top = data.by_offer.filter((s) => number(s.figures.impressions) > 0).slice(0, 15);
    window.Plotly.newPlot("chart-offers", [{
      type: "bar", orientation: "h", y: top.map((s) => s.key).reverse(),
      x: top.map((s) => 100 * number(s.figures.acceptance_rate)).reverse(),
      hovertext: top.map((s) => `${s.figures.acceptances} of ${s.figures.impressions} impressions`).reverse(), hoverinfo: "y+x+text",
      marker: { color: "#2f5fb3" },
    }], layout({ xaxis: { title: { text: "% of impressions accepted" }, rangemode: "tozero" }, margin: { t: 10, r: 10, b: 50, l: 150 } }), options);
  }

  function reasons() {
    const byReason = new Map();
    const offersSeen = new Map();
    for (const r of data.filter_reasons) {
      byReason.set(r.reason, (byReason.get(r.reason) || 0) + number(r.count));
      offersSeen.set(r.offer_id, (offersSeen.get(r.offer_id) || 0) + number(r.count));
    }
    const offerNames = [...offersSeen].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([o]) => o).reverse();
    const traces = [...byReason.keys()].map((reason) => ({
      type: "bar", orientation: "h", name: reason, y: offerNames,
      x: offerNames.map((o) => number((data.filter_reasons.find((r) => r.reason === reason && r.offer_id === o) || {}).count)),
    }));
    window.Plotly.newPlot("chart-reasons", traces, layout({ barmode: "stack", xaxis: { title: { text: "times screened out" } }, margin: { t: 10, r: 10, b: 80, l: 150 } }), options);
  }

  const draw = () => {
    if (!window.Plotly) return;
    series();
    offers();
    reasons();
    document.body.dataset.charts = "drawn";
  };
  if (document.readyState === "complete") draw(); else window.addEventListener("load", draw);
})();
