// The dashboard's little JavaScript: the live chart (polls /dashboard/live.json), the
// training curve, local times. uPlot is vendored (static/vendor); nothing else is loaded.
"use strict";

const kairos = (() => {
  const WINDOW = 150; // samples kept on the live chart (5 minutes at one per 2 s)
  const POLL_MS = 2000;

  function chartSize(element) {
    return { width: Math.max(320, element.clientWidth || 800), height: 220 };
  }

  function live(elementId) {
    const element = document.getElementById(elementId);
    if (!element) return;
    const data = [[], [], [], []]; // time, events/s, p50 ms, p99 ms
    const plot = new uPlot({
      ...chartSize(element),
      series: [
        {},
        { label: "events/s", stroke: "#2563eb", width: 2, scale: "rate" },
        { label: "p50 ms", stroke: "#16a34a", width: 1, scale: "ms" },
        { label: "p99 ms", stroke: "#dc2626", width: 1, scale: "ms" },
      ],
      axes: [{}, { scale: "rate", label: "events/s" }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }],
    }, data, element);
    let previous = null;

    async function sample() {
      try {
        const response = await fetch("/dashboard/live.json", { credentials: "same-origin" });
        if (!response.ok) return;
        const now = await response.json();
        if (previous !== null && now.t > previous.t) {
          const rate = (now.events - previous.events) / (now.t - previous.t);
          data[0].push(now.t);
          data[1].push(Math.max(0, rate));
          data[2].push(now.p50_ms);
          data[3].push(now.p99_ms);
          if (data[0].length > WINDOW) data.forEach((series) => series.shift());
          plot.setData(data);
          element.dataset.samples = String(data[0].length);
          text("event-rate", rate.toFixed(1));
        }
        text("count-events", now.events.toLocaleString("en"));
        text("count-users", now.users.toLocaleString("en"));
        text("count-items", now.items.toLocaleString("en"));
        text("latency-p99", now.p99_ms === null ? "–" : `${now.p99_ms.toFixed(1)} ms`);
        previous = now;
      } catch (error) {
        // The server restarting: the next sample tries again.
      }
    }

    sample();
    setInterval(sample, POLL_MS);
    window.addEventListener("resize", () => plot.setSize(chartSize(element)));
  }

  function trainingCurve(elementId, dataId) {
    const element = document.getElementById(elementId);
    const source = document.getElementById(dataId);
    if (!element || !source) return;
    const history = JSON.parse(source.textContent);
    const data = [history.map((h) => h.epoch), history.map((h) => h.loss), history.map((h) => h.valid_ndcg10)];
    new uPlot({
      ...chartSize(element),
      scales: { x: { time: false } },
      series: [
        { label: "epoch" },
        { label: "loss", stroke: "#2563eb", width: 2, scale: "loss" },
        { label: "valid NDCG@10", stroke: "#16a34a", width: 2, scale: "ndcg" },
      ],
      axes: [{}, { scale: "loss", label: "loss" }, { scale: "ndcg", side: 1, label: "NDCG@10", grid: { show: false } }],
    }, data, element);
  }

  function text(id, value) {
    const element = document.getElementById(id);
    if (element) element.textContent = value;
  }

  function localTimes() {
    for (const cell of document.querySelectorAll(".time[data-t]")) {
      const seconds = Number(cell.dataset.t);
      if (Number.isFinite(seconds)) cell.textContent = new Date(seconds * 1000).toLocaleString();
    }
  }

  document.addEventListener("DOMContentLoaded", localTimes);
  return { live, trainingCurve };
})();
