// The local Dodo dashboard: polls /_local/dashboard about once a second and redraws the page.
// No framework, no build step, nothing from the network but this server. Event data is text, never HTML.
"use strict";

(function () {
  const REFRESH_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const filters = $("filters");
  let timer = null;
  let inFlight = false;

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtPct = (r) => (r === null || r === undefined ? "–" : (100 * r).toFixed(1) + "%");
  const fmtMs = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(1));
  const fmtValue = (v) => {
    if (v === null || v === undefined) return "–";
    return Number.isInteger(v) ? fmtInt(v) : Number(v).toLocaleString("en-US", { maximumFractionDigits: 2 });
  };
  const statusClass = (s) => (typeof s === "number" ? (s >= 500 ? "s5" : s >= 400 ? "s4" : "") : "");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fillTable(table, rows, emptyText) {
    const body = table.tBodies[0];
    const columns = table.tHead.rows[0].cells.length;
    body.replaceChildren(
      ...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colSpan: columns }, emptyText))])
    );
  }

  function query() {
    const params = new URLSearchParams();
    params.set("range", $("range").value);
    for (const select of filters.querySelectorAll("select")) {
      if (select.value) params.set(select.name, select.value);
    }
    return params.toString();
  }

  function setOptions(select, values, labels) {
    const chosen = select.value;
    const wanted = ["", ...values];
    if (chosen && !wanted.includes(chosen)) wanted.push(chosen); // keep a choice that left the range
    const current = Array.from(select.options, (o) => o.value);
    if (current.join("\u0000") === wanted.join("\u0000")) return;
    select.replaceChildren(...wanted.map((v) => el("option", { value: v }, v === "" ? "any" : labels?.[v] ?? v)));
    select.value = chosen;
  }

  function renderKpis(data) {
    const totals = data.totals;
    $("kpi-events").textContent = fmtInt(totals.events);
    $("kpi-customers").textContent = fmtInt(totals.customers);
    $("kpi-errors").textContent = fmtPct(totals.error_rate);
    $("kpi-latency").textContent =
      totals.p50_ms === null ? "–" : `${fmtMs(totals.p50_ms)} / ${fmtMs(totals.p95_ms)} ms`;
    const ingest = data.server.responses["POST /events/ingest"] || {};
    const total = Object.values(ingest).reduce((a, b) => a + b, 0);
    const refused = Object.entries(ingest)
      .filter(([status]) => status !== "200")
      .map(([status, n]) => `${n}× ${status === "0" ? "dropped" : status}`);
    $("kpi-requests").textContent = fmtInt(total) + (refused.length ? ` (${refused.join(", ")})` : "");
  }

  function renderChart(series) {
    const svg = $("chart");
    const width = 960, height = 220, left = 44, right = 8, top = 10, bottom = 24;
    const buckets = series.buckets;
    const max = Math.max(1, ...buckets.map((b) => b.calls));
    const plotW = width - left - right, plotH = height - top - bottom;
    const step = buckets.length ? plotW / buckets.length : plotW;
    const barW = Math.max(1, Math.min(step * 0.8, 48));
    const nodes = [];
    const line = (x1, y1, x2, y2) => {
      const l = document.createElementNS(SVG, "line");
      for (const [k, v] of Object.entries({ x1, y1, x2, y2, class: "axis" })) l.setAttribute(k, v);
      return l;
    };
    const text = (x, y, anchor, content) => {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", x);
      t.setAttribute("y", y);
      t.setAttribute("text-anchor", anchor);
      t.textContent = content;
      return t;
    };
    nodes.push(line(left, top + plotH, width - right, top + plotH), line(left, top, left, top + plotH));
    nodes.push(text(left - 6, top + 10, "end", fmtInt(max)), text(left - 6, top + plotH, "end", "0"));
    let total = 0;
    buckets.forEach((bucket, i) => {
      total += bucket.calls;
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", "bucket");
      g.setAttribute("data-calls", bucket.calls);
      g.setAttribute("data-errors", bucket.errors);
      g.setAttribute("data-start", bucket.start);
      const x = left + i * step + (step - barW) / 2;
      const okH = (plotH * (bucket.calls - bucket.errors)) / max;
      const errH = (plotH * bucket.errors) / max;
      for (const [cls, y, h] of [["ok", top + plotH - okH - errH, okH], ["err", top + plotH - errH, errH]]) {
        if (h <= 0) continue;
        const r = document.createElementNS(SVG, "rect");
        for (const [k, v] of Object.entries({ x, y, width: barW, height: h, class: cls })) r.setAttribute(k, v);
        g.append(r);
      }
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${bucket.start}: ${bucket.calls} calls, ${bucket.errors} errors`;
      g.append(tip);
      nodes.push(g);
    });
    const label = (iso) => iso.slice(11, series.bucket_seconds < 1 ? 23 : 19);
    if (buckets.length) {
      nodes.push(text(left, height - 6, "start", label(buckets[0].start)));
      nodes.push(text(width - right, height - 6, "end", label(buckets[buckets.length - 1].start)));
    } else {
      nodes.push(text(left + plotW / 2, top + plotH / 2, "middle", "no events in this range"));
    }
    svg.replaceChildren(...nodes);
    svg.setAttribute("data-total", total);
    svg.setAttribute("data-buckets", buckets.length);
    $("chart-note").textContent = buckets.length ? `per ${series.bucket_seconds} s, by event timestamp` : "";
  }

  function renderCustomers(rows) {
    fillTable(
      $("customers"),
      rows.map((c) =>
        el(
          "tr",
          { "data-customer": c.customer_id },
          el("td", { class: "wrap" }, c.customer_id),
          el("td", { class: "num", "data-field": "events" }, fmtInt(c.events)),
          el("td", {}, shareBar(c.share)),
          el("td", { class: "num", "data-field": "errors" }, fmtInt(c.errors)),
          el("td", { class: "num" }, fmtPct(c.error_rate)),
          el("td", { class: "num" }, fmtMs(c.p95_ms))
        )
      ),
      "No events yet: point your app at this server."
    );
  }

  function shareBar(share) {
    const fill = el("i");
    fill.style.width = `${(100 * share).toFixed(1)}%`;
    return el("span", { class: "share", title: fmtPct(share) }, fill);
  }

  function describeFilter(filter) {
    if (!filter) return "";
    const ops = {
      equals: "=", not_equals: "≠", greater_than: ">", greater_than_or_equals: "≥",
      less_than: "<", less_than_or_equals: "≤", contains: "contains", does_not_contain: "does not contain",
    };
    const part = (c) =>
      c.clauses ? `(${c.clauses.map(part).join(` ${c.conjunction} `)})` : `${c.key} ${ops[c.operator]} ${JSON.stringify(c.value)}`;
    return part(filter);
  }

  function renderMeters(meters, customers) {
    const box = $("meters");
    if (!meters.length) {
      box.replaceChildren(
        el("p", { class: "empty" }, "No meters yet: create one with POST /meters (client.meters.create(...) in Dodo's SDK).")
      );
      return;
    }
    // One row per customer (in the usage table's order), one column per meter: what each customer is billed.
    const order = customers.map((c) => c.customer_id);
    for (const m of meters) for (const c of m.customers) if (!order.includes(c.customer_id)) order.push(c.customer_id);
    const byMeter = meters.map((m) => new Map(m.customers.map((c) => [c.customer_id, c])));
    const none = (m) => (m.aggregation.type === "count" || m.aggregation.type === "sum" ? 0 : null);
    const head = el(
      "tr",
      {},
      el("th", {}, "customer"),
      ...meters.map((m) => el("th", { class: "num", "data-meter": m.id, title: m.id }, m.name, el("br"), el("small", {}, m.measurement_unit)))
    );
    const rows = order.map((customer) =>
      el(
        "tr",
        { "data-customer": customer },
        el("td", { class: "wrap" }, customer),
        ...meters.map((m, i) => {
          const usage = byMeter[i].get(customer);
          return el("td", { class: "num", "data-meter": m.id }, fmtValue(usage ? usage.value : none(m)));
        })
      )
    );
    const total = el(
      "tr",
      { class: "total" },
      el("td", {}, "total"),
      ...meters.map((m) => el("td", { class: "num", "data-meter": m.id }, fmtValue(m.total)))
    );
    const definitions = meters.map((m) => {
      const agg = m.aggregation.type === "count" ? "count" : `${m.aggregation.type} of ${m.aggregation.key}`;
      const where = m.filter ? ` where ${describeFilter(m.filter)}` : "";
      return el("li", { "data-meter": m.id }, el("b", {}, m.name), `: ${agg} of "${m.event_name}" events${where} · `, el("code", {}, m.id));
    });
    box.replaceChildren(
      el("div", { class: "scroll" }, el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, ...rows, total))),
      el("ul", { class: "definitions" }, ...definitions)
    );
  }

  function renderEndpoints(rows) {
    fillTable(
      $("endpoints"),
      rows.map((e) =>
        el(
          "tr",
          { "data-endpoint": `${e.method} ${e.endpoint}`.trim() },
          el("td", { class: "wrap" }, `${e.method} ${e.endpoint}`.trim()),
          el("td", { class: "num", "data-field": "events" }, fmtInt(e.events)),
          el("td", { class: "num" }, fmtInt(e.customers)),
          el("td", { class: e.client_errors ? "num s4" : "num" }, fmtInt(e.client_errors)),
          el("td", { class: e.server_errors ? "num s5" : "num" }, fmtInt(e.server_errors)),
          el("td", { class: "num" }, fmtPct(e.error_rate)),
          el("td", { class: "num" }, fmtMs(e.p50_ms)),
          el("td", { class: "num" }, fmtMs(e.p95_ms)),
          el("td", { class: "num" }, fmtMs(e.p99_ms))
        )
      ),
      "No events with an endpoint yet."
    );
  }

  function renderLatest(rows) {
    fillTable(
      $("latest"),
      rows.map((e) =>
        el(
          "tr",
          { "data-event": e.event_id, "data-customer": e.customer_id, title: JSON.stringify(e.metadata) },
          el("td", {}, e.timestamp.replace("T", " ").replace("Z", "")),
          el("td", { class: "wrap" }, e.customer_id),
          el("td", {}, e.event_name),
          el("td", { class: "wrap" }, [e.method, e.endpoint].filter(Boolean).join(" ") || "–"),
          el("td", { class: `num ${statusClass(e.status_code)}`, "data-field": "status" }, e.status_code ?? "–"),
          el("td", { class: "num" }, typeof e.response_time_ms === "number" ? fmtMs(e.response_time_ms) : "–"),
          el("td", { class: "wrap" }, e.event_id)
        )
      ),
      "No events match these filters."
    );
  }

  function renderServer(server) {
    const items = [
      ["events stored", fmtInt(server.event_count)],
      ["request budget", server.rate_limit ? `${server.rate_limit} per API key (429 with Retry-After beyond it)` : "unlimited"],
      [
        "answers",
        Object.entries(server.responses)
          .map(([route, counts]) => `${route}: ` + Object.entries(counts).map(([s, n]) => `${n}× ${s === "0" ? "dropped" : s}`).join(", "))
          .join(" · ") || "none yet",
      ],
      [
        "faults queued",
        server.faults.length
          ? server.faults
              .map((f) => `${f.route}: ${f.drop_connection ? "drop" : f.status ?? `delay ${f.delay}s`}` +
                (f.probability < 1 ? ` (p=${f.probability})` : "") + (f.remaining === null ? " until cleared" : ` ×${f.remaining}`))
              .join(" · ")
          : "none",
      ],
    ];
    if (server.index_truncated) items.push(["note", `showing the latest ${fmtInt(server.indexed_events)} events`]);
    $("server").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function render(data) {
    renderKpis(data);
    renderChart(data.series);
    renderCustomers(data.customers);
    renderMeters(data.meters, data.customers);
    renderEndpoints(data.endpoints);
    renderLatest(data.latest);
    renderServer(data.server);
    const statuses = data.options.statuses.map(String);
    const statusLabels = { error: "errors (≥ 400)", "2xx": "2xx", "4xx": "4xx", "5xx": "5xx" };
    setOptions(filters.elements.customer_id, data.options.customers);
    setOptions(filters.elements.event_name, data.options.event_names);
    setOptions(filters.elements.endpoint, data.options.endpoints);
    setOptions(filters.elements.status, ["error", "2xx", "4xx", "5xx", ...statuses], statusLabels);
    document.body.setAttribute("data-generated", data.generated_at);
  }

  async function refresh() {
    clearTimeout(timer);
    if (inFlight) return;
    inFlight = true;
    const status = $("status");
    try {
      const response = await fetch(`/_local/dashboard?${query()}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      status.dataset.state = "live";
      status.textContent = "live · " + new Date().toLocaleTimeString();
    } catch (error) {
      status.dataset.state = "error";
      status.textContent = `server unreachable (${error.message}); retrying`;
    } finally {
      inFlight = false;
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  $("range").addEventListener("change", refresh);
  filters.addEventListener("change", refresh);
  filters.addEventListener("reset", () => setTimeout(refresh, 0));
  filters.addEventListener("submit", (event) => event.preventDefault());
  refresh();
})();
