// Draws a stampede loadgen report (one run or several side by side) from the
// JSON embedded in the page, with uPlot. When every chart is drawn with data,
// <body> gets data-state="ready" and each chart data-points="N".
(function () {
  "use strict";
  const runs = JSON.parse(document.getElementById("runs").textContent);
  const palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
  const colour = (i) => palette[i % palette.length];
  const width = () => Math.min(1100, document.body.clientWidth - 40);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const main = document.getElementById("main");
  let charts = 0;

  function chart(title, opts, data) {
    const box = el("section", { class: "chart" });
    box.appendChild(el("h2", {}, title));
    main.appendChild(box);
    opts.width = width();
    opts.height = opts.height || 320;
    opts.legend = { live: false };
    new uPlot(opts, data, box);
    let points = 0;
    for (let s = 1; s < data.length; s++) points += data[s].filter((v) => v !== null && v !== undefined).length;
    box.dataset.points = String(points);
    charts += 1;
    return points;
  }

  // One shared x axis for several runs: the union of their x values, each
  // series null where its run has no point.
  function align(xsPerRun, ysPerRun) {
    const xs = Array.from(new Set(xsPerRun.flat())).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = ysPerRun.map((ys, r) => {
      const out = new Array(xs.length).fill(null);
      ys.forEach((y, i) => { out[index.get(xsPerRun[r][i])] = y; });
      return out;
    });
    return [xs, series];
  }

  const label = (r, i) => (runs.length > 1 ? r.label + ": " : "") + i;
  const yAxis = (title) => ({ label: title, size: 70 });
  const xTime = { label: "time since the first request (s)" };
  const timeScale = { x: { time: false } };

  // Header: verdict per run.
  const head = document.getElementById("verdicts");
  runs.forEach((r, i) => {
    const passed = r.report.answered === r.report.requests && r.report.checks.every((c) => c.passed);
    const line = el("p", { class: passed ? "pass" : "fail" });
    line.appendChild(el("span", { class: "swatch", style: "background:" + colour(i) }));
    line.appendChild(document.createTextNode(
      r.label + " — " + r.report.scenario + " via " + r.report.via + ", " + r.report.requests.toLocaleString() +
      " requests: " + Math.round(r.report.throughput_per_sec).toLocaleString() + " results/s, p99 " +
      r.report.latency.p99_ms.toFixed(1) + " ms — " + (passed ? "every invariant holds" : "INVARIANT BROKEN")));
    head.appendChild(line);
  });

  // 1. Throughput and offered load.
  {
    const xs = [], ys = [], series = [{}];
    runs.forEach((r, i) => {
      const t = r.report.timeline.map((b) => b.t_secs);
      xs.push(t, t);
      ys.push(r.report.timeline.map((b) => b.results_per_sec), r.report.timeline.map((b) => b.offered_per_sec));
      series.push({ label: label(r, "results/s"), stroke: colour(i), width: 2 });
      series.push({ label: label(r, "offered/s"), stroke: colour(i), dash: [6, 4], width: 1 });
    });
    const [x, aligned] = align(xs, ys);
    chart("Throughput: results and offered load per second", {
      scales: timeScale, series, axes: [xTime, yAxis("requests per second")],
    }, [x, ...aligned]);
  }

  // 2. Latency percentiles over time.
  {
    const xs = [], ys = [], series = [{}];
    const pcts = [["p50_ms", "p50", []], ["p90_ms", "p90", [2, 2]], ["p99_ms", "p99", [8, 3]], ["p999_ms", "p99.9", [1, 3]]];
    runs.forEach((r, i) => {
      const t = r.report.timeline.map((b) => b.t_secs);
      for (const [key, name, dash] of pcts) {
        xs.push(t);
        ys.push(r.report.timeline.map((b) => b[key]));
        series.push({ label: label(r, name), stroke: colour(i), dash, width: 1.5 });
      }
    });
    const [x, aligned] = align(xs, ys);
    chart("Latency over time: publish → result, per 250 ms", {
      scales: timeScale, series, axes: [xTime, yAxis("latency (ms)")],
    }, [x, ...aligned]);
  }

  // 2b. CPU per quarter second, for runs watched with --cpu: the machine's
  // busy cores and the time the watched processes' threads waited for a core.
  if (runs.some((r) => r.report.timeline.some((b) => b.cpu))) {
    const xs = [], ys = [], series = [{}];
    runs.forEach((r, i) => {
      const slices = r.report.timeline.filter((b) => b.cpu);
      if (slices.length === 0) return;
      const t = slices.map((b) => b.t_secs);
      xs.push(t, t);
      ys.push(slices.map((b) => b.cpu.machine_busy_cores),
        slices.map((b) => Object.values(b.cpu.waiting || {}).reduce((sum, v) => sum + v, 0)));
      series.push({ label: label(r, "machine busy (cores)"), stroke: colour(i), width: 2 });
      series.push({ label: label(r, "watched threads waiting for a core (s per s)"), stroke: colour(i), dash: [6, 4], width: 1.5 });
    });
    const [x, aligned] = align(xs, ys);
    chart("CPU per 250 ms: busy cores, and time spent waiting for one", {
      scales: timeScale, series, axes: [xTime, yAxis("cores / seconds per second")],
    }, [x, ...aligned]);
  }

  // 3. Latency distribution: latency at each percentile (x: 1/(1-q), log).
  {
    const xs = [], ys = [], series = [{}];
    runs.forEach((r, i) => {
      const d = r.report.distribution || [];
      xs.push(d.map((p) => +(-Math.log10(1 - p.percentile / 100)).toFixed(6)));
      ys.push(d.map((p) => p.ms));
      series.push({ label: label(r, "latency"), stroke: colour(i), width: 2 });
    });
    const [x, aligned] = align(xs, ys);
    const ticks = [0, 0.30103, 1, 2, 3, 4, 5];
    const names = ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    chart("Latency distribution: publish → result by percentile", {
      scales: { x: { time: false, range: [0, Math.max(3, ...x)] }, y: { distr: 3 } },
      series,
      axes: [
        { label: "percentile", splits: () => ticks, values: (u, s) => s.map((v) => names[ticks.indexOf(v)] || "") },
        yAxis("latency (ms, log scale)"),
      ],
    }, [x, ...aligned]);
  }

  // 4. Outcomes: grouped bars, one group per outcome, one bar per run.
  {
    const names = Array.from(new Set(runs.flatMap((r) => Object.keys(r.report.outcomes)))).sort();
    const n = runs.length;
    const xs = [];
    names.forEach((_, k) => runs.forEach((_, r) => xs.push(k - 0.4 + (r + 0.5) * 0.8 / n)));
    const series = [{}];
    const data = [xs];
    runs.forEach((r, i) => {
      data.push(xs.map((_, j) => (j % n === i ? r.report.outcomes[names[Math.floor(j / n)]] || 0 : null)));
      series.push({ label: label(r, "requests"), stroke: colour(i), fill: colour(i), paths: uPlot.paths.bars({ size: [0.9, 80] }), points: { show: false } });
    });
    chart("Outcomes", {
      scales: { x: { time: false, range: [-0.6, names.length - 0.4] }, y: { range: (u, lo, hi) => [0, hi * 1.1] } },
      series,
      axes: [
        { label: "outcome", splits: () => names.map((_, k) => k), values: () => names },
        yAxis("requests"),
      ],
    }, data);
  }

  // Tables: the verdict, fairness, settings and machine, one column per run.
  function table(title, rows) {
    const box = el("section", { class: "table" });
    box.appendChild(el("h2", {}, title));
    const t = el("table");
    const header = el("tr");
    header.appendChild(el("th", {}, ""));
    runs.forEach((r) => header.appendChild(el("th", {}, r.label)));
    t.appendChild(header);
    for (const [name, cells] of rows) {
      const tr = el("tr");
      tr.appendChild(el("th", {}, name));
      cells.forEach((c) => {
        const td = el("td", c && c.cls ? { class: c.cls } : {}, c && c.text !== undefined ? c.text : c === undefined || c === null ? "—" : String(c));
        tr.appendChild(td);
      });
      t.appendChild(tr);
    }
    box.appendChild(t);
    main.appendChild(box);
  }
  const checkNames = Array.from(new Set(runs.flatMap((r) => r.report.checks.map((c) => c.name))));
  table("Verdict", [["answered", runs.map((r) => ({ text: r.report.answered + " of " + r.report.requests, cls: r.report.answered === r.report.requests ? "pass" : "fail" }))]]
    .concat(checkNames.map((name) => [name, runs.map((r) => {
      const c = r.report.checks.find((x) => x.name === name);
      return c ? { text: (c.passed ? "PASS " : "FAIL ") + c.detail, cls: c.passed ? "pass" : "fail" } : null;
    })])));
  const latencyRow = (key, name) => [name + " (ms)", runs.map((r) => r.report.latency[key].toFixed(1))];
  table("Figures", [
    ["results/s (first request → last result)", runs.map((r) => Math.round(r.report.throughput_per_sec).toLocaleString())],
    ["duration (s)", runs.map((r) => r.report.duration_secs.toFixed(2))],
    latencyRow("p50_ms", "p50"), latencyRow("p90_ms", "p90"), latencyRow("p99_ms", "p99"),
    latencyRow("p999_ms", "p99.9"), latencyRow("max_ms", "max"),
    ["turned away (HTTP 503, retried)", runs.map((r) => r.report.turned_away)],
    ["FCFS: winners accepted after a loser", runs.map((r) => r.report.fairness ? r.report.fairness.inverted_winners + " of " + r.report.fairness.winners + " (" + (100 * r.report.fairness.inversion_rate).toFixed(2) + "%)" : null)],
    ["FCFS: largest inversion (ms)", runs.map((r) => r.report.fairness ? r.report.fairness.max_inversion_ms.toFixed(1) : null)],
  ]);
  const keys = (obj) => Array.from(new Set(runs.flatMap((r) => Object.keys(r.report[obj] || {}))));
  table("Settings", keys("settings").map((k) => [k, runs.map((r) => (r.report.settings || {})[k])]));
  table("Machine", keys("machine").map((k) => [k, runs.map((r) => (r.report.machine || {})[k])]));

  document.body.dataset.charts = String(charts);
  const empty = Array.from(document.querySelectorAll("section.chart")).filter((c) => c.dataset.points === "0").length;
  document.body.dataset.state = empty === 0 ? "ready" : "empty";
})();
