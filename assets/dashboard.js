// The live page of a running stampede: reads this process's /metrics once a
// second and draws the last two minutes with uPlot. After two readings with
// data, <body> gets data-state="live"; data-scrapes counts the readings.
(function () {
  "use strict";
  const key = new URLSearchParams(location.search).get("key");
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const flows = ["charge", "coupon", "order"];
  const colours = { charge: "#2ca02c", coupon: "#1f77b4", order: "#d62728", stats: "#9467bd" };
  const WINDOW = 120;
  const t0 = Date.now();
  const width = () => Math.min(560, (document.body.clientWidth - 60) / 2);

  // "name{a="x",b="y"} 12" lines into [{name, labels, value}].
  function parse(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
      if (!m) continue;
      const labels = {};
      if (m[3]) for (const l of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: parseFloat(m[4]) });
    }
    return out;
  }
  const sum = (samples, name, where) =>
    samples.filter((s) => s.name === name && Object.entries(where || {}).every(([k, v]) => s.labels[k] === v))
      .reduce((a, s) => a + s.value, 0);

  // p99 of what a histogram observed between two readings, in ms.
  function p99(prev, now, flow) {
    const buckets = (samples) => {
      const m = new Map();
      for (const s of samples) if (s.name === "stampede_request_latency_seconds_bucket" && s.labels.flow === flow) m.set(s.labels.le, s.value);
      return m;
    };
    const a = buckets(prev), b = buckets(now);
    const total = (b.get("+Inf") || 0) - (a.get("+Inf") || 0);
    if (total <= 0) return null;
    const les = Array.from(b.keys()).filter((le) => le !== "+Inf").map(Number).sort((x, y) => x - y);
    for (const le of les) {
      const key = Array.from(b.keys()).find((k) => Number(k) === le);
      if ((b.get(key) || 0) - (a.get(key) || 0) >= 0.99 * total) return le * 1000;
    }
    return les.length ? les[les.length - 1] * 1000 : null;
  }

  const history = { t: [], tput: flows.map(() => []), p99: flows.map(() => []), lag: flows.concat(["stats"]).map(() => []), stock: [] };
  const push = (arr, v) => { arr.push(v); if (arr.length > WINDOW) arr.shift(); };
  const grid = document.getElementById("charts");
  function make(title, yLabel, series) {
    const box = document.createElement("section");
    box.className = "chart";
    const h = document.createElement("h2");
    h.textContent = title;
    box.appendChild(h);
    grid.appendChild(box);
    const plot = new uPlot({
      width: width(), height: 240, legend: { live: false },
      scales: { x: { time: false } },
      series: [{}].concat(series),
      axes: [{ label: "seconds since this page opened" }, { label: yLabel, size: 70 }],
    }, [[]].concat(series.map(() => [])), box);
    return { box, plot };
  }
  const charts = {
    tput: make("Throughput per flow", "decided per second", flows.map((f) => ({ label: f, stroke: colours[f], width: 2 }))),
    p99: make("Publish → result p99 per flow", "latency (ms)", flows.map((f) => ({ label: f, stroke: colours[f], width: 2 }))),
    lag: make("Consumer lag per worker", "messages behind", flows.concat(["stats"]).map((f) => ({ label: f, stroke: colours[f], width: 2 }))),
    stock: make("Coupon stock left (all coupons)", "units", [{ label: "stock left", stroke: "#ff7f0e", width: 2 }]),
  };

  let prev = null, prevAt = 0, scrapes = 0, withData = 0;
  function table(samples) {
    const rows = new Map();
    for (const s of samples) {
      if (s.name !== "stampede_requests_processed_total") continue;
      const k = s.labels.flow + "\u0000" + s.labels.outcome;
      rows.set(k, (rows.get(k) || 0) + s.value);
    }
    const body = document.getElementById("outcomes");
    body.textContent = "";
    Array.from(rows.entries()).sort().forEach(([k, v]) => {
      const [flow, outcome] = k.split("\u0000");
      const tr = document.createElement("tr");
      for (const text of [flow, outcome, v.toLocaleString()]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    });
    const stocks = samples.filter((s) => s.name === "stampede_coupon_stock_left")
      .map((s) => "coupon " + s.labels.coupon_id + ": " + s.value.toLocaleString()).sort();
    document.getElementById("stock").textContent = stocks.length ? stocks.join(" · ") : "no coupon decided yet";
    document.getElementById("dlq").textContent = sum(samples, "stampede_dlq_messages_total").toLocaleString();
    document.getElementById("processed").textContent = sum(samples, "stampede_requests_processed_total").toLocaleString();
  }

  async function tick() {
    let samples;
    try {
      const r = await fetch("/metrics", { headers, cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      samples = parse(await r.text());
      document.getElementById("status").textContent = "live, updated " + new Date().toLocaleTimeString();
    } catch (e) {
      document.getElementById("status").textContent = "cannot read /metrics: " + e.message;
      return;
    }
    const now = Date.now();
    scrapes += 1;
    document.body.dataset.scrapes = String(scrapes);
    table(samples);
    if (prev) {
      const dt = (now - prevAt) / 1000;
      push(history.t, +((now - t0) / 1000).toFixed(1));
      flows.forEach((f, i) => {
        const d = sum(samples, "stampede_requests_processed_total", { flow: f }) - sum(prev, "stampede_requests_processed_total", { flow: f });
        push(history.tput[i], Math.max(0, d / dt));
        push(history.p99[i], p99(prev, samples, f));
      });
      flows.concat(["stats"]).forEach((w, i) => push(history.lag[i], sum(samples, "stampede_consumer_lag_messages", { worker: w })));
      const stock = samples.filter((s) => s.name === "stampede_coupon_stock_left");
      push(history.stock, stock.length ? stock.reduce((a, s) => a + s.value, 0) : null);
      charts.tput.plot.setData([history.t].concat(history.tput));
      charts.p99.plot.setData([history.t].concat(history.p99));
      charts.lag.plot.setData([history.t].concat(history.lag));
      charts.stock.plot.setData([history.t, history.stock]);
      for (const c of Object.values(charts)) {
        const data = c.plot.data;
        let n = 0;
        for (let s = 1; s < data.length; s++) n += data[s].filter((v) => v !== null && v !== undefined).length;
        c.box.dataset.points = String(n);
      }
      if (sum(samples, "stampede_requests_processed_total") > 0) withData += 1;
      if (withData >= 2) document.body.dataset.state = "live";
    }
    prev = samples;
    prevAt = now;
  }
  tick();
  setInterval(tick, 1000);
})();
