/**
 * The dashboard's page: one HTML document with its own script and style, part of the package. Charts
 * are drawn by uPlot (served by the dashboard from the installed package at /assets/). The page listens
 * to /events (server-sent events; the browser reconnects by itself) and redraws from each state.
 *
 * Element ids and data attributes are part of its contract with test/dashboard.test.ts:
 * #protected[data-protected], #arbiter[data-ok], #lag-value, #bw-value, #held-value, #nodes rows
 * [data-role], #timeline .episode[data-kind] .phase[data-phase][data-state].
 */
const STYLE = String.raw`
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --mute: #6e7781; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { display: flex; align-items: center; gap: 16px; padding: 12px 20px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { font-size: 18px; margin: 0; }
.badge { padding: 4px 10px; border-radius: 12px; font-weight: 600; color: #fff; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); } .badge.warn { background: var(--warn); }
.meta { color: var(--mute); }
#arbiter-banner { display: none; padding: 8px 20px; background: #ffebe9; color: var(--bad); border-bottom: 1px solid #ffcecb; font-weight: 600; }
#arbiter-banner.show { display: block; }
main { padding: 12px 20px; display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
section { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
section.wide { grid-column: 1 / span 2; }
section h2 { font-size: 14px; margin: 0 0 8px; color: var(--mute); text-transform: uppercase; letter-spacing: .04em; }
.figures { display: flex; gap: 24px; }
.figure .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.figure .k { color: var(--mute); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--mute); font-weight: 500; font-size: 12px; }
td.role { font-weight: 600; }
tr[data-role="primary"] td.role { color: var(--ok); } tr[data-role="backup"] td.role { color: #0969da; }
tr[data-role="standby"] td.role { color: var(--mute); } tr[data-role="unreachable"] td { color: var(--bad); }
.episode { margin: 8px 0 14px; }
.episode .title { font-weight: 600; margin-bottom: 6px; }
.steps { display: flex; gap: 4px; align-items: stretch; flex-wrap: wrap; }
.phase { flex: 1 1 0; min-width: 110px; border: 1px solid var(--line); border-radius: 4px; padding: 4px 6px; background: var(--bg); }
.phase .n { font-weight: 600; font-size: 12px; }
.phase .t { font-size: 11px; color: var(--mute); font-variant-numeric: tabular-nums; }
.phase[data-state="done"] { border-color: var(--ok); background: #dafbe1; }
.phase[data-state="pending"] { border-style: dashed; color: var(--mute); }
.phase[data-state="skipped"] { opacity: .5; }
.bar { position: relative; height: 14px; margin-top: 6px; background: var(--bg); border-radius: 3px; }
.bar span { position: absolute; top: 0; height: 14px; border-radius: 2px; }
.notes { color: var(--warn); font-size: 12px; margin-top: 4px; }
.empty { color: var(--mute); }
`;

