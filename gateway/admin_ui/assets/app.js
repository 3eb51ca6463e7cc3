// The admin page: reads the admin JSON API with the master key as a bearer header.
// The key lives in sessionStorage (this tab only) and never in a URL. Numbers are shown as the
// API sends them (decimal strings); charts alone convert them to floats.
"use strict";

(() => {
  const KEY = "rightsize.masterKey";
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let selectedTeam = null;

  class Unauthorized extends Error {}

  async function api(path, params = {}) {
    const query = new URLSearchParams(params).toString();
    const response = await fetch(path + (query ? "?" + query : ""), {
      headers: { authorization: "Bearer " + sessionStorage.getItem(KEY) },
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  const json = async (path, params) => (await api(path, params)).json();

  // DOM built with textContent only: team, key and model names never become markup.
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function fillTable(id, rows, cells) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren(...rows.map((row) => {
      const tr = el("tr");
      for (const cell of cells(row)) tr.append(cell instanceof Node ? cell : el("td", cell));
      return tr;
    }));
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = { responsive: true, maintainAspectRatio: false, animation: false,
      ...config.options };
    charts[id] = new Chart($(id), config);
  }

  function isoDay(date) { return date.toISOString().slice(0, 10); }

  function period() { return { start: $("start").value, end: $("end").value }; }

  // Series per name over the days of the period, from rows of a (day, name) cost report.
  function series(rows, name) {
    const days = [...new Set(rows.map((r) => r.day))].sort();
    const names = [...new Set(rows.map((r) => r[name] ?? "(none)"))].sort();
    const datasets = names.map((label) => ({
      label,
      data: days.map((day) => {
        const row = rows.find((r) => r.day === day && (r[name] ?? "(none)") === label);
        return row ? parseFloat(row.cost_usd) : 0;
      }),
    }));
    return { labels: days, datasets };
  }

  const stacked = { scales: { x: { stacked: true }, y: { stacked: true,
    title: { display: true, text: "USD" } } } };

  async function loadBudgets(teams) {
    const usage = await Promise.all(teams.map((t) =>
      json(`/admin/teams/${encodeURIComponent(t.name)}/usage`)));
    const rows = usage.flatMap((u) => u.data.filter((b) => b.scope === "team" && b.limit_usd));
    fillTable("budget-table", rows, (b) => {
      const used = parseFloat(b.spent_usd) / parseFloat(b.limit_usd);
      const bar = el("div", null, used > 1 ? "bar over" : "bar");
      const fill = el("div");
      fill.style.width = Math.min(100, used * 100).toFixed(1) + "%";
      bar.append(fill);
      const cell = el("td");
      cell.append(bar, el("span", (used * 100).toFixed(1) + "%"));
      return [teamLink(b.team), b.id, b.window, b.spent_usd, b.limit_usd, b.remaining_usd, cell];
    });
  }

  function teamLink(team) {
    const cell = el("td");
    const button = el("button", team, "link");
    button.type = "button";
    button.dataset.team = team;
    button.addEventListener("click", () => drillDown(team));
    cell.append(button);
    return cell;
  }

  async function loadCosts() {
    const p = period();
    const [byTeam, byDayTeam, byDayModel] = await Promise.all([
      json("/admin/reports/costs", { ...p, group_by: "team" }),
      json("/admin/reports/costs", { ...p, group_by: "day,team" }),
      json("/admin/reports/costs", { ...p, group_by: "day,model" }),
    ]);
    $("total-requests").textContent = byTeam.totals.requests;
    $("total-cost").textContent = byTeam.totals.cost_usd;
    fillTable("team-table", byTeam.rows, (r) => [teamLink(r.team), r.requests, r.prompt_tokens,
      r.completion_tokens, r.cost_usd]);
    draw("spend-by-team", { type: "bar", data: series(byDayTeam.rows, "team"), options: stacked });
    draw("spend-by-model", { type: "bar", data: series(byDayModel.rows, "model"),
      options: stacked });
  }

  async function loadRouting() {
    const report = await json("/admin/reports/routing", period());
    const rate = report.totals.cache_hit_rate;
    $("cache-hit-rate").textContent = rate === null ? "–" : rate + "%";
    fillTable("tier-table", report.rows, (r) => [r.tier ?? "(none)", r.requests, r.cache_hits,
      r.cost_usd]);
    draw("tier-mix", { type: "doughnut", data: {
      labels: report.rows.map((r) => r.tier ?? "(none)"),
      datasets: [{ label: "requests", data: report.rows.map((r) => r.requests) }],
    } });
    draw("demand-histogram", { type: "bar", data: {
      labels: report.demand_histogram.map((b) => `${b.low}–${b.high}`),
      datasets: [{ label: "requests", data: report.demand_histogram.map((b) => b.requests) }],
    }, options: { plugins: { legend: { display: false } },
      scales: { x: { title: { display: true, text: "reasoning demand" } } } } });
  }

  async function loadEngines() {
    const engines = (await json("/admin/local-engines")).data;
    const shown = (value) => (value === null ? "–" : value);
    $("engines-note").textContent = engines.length
      ? "As this gateway's probes last read each engine's /metrics."
      : "No local engines configured.";
    fillTable("engine-table", engines, (e) => [e.deployment, e.replica, e.healthy ? "yes" : "no",
      e.spilled ? "yes" : "no", shown(e.waiting), shown(e.running),
      e.kv_cache_usage === null ? "–" : Math.round(e.kv_cache_usage * 100) + "%",
      shown(e.reading_age_s)]);
  }

  async function loadSavings() {
    let report;
    try {
      report = await json("/admin/reports/savings", period());
    } catch (error) {
      if (error instanceof Unauthorized || error.status !== 400) throw error;
      $("savings-note").textContent = error.message;
      $("savings-total").textContent = "–";
      return;
    }
    const t = report.totals;
    $("savings-reference").textContent = report.reference_model;
    $("savings-total").textContent = `${t.savings_usd} USD` +
      (t.savings_percent === null ? "" : ` (${t.savings_percent}%)`);
    $("savings-note").textContent = report.method;
    const days = [...new Set(report.rows.map((r) => r.day))].sort();
    const sum = (field) => days.map((day) => report.rows.filter((r) => r.day === day)
      .reduce((acc, r) => acc + parseFloat(r[field]), 0));
    draw("savings-chart", { type: "line", data: { labels: days, datasets: [
      { label: "actual", data: sum("actual_cost_usd") },
      { label: `at ${report.reference_model}`, data: sum("reference_cost_usd") },
    ] }, options: { scales: { y: { title: { display: true, text: "USD" } } } } });
  }

  async function drillDown(team) {
    selectedTeam = team;
    const p = period();
    const [keys, byKey, spend] = await Promise.all([
      json("/admin/keys", { team }),
      json("/admin/reports/costs", { ...p, group_by: "key", team }),
      json("/admin/spend", { team, limit: 50 }),
    ]);
    $("detail-team").textContent = team;
    const perKey = Object.fromEntries(byKey.rows.map((r) => [r.key, r]));
    fillTable("detail-keys", keys.data, (k) => [k.id, k.name, k.key_hint,
      perKey[k.id]?.requests ?? 0, perKey[k.id]?.cost_usd ?? "0", k.created_at,
      k.revoked_at ?? ""]);
    fillTable("detail-requests", spend.data, (r) => [r.created_at.slice(0, 19).replace("T", " "), r.request_id, r.key_id,
      r.requested_model, r.deployment, r.tier, r.reasoning_demand?.toFixed(3) ?? "",
      r.cache_hit ? "hit" : "miss", r.status, `${r.prompt_tokens}/${r.completion_tokens}`,
      r.cost_usd]);
    $("team-detail").hidden = false;
    $("team-detail").scrollIntoView();
  }

  async function downloadCsv() {
    const response = await api("/admin/reports/costs",
      { ...period(), group_by: $("csv-group-by").value, format: "csv" });
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `rightsize-costs-${period().start}-${period().end}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function guarded(task) {
    $("load-error").hidden = true;
    try {
      await task();
    } catch (error) {
      if (error instanceof Unauthorized) return logout("The master key was refused.");
      $("load-error").textContent = error.message;
      $("load-error").hidden = false;
    }
  }

  async function refresh() {
    await guarded(async () => {
      const teams = (await json("/admin/teams")).data;
      await Promise.all([loadBudgets(teams), loadCosts(), loadRouting(), loadSavings(),
        loadEngines()]);
      if (selectedTeam) await drillDown(selectedTeam);
    });
    document.body.dataset.loaded = String(Date.now());
  }

  function show(loggedIn) {
    $("login-view").hidden = loggedIn;
    $("dashboard").hidden = !loggedIn;
    $("session").hidden = !loggedIn;
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    Object.values(charts).forEach((c) => c.destroy());
    show(false);
    $("login-error").textContent = message || "";
    $("login-error").hidden = !message;
  }

  async function login(event) {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("master-key").value);
    $("master-key").value = "";
    try {
      await api("/admin/teams");
    } catch (error) {
      return logout(error instanceof Unauthorized ? "Incorrect master key." : error.message);
    }
    $("login-error").hidden = true;
    show(true);
    await refresh();
  }

  function start() {
    const today = new Date();
    $("end").value = isoDay(today);
    $("start").value = isoDay(new Date(today.getTime() - 29 * 86400 * 1000));
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout());
    $("refresh").addEventListener("click", refresh);
    $("download-csv").addEventListener("click", () => guarded(downloadCsv));
    if (sessionStorage.getItem(KEY)) {
      show(true);
      refresh();
    }
  }

  start();
})();
