// livechain's page: one chain, live. Follows /options/stream (a snapshot, then deltas applied in
// order), read with fetch() so an API key can go in a header; falls back to polling /options/live
// with If-None-Match when streaming is not possible.
// Only the cells of changed legs are touched, so it stays usable at 250 strikes.
// The day's history (/options/history) feeds intraday charts and a time control that shows the
// chain as of any sampled time (/options/live?at=) while the stream keeps the live chain current
// in the background, off screen, until "Back to live".
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const CE_COLS = ["oi", "oi_change", "volume", "iv", "ltp", "change", "bid_qty", "bid", "ask", "ask_qty"];
  const PE_COLS = ["bid_qty", "bid", "ask", "ask_qty", "change", "ltp", "iv", "volume", "oi_change", "oi"];
  const INT = new Intl.NumberFormat("en-IN", { maximumFractionDigits: 0 });
  const DEC = new Intl.NumberFormat("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const POLL_MS = 1000;
  const CHART_MS = 1000;

  let underlyings = [];
  let live = null; // the /options/live body, kept current by the stream or the polls
  let liveRows = new Map(); // strike → live's row object (deltas land there)
  let state = null; // the body on screen: `live`, or the sample shown by the time control
  let asOf = null; // null: showing live; else the time asked for (a sample's `t`, or ?at= from the URL)
  let rows = new Map(); // strike → {tr, ce: {col: td}, pe: {col: td}}
  let dirty = new Set(); // leg keys "strike:CE" to repaint; "*" = everything
  let painting = false;
  let pollTimer = null, etag = null, generation = 0;
  let charts = null, chartsAt = 0;
  let maxOi = 0;

  const fmt = (v, col) => {
    if (v === null || v === undefined) return "–";
    if (col === "oi" || col === "oi_change" || col === "volume" || col === "bid_qty" || col === "ask_qty") return INT.format(v);
    return DEC.format(v);
  };
  const legKey = (strike, side) => `${Number.isInteger(strike) ? strike.toFixed(1) : String(strike)}:${side}`;

  // ------------------------------------------------------------------ pickers

  async function loadUnderlyings() {
    const resp = await apiFetch("/options/underlyings");
    underlyings = (await resp.json()).underlyings;
    const params = new URLSearchParams(location.search);
    const sel = $("underlying");
    sel.innerHTML = "";
    for (const u of underlyings) sel.add(new Option(u.underlying, u.underlying));
    const wanted = (params.get("underlying") || "").toUpperCase();
    if (underlyings.some((u) => u.underlying === wanted)) sel.value = wanted;
    fillExpiries(params.get("expiry"));
  }

  function fillExpiries(wanted) {
    const u = underlyings.find((x) => x.underlying === $("underlying").value);
    const sel = $("expiry");
    sel.innerHTML = "";
    const today = new Date();
    for (const e of (u ? u.expiries : [])) {
      const days = Math.max(0, Math.round((Date.parse(e.expiry + "T00:00:00+05:30") - Date.parse(today.toISOString().slice(0, 10) + "T00:00:00+05:30")) / 864e5));
      sel.add(new Option(`${e.expiry} (${days}d)`, e.expiry));
    }
    if (wanted && [...sel.options].some((o) => o.value === wanted)) sel.value = wanted;
  }

  function selection() {
    return { underlying: $("underlying").value, expiry: $("expiry").value };
  }

  function query() {
    const s = selection();
    return `underlying=${encodeURIComponent(s.underlying)}&expiry=${encodeURIComponent(s.expiry)}`;
  }

  // ------------------------------------------------------------------ API key
  // Off unless the service has keys (README "Authentication"). On a 401 the page asks for the key
  // once and keeps it in sessionStorage (gone with the tab); it is sent as a header on every data
  // request, never in a URL.

  const KEY_ITEM = "livechain.apiKey";
  let keyWaiters = [];
  let memoryKey = null; // where sessionStorage is unavailable: kept for this page only

  function storedKey() {
    try { return sessionStorage.getItem(KEY_ITEM) || memoryKey; } catch (err) { return memoryKey; }
  }

  function authHeaders(extra) {
    const key = storedKey();
    return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {});
  }

  // Ask for a key (a 401 answered `body`); resolves once one was entered.
  function askKey(body) {
    const code = body && body.error && body.error.code;
    if (code === "invalid_api_key") {
      memoryKey = null;
      try { sessionStorage.removeItem(KEY_ITEM); } catch (err) { /* unavailable */ }
    }
    $("keyform").hidden = false;
    $("keyerr").textContent = code === "invalid_api_key" ? "that key was not accepted" : "this service needs an API key";
    $("transport").textContent = "waiting for an API key";
    $("apikey").focus();
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("apikey").value.trim();
    if (!key) return;
    try { sessionStorage.setItem(KEY_ITEM, key); } catch (err) { memoryKey = key; }
    $("apikey").value = "";
    $("keyform").hidden = true;
    const waiters = keyWaiters;
    keyWaiters = [];
    for (const resolve of waiters) resolve();
  });

  // fetch() with the key; on a 401 ask for it and try again.
  async function apiFetch(url, init) {
    for (;;) {
      const resp = await fetch(url, Object.assign({}, init || {}, { headers: authHeaders(init && init.headers) }));
      if (resp.status !== 401) return resp;
      let body = null;
      try { body = await resp.json(); } catch (err) { /* not JSON */ }
      await askKey(body);
    }
  }

  // ------------------------------------------------------------------ transport
  // The stream is read with fetch() and a ReadableStream (EventSource cannot send a header), as
  // text/event-stream: "event:", "id:", "data:" fields, ":" comments, a blank line ends an event.

  let streamAbort = null;

  function stop() {
    generation += 1;
    if (streamAbort) { streamAbort.abort(); streamAbort = null; }
    if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
    etag = null;
  }

  const canStream = () => typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined" &&
    typeof AbortController !== "undefined" && "body" in Response.prototype;

  function start() {
    stop();
    resetHistory(); // and back to live; writes the URL
    if (!canStream()) return poll(generation);
    stream(generation, null);
  }

  async function stream(gen, lastId) {
    const abort = new AbortController();
    streamAbort = abort;
    $("transport").textContent = lastId ? "reconnecting…" : "connecting…";
    let resp;
    try {
      resp = await apiFetch("/options/stream?" + query(), {
        headers: Object.assign({ Accept: "text/event-stream" }, lastId ? { "Last-Event-ID": lastId } : {}),
        cache: "no-store", signal: abort.signal,
      });
    } catch (err) {
      if (gen === generation) poll(gen); // never reachable: poll (it retries every second)
      return;
    }
    if (gen !== generation) { abort.abort(); return; }
    if (!resp.ok || !resp.body) { abort.abort(); poll(gen); return; } // refused (503 at the stream limit) …
    $("transport").textContent = "live (stream)";
    try {
      lastId = await readEvents(resp.body, gen, lastId);
    } catch (err) {
      if (gen !== generation) return; // stopped on purpose
    }
    if (gen !== generation) return;
    // The stream dropped: reconnect with the last id (one merged delta, or a snapshot if too old).
    pollTimer = setTimeout(() => { pollTimer = null; stream(gen, lastId); }, 1000);
  }

  // Read events until the body ends; returns the last event id seen.
  async function readEvents(body, gen, lastId) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "", kind = "", data = [], id = lastId;
    for (;;) {
      const { value, done } = await reader.read();
      if (gen !== generation) { reader.cancel(); return id; }
      if (done) return id;
      buf += decoder.decode(value, { stream: true });
      let at = 0;
      for (;;) {
        let nl = buf.indexOf("\n", at);
        const cr = buf.indexOf("\r", at);
        if (cr >= 0 && (nl < 0 || cr < nl)) {
          if (cr === buf.length - 1) break; // a "\r\n" may be split across chunks
          nl = cr;
        }
        if (nl < 0) break;
        const line = buf.slice(at, nl);
        at = nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1);
        if (line === "") {
          if (data.length) {
            const type = kind || "message";
            if (id !== null && id !== undefined && type !== "end") lastId = id;
            onEvent(type, data.join("\n"), gen);
            if (type === "end") return lastId;
          }
          kind = ""; data = [];
          continue;
        }
        if (line[0] === ":") continue; // a heartbeat comment
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val[0] === " ") val = val.slice(1);
        if (name === "event") kind = val;
        else if (name === "data") data.push(val);
        else if (name === "id") id = val;
      }
      buf = buf.slice(at);
    }
  }

  function onEvent(type, data, gen) {
    if (gen !== generation) return;
    if (type === "snapshot") setLive(JSON.parse(data));
    else if (type === "delta") { if (live) applyDelta(JSON.parse(data)); }
    else if (type === "end") { stop(); loadUnderlyings().then(start); }
  }

  async function poll(gen) {
    if (gen !== generation) return;
    $("transport").textContent = "polling";
    try {
      const resp = await apiFetch("/options/live?" + query(), { headers: etag ? { "If-None-Match": etag } : {} });
      if (gen !== generation) return;
      if (resp.status === 200) {
        etag = resp.headers.get("ETag");
        const body = await resp.json();
        if (gen === generation) setLive(body);
      }
    } catch (err) {
      $("transport").textContent = "polling (retrying)";
    }
    if (gen === generation) pollTimer = setTimeout(() => poll(gen), POLL_MS);
  }

  // ------------------------------------------------------------------ state

  function setState(body) {
    const sameLayout = state && state.strikes.length === body.strikes.length &&
      state.strikes.every((r, i) => r.strike === body.strikes[i].strike);
    state = body;
    if (!sameLayout) buildTable();
    else body.strikes.forEach((r) => { rows.get(r.strike).data = r; });
    dirty.add("*");
    schedule();
  }

  // The live chain changed: on screen only when showing live (the time control may show the past).
  function setLive(body) {
    live = body;
    liveRows = new Map(body.strikes.map((r) => [r.strike, r]));
    if (asOf === null) setState(body);
  }

  function applyDelta(delta) {
    const legs = delta.legs || {};
    delete delta.legs;
    Object.assign(live, delta);
    const shown = asOf === null; // then state === live and the table's rows are live's rows
    for (const [key, leg] of Object.entries(legs)) {
      const i = key.lastIndexOf(":");
      const strike = parseFloat(key.slice(0, i));
      const side = key.slice(i + 1).toLowerCase();
      const row = liveRows.get(strike);
      if (!row) continue;
      row[side] = leg;
      if (shown) dirty.add(key);
    }
    if (shown) schedule();
  }

  // ------------------------------------------------------------------ rendering

  function buildTable() {
    const tbody = document.querySelector("#chain tbody");
    tbody.innerHTML = "";
    rows = new Map();
    const frag = document.createDocumentFragment();
    for (const row of state.strikes) {
      const tr = document.createElement("tr");
      tr.dataset.strike = row.strike;
      const cells = { tr, data: row, ce: {}, pe: {}, strikeTd: null };
      for (const col of CE_COLS) cells.ce[col] = cell(tr, col, "ce");
      const s = document.createElement("td");
      s.className = "strike";
      s.textContent = DEC.format(row.strike).replace(/\.00$/, "");
      tr.appendChild(s);
      cells.strikeTd = s;
      for (const col of PE_COLS) cells.pe[col] = cell(tr, col, "pe");
      rows.set(row.strike, cells);
      frag.appendChild(tr);
    }
    tbody.appendChild(frag);
    charts = null;
    $("chart-oi").innerHTML = $("chart-oichg").innerHTML = $("chart-iv").innerHTML = "";
  }

  function cell(tr, col, side) {
    const td = document.createElement("td");
    td.dataset.f = `${side}.${col}`;
    if (col === "oi") td.className = `oi ${side}`;
    tr.appendChild(td);
    return td;
  }

  function schedule() {
    if (painting) return;
    painting = true;
    requestAnimationFrame(paint);
  }

  function paint() {
    painting = false;
    if (!state) return;
    let max = 0;
    for (const r of state.strikes) {
      if (r.ce && r.ce.oi > max) max = r.ce.oi;
      if (r.pe && r.pe.oi > max) max = r.pe.oi;
    }
    const whole = dirty.has("*"); // a new body (snapshot, poll, a sampled time, back to live)
    const all = whole || max !== maxOi;
    maxOi = max;
    const ref = state.forward ?? state.underlying_ltp;
    for (const [strike, cells] of rows) {
      for (const side of ["ce", "pe"]) {
        if (!all && !dirty.has(legKey(strike, side.toUpperCase()))) continue;
        paintLeg(cells, side, cells.data[side], ref);
      }
    }
    if (all || dirty.size) paintRows(ref);
    dirty.clear();
    paintHeader();
    const now = Date.now();
    if (whole || now - chartsAt >= CHART_MS) { chartsAt = now; paintCharts(); }
  }

  function paintLeg(cells, side, leg, ref) {
    const cols = cells[side];
    for (const col in cols) {
      const td = cols[col];
      const v = leg ? leg[col] : null;
      const text = fmt(v, col);
      if (td.textContent !== text) td.textContent = text;
      if (col === "change" || col === "oi_change") td.className = v > 0 ? "up" : v < 0 ? "down" : "";
      if (col === "oi") td.style.backgroundSize = `${maxOi && v ? (100 * v / maxOi).toFixed(1) : 0}% 100%`;
      td.classList.toggle("stale", Boolean(leg && leg.stale));
    }
  }

  function paintRows(ref) {
    const atm = state.atm_strike;
    for (const [strike, cells] of rows) {
      cells.tr.classList.toggle("atm", atm !== null && strike === atm);
      const ceItm = ref !== null && ref !== undefined && strike < ref;
      const peItm = ref !== null && ref !== undefined && strike > ref;
      for (const td of Object.values(cells.ce)) td.classList.toggle("itm", ceItm);
      for (const td of Object.values(cells.pe)) td.classList.toggle("itm", peItm);
    }
  }

  function paintHeader() {
    const s = state;
    $("spot").textContent = fmt(s.underlying_ltp);
    $("forward").textContent = fmt(s.forward);
    $("atm").textContent = s.atm_strike ?? "–";
    $("pcr").textContent = s.pcr_oi ?? "–";
    $("maxpain").textContent = s.max_pain ?? "–";
    $("maxce").textContent = (s.max_oi && s.max_oi.ce) ?? "–";
    $("maxpe").textContent = (s.max_oi && s.max_oi.pe) ?? "–";
    $("dte").textContent = s.days_to_expiry ?? "–";
    $("version").textContent = s.version;
    freshness();
  }

  function freshness() {
    const badge = $("fresh");
    if (!state) return;
    if (asOf !== null) {
      badge.className = "badge past";
      badge.textContent = state === live ? "as of …" : `as of ${istTime(state.as_of)}`;
      badge.title = `showing the chain as it was at ${state.as_of}; live updates are paused`;
      return;
    }
    const market = state.market || {};
    if (market.state && market.state !== "open") {
      badge.className = "badge closed";
      badge.textContent = market.state === "pre_open" ? "pre-open" : "market closed";
      badge.title = market.next_open ? `next open ${market.next_open}` : "";
      return;
    }
    const age = state.as_of ? (Date.now() - Date.parse(state.as_of)) / 1000 : Infinity;
    badge.className = "badge " + (state.stale || age > 30 ? "red" : age > 5 ? "amber" : "green");
    badge.textContent = state.stale ? "stale" : age < 1 ? "live" : `${Math.round(age)}s old`;
    badge.title = `as of ${state.as_of}`;
  }

  function paintCharts() {
    if (typeof uPlot === "undefined" || !state) return;
    const x = [], ceOi = [], peOi = [], ceChg = [], peChg = [], ceIv = [], peIv = [];
    for (const r of state.strikes) {
      x.push(r.strike);
      ceOi.push(r.ce ? r.ce.oi : null); peOi.push(r.pe ? r.pe.oi : null);
      ceChg.push(r.ce ? r.ce.oi_change : null); peChg.push(r.pe ? r.pe.oi_change : null);
      ceIv.push(r.ce ? r.ce.iv : null); peIv.push(r.pe ? r.pe.iv : null);
    }
    if (!charts) {
      const width = Math.max(300, $("chart-oi").clientWidth || 360);
      const bars = (align) => (uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.45, 14], align }) : undefined);
      const compact = (u, vals) => vals.map((v) => (v === null ? "" : Math.abs(v) >= 1e7 ? (v / 1e7).toFixed(1) + "Cr"
        : Math.abs(v) >= 1e5 ? (v / 1e5).toFixed(1) + "L" : Math.abs(v) >= 1e3 ? (v / 1e3).toFixed(0) + "k" : String(v)));
      const make = (el, a, b, asBars) => new uPlot({
        width, height: 170, legend: { show: true },
        scales: { x: { time: false } },
        axes: [{}, { size: 56, values: asBars ? compact : undefined }],
        series: [{ label: "strike" },
          { label: "CE", stroke: "#d9534f", fill: asBars ? "rgba(217,83,79,.55)" : undefined, paths: asBars ? bars(-1) : undefined,
            points: { show: !asBars }, width: asBars ? 1 : 1.5 },
          { label: "PE", stroke: "#2e7d32", fill: asBars ? "rgba(46,125,50,.55)" : undefined, paths: asBars ? bars(1) : undefined,
            points: { show: !asBars }, width: asBars ? 1 : 1.5 }],
      }, [x, a, b], $(el));
      charts = [make("chart-oi", ceOi, peOi, true), make("chart-oichg", ceChg, peChg, true), make("chart-iv", ceIv, peIv, false)];
      return;
    }
    charts[0].setData([x, ceOi, peOi]);
    charts[1].setData([x, ceChg, peChg]);
    charts[2].setData([x, ceIv, peIv]);
  }

  // ------------------------------------------------------------------ the day's history
  // /options/history holds today's samples of this chain (one per history.interval_s). It is
  // fetched once per interval with If-None-Match (a 304 when no sample was added), never per tick,
  // and feeds the intraday charts and the time control's list of sample times. Missing values are
  // null in the body and gaps in the charts. The time control shows /options/live?at=<sample
  // time>: the body exactly as served at that sample. Meanwhile the stream (or the polls) keeps
  // `live` current off screen, so "Back to live" shows the live chain at once.

  const HIST_RETRY_MS = 5000; // an error: look again
  const HIST_OFF_MS = 60000; // history is not served here (history.enabled = false): look again rarely
  const IST_TIME = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const IST_MINUTE = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const istTime = (iso) => (iso ? IST_TIME.format(new Date(Date.parse(iso))) : "–");
  // x ticks in IST: hh:mm, with seconds only when the ticks are less than a minute apart.
  const timeTicks = (u, splits, axis, space, incr) => splits.map((v) => (v === null ? "" : (incr % 60 === 0 ? IST_MINUTE : IST_TIME).format(new Date(v * 1e3))));
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const compact = (u, vals) => vals.map((v) => (v === null ? "" : Math.abs(v) >= 1e7 ? (v / 1e7).toFixed(1) + "Cr"
    : Math.abs(v) >= 1e5 ? (v / 1e5).toFixed(1) + "L" : Math.abs(v) >= 1e3 ? (v / 1e3).toFixed(0) + "k" : String(v)));
  // [element id, series labels and colours, y values formatter, value of a point per series]
  const HIST_CHARTS = [
    ["hist-underlying", [["spot", "#1f6feb"], ["forward", "#8250df"]], undefined, [(p) => p.underlying_ltp, (p) => p.forward]],
    ["hist-straddle", [["ATM straddle", "#bf8700"]], undefined, [(p) => p.atm_straddle]],
    ["hist-pcr", [["PCR OI", "#1f6feb"], ["PCR volume", "#8250df"]], undefined, [(p) => p.pcr_oi, (p) => p.pcr_volume]],
    ["hist-oi", [["CE", "#d9534f"], ["PE", "#2e7d32"]], compact, [(p) => p.ce && p.ce.oi, (p) => p.pe && p.pe.oi]],
    ["hist-oichg", [["CE", "#d9534f"], ["PE", "#2e7d32"]], compact, [(p) => p.ce && p.ce.oi_change, (p) => p.pe && p.pe.oi_change]],
  ];

  let hist = null; // {interval_s, t: [ISO], x: [epoch s]} of the chain shown
  let histEtag = null, histTimer = null, histGen = 0, histCharts = null;
  let asOfSeq = 0, slideTimer = null;

  function resetHistory() {
    histGen += 1;
    if (histTimer) { clearTimeout(histTimer); histTimer = null; }
    histEtag = null;
    hist = null;
    if (histCharts) { for (const u of histCharts) u.destroy(); histCharts = null; }
    HIST_CHARTS.forEach(([id]) => { delete $(id).dataset.points; });
    asOf = null;
    asOfSeq += 1;
    $("intraday").hidden = true;
    $("timebar").hidden = true;
    paintMode();
    refreshHistory(histGen);
  }

  // Samples are taken on the interval's boundaries (whole minutes at 60 s): ask just after the next.
  const nextSampleMs = (interval_s) => {
    const ms = interval_s * 1000;
    return ms - (Date.now() % ms) + Math.min(2000, ms / 4);
  };

  async function refreshHistory(gen) {
    let wait = hist ? nextSampleMs(hist.interval_s) : HIST_RETRY_MS;
    try {
      const resp = await apiFetch("/options/history?" + query(), { headers: histEtag ? { "If-None-Match": histEtag } : {} });
      if (gen !== histGen) return;
      if (resp.status === 200) {
        const etagNow = resp.headers.get("ETag");
        const body = await resp.json();
        if (gen !== histGen) return;
        histEtag = etagNow;
        setHistory(body);
        wait = nextSampleMs(hist.interval_s);
      } else if (resp.status !== 304) {
        // 404 history_off: history is off on this service (a chain with no sample yet is a 200
        // with no points); an older service: 404 too. A 5xx may pass: try again soon.
        wait = resp.status >= 500 ? HIST_RETRY_MS : HIST_OFF_MS;
      }
    } catch (err) {
      if (gen !== histGen) return; // network trouble: try again
    }
    if (gen === histGen) histTimer = setTimeout(() => { histTimer = null; refreshHistory(gen); }, Math.max(250, wait));
  }

  function setHistory(body) {
    const points = body.points || [];
    hist = { interval_s: body.interval_s > 0 ? body.interval_s : 60, t: points.map((p) => p.t), x: points.map((p) => Date.parse(p.t) / 1000) };
    $("intraday").hidden = false;
    const datasets = HIST_CHARTS.map(([, , , getters]) => [hist.x, ...getters.map((get) => points.map((p) => num(get(p))))]);
    if (!histCharts) {
      histCharts = HIST_CHARTS.map(([id, series, values], i) => makeHistChart($(id), series, values, datasets[i]));
    } else {
      histCharts.forEach((u, i) => u.setData(datasets[i]));
    }
    HIST_CHARTS.forEach(([id]) => { $(id).dataset.points = String(points.length); });
    fillTimes();
  }

  function makeHistChart(el, series, values, data) {
    el.innerHTML = "";
    const width = Math.max(240, (el.parentElement.clientWidth || 300) - 10);
    const u = new uPlot({
      width, height: 150, legend: { show: true },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Asia/Kolkata"),
      cursor: { sync: { key: "intraday" }, drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{ values: timeTicks }, { size: 56, values }],
      series: [{ label: "IST", value: (u, v) => (v === null ? "--" : IST_TIME.format(new Date(v * 1e3))) }, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5 }))],
      hooks: { draw: [drawAsOf] },
    }, data, el);
    // A click picks that sample for the time control.
    u.over.addEventListener("click", () => { if (hist && u.cursor.idx !== null && u.cursor.idx !== undefined) showAt(hist.t[u.cursor.idx]); });
    u.over.style.cursor = "pointer";
    return u;
  }

  // The sample shown by the time control, as a dashed line on the intraday charts.
  function drawAsOf(u) {
    const i = shownIndex();
    if (i < 0) return;
    const x = Math.round(u.valToPos(hist.x[i], "x", true));
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#8250df";
    ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
    ctx.setLineDash([5, 4]);
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.restore();
  }

  // Index of the last sample at or before asOf (-1: live, or none).
  function shownIndex() {
    if (asOf === null || !hist) return -1;
    const at = Date.parse(asOf) / 1000;
    let i = hist.x.length - 1;
    while (i >= 0 && hist.x[i] > at) i -= 1;
    return i;
  }

  function fillTimes() {
    const n = hist ? hist.t.length : 0;
    const slider = $("timeslider");
    $("timebar").hidden = n === 0 && asOf === null;
    slider.max = String(n); // n: the right end, live
    if (!slideTimer) slider.value = String(asOf === null ? n : Math.max(0, shownIndex()));
  }

  $("timeslider").addEventListener("input", () => {
    const i = Number($("timeslider").value);
    const n = hist ? hist.t.length : 0;
    $("timelabel").textContent = i >= n ? "live" : istTime(hist.t[i]);
    // Dragging across many samples asks for the one it rests on, not each.
    if (slideTimer) clearTimeout(slideTimer);
    slideTimer = setTimeout(() => { slideTimer = null; if (i >= n) goLive(); else showAt(hist.t[i]); }, 150);
  });

  $("golive").addEventListener("click", () => goLive());

  async function showAt(t) {
    const seq = ++asOfSeq;
    asOf = t;
    paintMode("loading…");
    let resp, body = null;
    try {
      resp = await apiFetch("/options/live?" + query() + "&at=" + encodeURIComponent(t));
      body = await resp.json();
    } catch (err) {
      if (seq === asOfSeq) paintMode("could not load that time");
      return;
    }
    if (seq !== asOfSeq) return; // superseded: another time, back to live, or another chain
    if (resp.status !== 200) {
      paintMode((body && body.error && body.error.message) || `HTTP ${resp.status}`);
      return;
    }
    setState(body);
    paintMode();
  }

  function goLive() {
    asOfSeq += 1;
    if (asOf === null) return;
    asOf = null;
    if (live) setState(live);
    paintMode();
  }

  // Show which chain is on screen: live, or the past (the sample's time and the chain's as_of).
  function paintMode(note) {
    const past = asOf !== null;
    document.body.classList.toggle("past", past);
    $("golive").hidden = !past;
    $("pastnote").hidden = !past;
    $("timebar").dataset.at = past ? asOf : "";
    if (past) {
      const i = shownIndex();
      $("timelabel").textContent = istTime(i >= 0 ? hist.t[i] : asOf);
      $("pastnote").textContent = note || `showing the chain as of ${istTime(state && state.as_of)} IST; live updates paused`;
    } else {
      $("timelabel").textContent = "live";
    }
    fillTimes();
    if (histCharts) for (const u of histCharts) u.redraw(false);
    if (!note) freshness();
    showUrl();
  }

  function showUrl() {
    history.replaceState(null, "", "?" + query() + (asOf !== null ? "&at=" + encodeURIComponent(asOf) : ""));
  }

  // ------------------------------------------------------------------ wiring

  $("underlying").addEventListener("change", () => { fillExpiries(null); state = live = null; start(); });
  $("expiry").addEventListener("change", () => { state = live = null; start(); });
  setInterval(freshness, 1000);
  // A link to a past time (a "+" of the offset typed unencoded reads as a space).
  const wantedAt = (new URLSearchParams(location.search).get("at") || "").replace(/ /g, "+") || null;
  loadUnderlyings().then(() => { start(); if (wantedAt) showAt(wantedAt); }).catch((err) => { $("transport").textContent = "cannot load /options/underlyings: " + err; });
})();