const SCRIPT = String.raw`
(function () {
  var PHASES = [
    ['silence-detected', 'silence detected'], ['drained', 'drain'], ['claim-won', 'claim won'], ['live', 'live'],
    ['standby-recruited', 'standby recruited'], ['snapshot-streamed', 'snapshot streamed'], ['armed', 'armed']
  ];
  var COLORS = { 'silence-detected': '#cf222e', 'drained': '#bc4c00', 'claim-won': '#9a6700', 'live': '#1a7f37', 'standby-recruited': '#0969da', 'snapshot-streamed': '#8250df', 'armed': '#1a7f37' };
  function $(id) { return document.getElementById(id); }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]; }); }
  function fmtBytes(b) { if (b == null) return '–'; if (b < 1024) return b.toFixed(0) + ' B/s'; if (b < 1048576) return (b / 1024).toFixed(1) + ' KiB/s'; return (b / 1048576).toFixed(2) + ' MiB/s'; }
  function fmtMs(v) { return v == null ? '–' : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + ' ms'; }
  function clock(ms) { var d = new Date(ms); return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0'); }

  function chart(el, label, stroke, fmt) {
    var opts = {
      width: el.clientWidth || 500, height: 180,
      series: [{}, { label: label, stroke: stroke, width: 2, fill: stroke + '22', value: function (u, v) { return v == null ? '–' : fmt(v); } }],
      axes: [{}, { size: 84, values: function (u, vals) { return vals.map(function (v) { return v == null ? '' : fmt(v); }); } }],
      scales: { x: { time: true } }, cursor: { drag: { x: false, y: false } }, legend: { live: false }
    };
    return new uPlot(opts, [[], []], el);
  }
  var lagChart = chart($('lag-chart'), 'execution lag', '#0969da', function (v) { return fmtMs(v); });
  var bwChart = chart($('bw-chart'), 'log bandwidth', '#8250df', function (v) { return fmtBytes(v); });
  window.addEventListener('resize', function () {
    lagChart.setSize({ width: $('lag-chart').clientWidth, height: 180 });
    bwChart.setSize({ width: $('bw-chart').clientWidth, height: 180 });
  });

  function episodes(events) {
    var eps = [], cur = null;
    events.forEach(function (e) {
      if (e.kind === 'silence-detected') { cur = { kind: 'failover', side: e.side, ev: {}, notes: [] }; eps.push(cur); }
      else if (e.kind === 'standby-recruited' && (cur === null || cur.ev['armed'])) { cur = { kind: 'rereplication', side: e.side, ev: {}, notes: [] }; eps.push(cur); }
      if (cur === null) return;
      if (e.kind === 'join-failed') { cur.notes.push('join failed: ' + e.detail); delete cur.ev['standby-recruited']; delete cur.ev['snapshot-streamed']; return; }
      if (e.kind === 'claim-lost' || e.kind === 'halted') { cur.notes.push(e.kind + (e.detail ? ': ' + e.detail : '')); return; }
      cur.ev[e.kind] = e;
    });
    return eps;
  }

  function drawTimeline(events) {
    var eps = episodes(events);
    if (eps.length === 0) { $('timeline').innerHTML = '<div class="empty">no failover or re-replication yet</div>'; return; }
    var html = '';
    eps.slice(-4).reverse().forEach(function (ep, i) {
      var list = ep.kind === 'failover' ? PHASES : PHASES.slice(4);
      var times = [];
      list.forEach(function (p) { var e = ep.ev[p[0]]; if (e) { times.push(e.atMs); if (e.phaseMs != null) times.push(e.atMs - e.phaseMs); } });
      var t0 = times.length ? Math.min.apply(null, times) : 0, t1 = times.length ? Math.max.apply(null, times) : 0;
      var first = ep.ev[list[0][0]];
      var title = ep.kind === 'failover'
        ? 'Failover' + (first ? ' at ' + clock(first.atMs) + ' (' + (ep.side === 'backup' ? 'the primary failed; the backup took over' : 'the backup failed; the primary went on alone') + ')' : '')
        : 'Re-replication' + (first ? ' at ' + clock(first.atMs) : '');
      var total = t1 > t0 ? ' — ' + (t1 - t0).toFixed(0) + ' ms from first to last step' : '';
      html += '<div class="episode" data-kind="' + ep.kind + '" data-index="' + i + '"><div class="title">' + esc(title + total) + '</div><div class="steps">';
      list.forEach(function (p) {
        var e = ep.ev[p[0]];
        var state = e ? 'done' : (ep.kind === 'failover' && ep.side === 'primary' && p[0] === 'drained' ? 'skipped' : 'pending');
        html += '<div class="phase" data-phase="' + p[0] + '" data-state="' + state + '"><div class="n">' + esc(p[1]) + '</div>' +
          '<div class="t">' + (e ? clock(e.atMs) + (e.phaseMs != null ? ' · ' + e.phaseMs + ' ms' : '') : state === 'skipped' ? 'not needed' : 'waiting') + '</div>' +
          (e && e.detail ? '<div class="t" title="' + esc(e.detail) + '">' + esc(String(e.detail).slice(0, 40)) + '</div>' : '') + '</div>';
      });
      html += '</div><div class="bar">';
      var span = Math.max(1, t1 - t0);
      list.forEach(function (p, k) {
        var e = ep.ev[p[0]]; if (!e) return;
        var start = e.phaseMs != null ? e.atMs - e.phaseMs : e.atMs;
        var left = 100 * (start - t0) / span, width = Math.max(0.8, 100 * (e.atMs - start) / span);
        html += '<span title="' + esc(p[1]) + '" style="left:' + Math.min(99, left).toFixed(2) + '%;width:' + Math.min(100 - Math.min(99, left), width).toFixed(2) + '%;background:' + COLORS[p[0]] + '"></span>';
      });
      html += '</div>' + (ep.notes.length ? '<div class="notes">' + ep.notes.map(esc).join('<br>') + '</div>' : '') + '</div>';
    });
    $('timeline').innerHTML = html;
  }

  function render(s) {
    $('vm').textContent = s.vm; document.title = 'ftvm · ' + s.vm;
    var p = $('protected');
    p.dataset.protected = String(s.protected);
    p.textContent = s.protected ? 'PROTECTED' : (s.primary ? 'NOT PROTECTED' : 'NO PRIMARY');
    p.className = 'badge ' + (s.protected ? 'ok' : s.primary ? 'warn' : 'bad');
    var a = $('arbiter'); a.dataset.ok = String(s.arbiter.ok);
    a.textContent = s.arbiter.ok ? (s.arbiter.record ? 'epoch ' + s.arbiter.record.epoch + ' · owner ' + s.arbiter.record.owner : 'no record for this VM') : 'arbiter unreachable';
    var banner = $('arbiter-banner');
    banner.className = s.arbiter.ok ? '' : 'show';
    banner.textContent = s.arbiter.ok ? '' : 'The arbiter at ' + s.arbiter.url + ' is down or unreachable: ' + (s.arbiter.error || '') + ' — retrying; nothing can fail over until it answers.';
    $('lag-value').textContent = fmtMs(s.lagMs);
    $('bw-value').textContent = fmtBytes(s.logBytesPerSec);
    $('held-value').textContent = s.outputsHeld == null ? '–' : String(s.outputsHeld);
    $('updated').textContent = 'updated ' + clock(s.atMs);
    var rows = s.nodes.map(function (n) {
      var st = n.status || {};
      var role = n.ok ? String(st.role) : 'unreachable';
      var peer = role === 'primary' ? (st.backup || '') : role === 'backup' ? 'primary ' + (st.primary || '') + (st.phase ? ' · ' + st.phase : '') : role === 'standby' ? (st.pool || '') : (n.error || '');
      return '<tr data-role="' + esc(role) + '" data-control="' + esc(n.control) + '"><td class="role">' + esc(role) + (n.control === s.primary ? ' ★' : '') + '</td><td>' + esc(n.control) + '</td><td>' + (n.ok ? esc(st.epoch) : '') + '</td><td>' +
        (n.ok && st.instructionNumber != null ? Number(st.instructionNumber).toLocaleString() : '') + '</td><td>' + (role === 'primary' ? fmtMs(st.lagMs) : '') + '</td><td>' + (role === 'primary' ? fmtBytes(st.logBytesPerSec) : '') + '</td><td>' +
        (role === 'primary' ? esc(st.outputsHeld) : '') + '</td><td>' + esc(peer) + '</td></tr>';
    });
    $('nodes').innerHTML = rows.join('') || '<tr><td colspan="8" class="empty">no nodes</td></tr>';
    $('pool').innerHTML = s.arbiter.standbys.length ? s.arbiter.standbys.map(function (sb) {
      return '<tr><td>' + esc(sb.hostId) + '</td><td>' + esc(sb.channel) + '</td><td>' + esc(sb.state) + (sb.owner ? ' by ' + esc(sb.owner) + ' (epoch ' + esc(sb.epoch) + ')' : '') + '</td></tr>';
    }).join('') : '<tr><td colspan="3" class="empty">' + (s.arbiter.ok ? 'no standby in the pool' : 'unknown: the arbiter is unreachable') + '</td></tr>';
    var xs = [], lag = [], bw = [];
    s.samples.forEach(function (p) { xs.push(p[0]); lag.push(p[1]); bw.push(p[2]); });
    lagChart.setData([xs, lag]);
    bwChart.setData([xs, bw]);
    drawTimeline(s.timeline);
  }

  var src = new EventSource('events');
  src.onmessage = function (m) { $('conn').textContent = ''; render(JSON.parse(m.data)); };
  src.onerror = function () { $('conn').textContent = 'dashboard server unreachable; reconnecting…'; };
})();
`;

export const PAGE_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ftvm dashboard</title>
<link rel="stylesheet" href="assets/uPlot.min.css">
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>ftvm · <span id="vm"></span></h1>
  <span id="protected" class="badge bad" data-protected="false">…</span>
  <span class="meta">arbiter: <span id="arbiter" data-ok="false">…</span></span>
  <span class="meta" id="updated"></span>
  <span class="meta" id="conn"></span>
</header>
<div id="arbiter-banner"></div>
<main>
  <section>
    <h2>Now</h2>
    <div class="figures">
      <div class="figure"><div class="v" id="lag-value">–</div><div class="k">execution lag</div></div>
      <div class="figure"><div class="v" id="bw-value">–</div><div class="k">log bandwidth</div></div>
      <div class="figure"><div class="v" id="held-value">–</div><div class="k">outputs held</div></div>
    </div>
  </section>
  <section>
    <h2>Standby pool (arbiter)</h2>
    <table><thead><tr><th>host</th><th>channel</th><th>state</th></tr></thead><tbody id="pool"></tbody></table>
  </section>
  <section class="wide">
    <h2>Nodes</h2>
    <table><thead><tr><th>role</th><th>control</th><th>epoch</th><th>instruction</th><th>lag</th><th>log bandwidth</th><th>held</th><th>peer</th></tr></thead><tbody id="nodes"></tbody></table>
  </section>
  <section><h2>Execution lag</h2><div id="lag-chart"></div></section>
  <section><h2>Log bandwidth</h2><div id="bw-chart"></div></section>
  <section class="wide"><h2>Failovers and re-replications</h2><div id="timeline"></div></section>
</main>
<script src="assets/uPlot.iife.min.js"></script>
<script>
${SCRIPT}
</script>
</body>
</html>
`;
