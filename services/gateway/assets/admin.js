// The admin console. Everything comes from the gateway that served it (no
// CDN, nothing fetched from elsewhere): status, numbers, alerts, signers
// and audit over HTTP; the last ledger events on load, then every event
// live over the WebSocket. Changes (rotate, roll back, revoke, grace) send a
// fresh one-time CSRF token and the admin credential. Errors are shown in
// place, never swallowed. Charts are SVG drawn here.
'use strict';

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const state = {
  health: null,
  metrics: null,
  thresholds: null,
  markers: [],          // lifecycle events on the chart's time axis
  filter: { thread: '', kind: '' },
  nextBefore: null,     // where "older events" goes on
  agreed: new Map(),    // witness → {size, agrees} from the last verification
};
// Kinds a ledger row can have, for the feed's filter (tes_proto::event::kind).
const KINDS = ['key_provisioned', 'key_rotate', 'key_rollback', 'key_retired', 'key_revoked',
  'key_fallback', 'key_expiry_set', 'grace_changed', 'rotation_failed', 'signature_generated',
  'signature_verified', 'version_bump', 'alert', 'resolved', 'archive_batch', 'bundle_archived',
  'rejected'];
const MARKED = ['key_rotate', 'key_rollback', 'key_retired', 'key_revoked'];
// One colour per version, in order; v5 and on reuse them.
const VERSION_COLOURS = ['#9D4EDD', '#1E90FF', '#2ECC71', '#FF8C00'];
const colourOf = (version) => VERSION_COLOURS[(parseInt(String(version).slice(1), 10) - 1) % VERSION_COLOURS.length];

async function getJSON(url, init) {
  const response = await fetch(url, Object.assign({ cache: 'no-store' }, init || {}));
  const body = await response.text();
  if (!response.ok) throw new Error(body || response.statusText);
  return JSON.parse(body);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const ms = (t) => (typeof t === 'number' ? t : Date.parse(t));
function clock(t) {
  const d = new Date(ms(t));
  return d.toISOString().slice(11, 19);
}
function when(t) {
  const d = new Date(ms(t));
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}
function age(msAgo) {
  const s = Math.max(0, Math.round(msAgo / 1000));
  if (s < 120) return s + ' s ago';
  if (s < 7200) return Math.round(s / 60) + ' min ago';
  if (s < 172800) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}
function span(msLong) {
  const h = msLong / 3600000;
  if (h >= 48) return Math.round(h / 24) + ' d';
  if (h >= 1) return Math.round(h) + ' h';
  return Math.round(msLong / 60000) + ' min';
}

function showResult(id, text, ok) {
  const r = $(id);
  r.textContent = text;
  r.className = ok ? 'ok' : 'error';
}

// ---- status, keys, writers -------------------------------------------------

function share(version) {
  if (!state.metrics) return '—';
  const w = state.metrics.window;
  const total = w.usage.reduce((n, u) => n + u.operations, 0);
  const mine = (w.usage.find((u) => u.version === version) || { operations: 0 }).operations;
  return total ? (100 * mine / total).toFixed(1) + '%' : '—';
}

function renderKeys() {
  const body = $('keys').querySelector('tbody');
  body.replaceChildren();
  if (!state.health) return;
  for (const k of state.health.keys) {
    const counts = state.metrics && state.metrics.versions.find((v) => v.version === k.version);
    body.append(el('tr', { 'data-version': k.version },
      el('td', {}, el('strong', {}, k.version)),
      el('td', {}, el('span', { class: 'pill state-' + k.status }, k.status)),
      el('td', { class: 'num' }, String(counts ? counts.signatures : k.signatures)),
      el('td', { class: 'num' }, share(k.version)),
      el('td', {}, el('code', {}, k.fingerprint))));
  }
}

function renderHealth(h) {
  state.health = h;
  $('active').textContent = h.activeVersion || 'none';
  $('rotated').textContent = h.rotationTimestamp ? when(h.rotationTimestamp) : '—';
  $('last-sig').textContent = h.lastSigVersion || '—';
  $('head').textContent = 'seq ' + h.headSeq;
  const bus = $('bus');
  bus.textContent = h.bus.transport + (h.bus.connected ? ' · connected' : ' · disconnected');
  bus.className = 'pill ' + (h.bus.connected ? 'ok' : 'bad');
  renderKeys();
  renderTimeline();
}

// Who writes the ledger (the lease holder) and who stands by, with how far
// behind the writer's head each standby is (only the health endpoint knows).
function renderWriters(h) {
  if (h.writer === undefined) {
    $('writers-note').textContent = h.bus && h.bus.transport === 'nats'
      ? 'The lease is not readable here.'
      : 'One process writes the ledger (' + (h.bus ? h.bus.transport : 'embedded') + ').';
    return;
  }
  const body = $('writers').querySelector('tbody');
  body.replaceChildren();
  if (h.writer) {
    const left = Math.max(0, (h.writer.leaseExpiresAt - Date.now()) / 1000);
    body.append(el('tr', { class: 'writer' },
      el('td', {}, el('span', { class: 'pill ok' }, 'writer')),
      el('td', { class: 'wrap' }, el('code', {}, h.writer.holder)),
      el('td', { class: 'num' }, 'lease ' + left.toFixed(1) + ' s')));
  }
  for (const s of h.standbys || []) {
    body.append(el('tr', { class: 'standby' },
      el('td', {}, el('span', { class: 'pill' }, 'standby')),
      el('td', { class: 'wrap' }, el('code', {}, s.holder)),
      el('td', { class: 'num' }, 'seq ' + s.headSeq + ' · ' + s.lag + ' behind')));
  }
  $('writers-note').textContent = h.writer
    ? (h.standbys && h.standbys.length ? 'A standby takes over when the writer\'s lease lapses.' : 'No standby: nothing takes over if this writer is lost.')
    : 'No writer holds the lease: signing waits for one.';
}

function renderMetrics(m) {
  state.metrics = m;
  const d = m.migration && m.migration.firstSignatureAt
    ? (ms(m.migration.firstSignatureAt) - ms(m.migration.startedAt)) + ' ms (' + m.migration.from + ' → ' + m.migration.to + ')'
    : (m.migration ? 'waiting for the first ' + m.migration.to + ' signature' : '—');
  $('duration').textContent = d;
  renderKeys();
  renderChart();
}

function renderAlerts(a) {
  state.thresholds = a.thresholds || null;
  const list = $('alerts');
  list.replaceChildren();
  if (!a.open.length) list.append(el('li', { class: 'muted' }, 'No open alerts.'));
  for (const o of a.open) {
    list.append(el('li', { class: 'alert' }, el('strong', {}, o.alert.rule), o.alert.message));
  }
  renderChart();
}

// ---- the migration chart ---------------------------------------------------

const CHART = { h: 240, left: 40, right: 12, top: 12, bottom: 26 };
// Drawn in the container's own pixels, so text stays legible from a phone
// to a wide screen; redrawn when the width changes.
const widthOf = (box) => Math.max(280, Math.round(box.getBoundingClientRect().width) || 760);

// Each version's share of the signing requests in each bucket of the
// window, as lines; lifecycle events as dashed verticals; the migration
// rules' thresholds as dashed horizontals from where they apply.
function renderChart() {
  const box = $('chart');
  const legend = $('chart-legend');
  const m = state.metrics;
  box.replaceChildren();
  legend.replaceChildren();
  if (!m || !m.series) {
    box.append(el('p', { class: 'empty' }, 'Waiting for Monitoring…'));
    return;
  }
  const t1 = ms(m.at);
  const bucket = m.series.bucketMs;
  // The window, narrowed to where there is traffic (at least 30 buckets),
  // so a rotation minutes old is not a sliver at the edge of an hour.
  const first = m.series.buckets.length ? ms(m.series.buckets[0].start) : t1;
  const t0 = Math.max(t1 - m.window.spanMs, Math.min(first - bucket, t1 - 30 * bucket));
  const { h, left, right, top, bottom } = CHART;
  const w = widthOf(box);
  const x = (t) => left + (w - left - right) * Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
  const y = (pct) => top + (h - top - bottom) * (1 - pct / 100);
  const versions = new Set();
  for (const b of m.series.buckets) for (const u of b.usage) versions.add(u.version);
  const sorted = [...versions].sort((a, b) => parseInt(a.slice(1), 10) - parseInt(b.slice(1), 10));
  const last = m.series.buckets[m.series.buckets.length - 1];
  const lastShare = (v) => {
    if (!last) return null;
    const total = last.usage.reduce((n, u) => n + u.operations, 0);
    const mine = (last.usage.find((u) => u.version === v) || { operations: 0 }).operations;
    return total ? 100 * mine / total : null;
  };
  const summary = sorted.length
    ? sorted.map((v) => v + ' ' + (lastShare(v) === null ? '—' : lastShare(v).toFixed(0) + '%')).join(', ') + ' of signing requests in the newest ' + span(bucket)
    : 'no signing requests in the window';
  const root = svg('svg', { viewBox: `0 0 ${w} ${h}`, role: 'img', 'aria-labelledby': 'chart-svg-title chart-svg-desc' });
  root.append(svg('title', { id: 'chart-svg-title' }, 'Share of signing requests per key version over the last ' + span(t1 - t0)));
  root.append(svg('desc', { id: 'chart-svg-desc' }, summary));
  for (const pct of [0, 25, 50, 75, 100]) {
    root.append(svg('line', { class: 'grid', x1: left, x2: w - right, y1: y(pct), y2: y(pct) }));
    root.append(svg('text', { x: left - 6, y: y(pct) + 4, 'text-anchor': 'end' }, pct + '%'));
  }
  for (const [frac, anchor] of [[0, 'start'], [0.5, 'middle'], [1, 'end']]) {
    const t = t0 + frac * (t1 - t0);
    root.append(svg('text', { x: x(t), y: h - 8, 'text-anchor': anchor }, frac === 1 ? 'now' : clock(t)));
  }
  // Thresholds of the migration in progress (from its rotation + after).
  const mig = m.migration;
  const th = state.thresholds;
  if (mig && th) {
    const rules = [
      [th.newVersionUsageBelow, mig.to, 'below'],
      [th.oldVersionUsageAbove, mig.from, 'above'],
    ];
    for (const [rule, version, side] of rules) {
      if (!rule) continue;
      const pct = rule.thresholdBp / 100;
      const from = ms(mig.startedAt) + rule.afterMs;
      const pending = from > t1;
      const x1 = pending ? left : x(Math.max(from, t0));
      const line = svg('line', {
        class: 'threshold' + (pending ? ' pending' : ''), x1, x2: w - right, y1: y(pct), y2: y(pct),
        stroke: colourOf(version), 'data-rule': side,
      });
      line.append(svg('title', {}, `alert if ${version} is ${side} ${pct}% from ${when(from)} (${span(rule.afterMs)} after the rotation)`));
      root.append(line);
      root.append(svg('text', { x: w - right, y: y(pct) - 4, 'text-anchor': 'end' },
        `${version} ${side === 'below' ? '<' : '>'} ${pct}% alerts ${pending ? 'from +' + span(rule.afterMs) : 'now'}`));
    }
  }
  // Lifecycle markers inside the window.
  for (const mk of state.markers) {
    const t = ms(mk.time);
    if (t < t0 || t > t1) continue;
    const line = svg('line', { class: 'marker', x1: x(t), x2: x(t), y1: top, y2: h - bottom, 'data-kind': mk.kind });
    line.append(svg('title', {}, mk.text + ' at ' + when(t)));
    root.append(line);
    root.append(svg('text', { x: x(t) + 3, y: top + 10 }, mk.short));
  }
  // One line per version; a gap where a bucket had no requests.
  for (const v of sorted) {
    let points = [];
    const flush = () => {
      if (points.length === 1) points.push([points[0][0] + 2, points[0][1]]);
      if (points.length) {
        root.append(svg('polyline', {
          class: 'series', stroke: colourOf(v), 'data-version': v,
          points: points.map((p) => p.join(',')).join(' '),
        }));
      }
      points = [];
    };
    let previous = null;
    for (const b of m.series.buckets) {
      const start = ms(b.start);
      if (previous !== null && start - previous > bucket) flush();
      previous = start;
      const total = b.usage.reduce((n, u) => n + u.operations, 0);
      const mine = (b.usage.find((u) => u.version === v) || { operations: 0 }).operations;
      points.push([x(Math.min(t1, start + bucket / 2)).toFixed(1), y(total ? 100 * mine / total : 0).toFixed(1)]);
    }
    flush();
    const s = lastShare(v);
    legend.append(el('li', { 'data-version': v },
      el('span', { class: 'swatch', 'aria-hidden': 'true' }),
      v + ': ' + (s === null ? '—' : s.toFixed(1) + '%')));
    legend.lastChild.firstChild.style.background = colourOf(v);
  }
  if (!sorted.length) legend.append(el('li', { class: 'muted' }, 'No signing requests in the last ' + span(m.window.spanMs) + '.'));
  box.append(root);
}

function addMarker(event) {
  const kind = Object.keys(event.body)[0];
  if (!MARKED.includes(kind)) return;
  if (state.markers.some((mk) => mk.id === event.id)) return;
  const b = event.body[kind];
  const words = {
    key_rotate: ['rotate ' + (b.from || '—') + '→' + b.to, 'rotation'],
    key_rollback: ['rollback ' + b.from + '→' + b.to, 'rollback'],
    key_retired: ['retired ' + b.version, 'retirement'],
    key_revoked: ['revoked ' + b.version, 'revocation'],
  }[kind];
  state.markers.push({ id: event.id, kind, time: event.time, short: words[0], text: words[1] + ': ' + words[0] });
  state.markers.sort((a, b2) => ms(a.time) - ms(b2.time));
  if (state.markers.length > 100) state.markers.shift();
}

// ---- the key timeline ------------------------------------------------------

// Every version as a bar across time: provisioned, active, verifying (to
// its verify-until, drawn ahead of now while it runs), retired or revoked.
function renderTimeline() {
  const box = $('timeline');
  const list = $('timeline-list');
  box.replaceChildren();
  list.replaceChildren();
  const h = state.health;
  if (!h || !h.keys.length) {
    box.append(el('p', { class: 'empty' }, h ? 'No key version yet.' : 'Waiting for Version Management…'));
    return;
  }
  const now = Date.now();
  const keys = h.keys;
  const times = [now];
  for (const k of keys) {
    for (const t of [k.provisionedAt, k.activatedAt, k.graceUntil, k.retiredAt, k.revokedAt]) if (t) times.push(ms(t));
  }
  // From the first provisioning to a little past now: what is ahead (a
  // verify-until a week out) runs off the right edge with its date, so
  // the past stays readable.
  let t0 = Math.min(...times);
  if (now - t0 < 60000) t0 = now - 60000;
  t0 -= (now - t0) * 0.03;
  const t1 = now + (now - t0) * 0.25;
  const row = 26;
  const left = 44, right = 12, top = 8;
  const w = widthOf(box);
  const height = top + row * keys.length + 26;
  const x = (t) => left + (w - left - right) * Math.min(1, (ms(t) - t0) / (t1 - t0));
  const root = svg('svg', { viewBox: `0 0 ${w} ${height}`, role: 'img', 'aria-labelledby': 'timeline-svg-title' });
  root.append(svg('title', { id: 'timeline-svg-title' }, 'Key versions over time; the list below says the same in words'));
  keys.forEach((k, i) => {
    const yTop = top + i * row + 4;
    const bar = (cls, from, to, label) => {
      if (!from || !to || ms(to) <= ms(from)) return;
      const r = svg('rect', { class: 'seg-' + cls, x: x(from), y: yTop, width: Math.max(2, x(to) - x(from)), height: row - 10, rx: 3 });
      r.append(svg('title', {}, `${k.version} ${label}: ${when(from)} → ${ms(to) === now ? 'now' : when(to)}`));
      root.append(r);
    };
    root.append(svg('text', { x: 4, y: yTop + 12 }, k.version));
    const activeFrom = k.status === 'active' ? (k.statusSince || k.activatedAt) : k.activatedAt;
    const ended = k.status === 'retired' ? k.retiredAt : (k.status === 'revoked' ? k.revokedAt : null);
    bar('provisioned', k.provisionedAt, k.activatedAt || ended || now, 'provisioned');
    if (k.activatedAt) {
      const activeTo = k.status === 'active' ? now : (k.deactivatedAt || ended || now);
      bar('active', activeFrom, activeTo, 'active');
      if (k.deactivatedAt && k.status !== 'active') {
        const verifyTo = k.status === 'verifying' ? now : (ended || now);
        bar('verifying', k.deactivatedAt, verifyTo, 'verifying');
        if (k.status === 'verifying' && k.graceUntil && ms(k.graceUntil) > now) {
          bar('grace', now, k.graceUntil, 'verifies until');
          if (ms(k.graceUntil) > t1 && w >= 600) {
            root.append(svg('text', { x: w - right - 2, y: yTop + 12, 'text-anchor': 'end' }, 'until ' + when(k.graceUntil) + ' →'));
          }
        }
      }
    }
    if (ended) {
      const m = svg('rect', { class: 'seg-' + k.status, x: x(ended) - 2, y: yTop - 2, width: 4, height: row - 6 });
      m.append(svg('title', {}, `${k.version} ${k.status} at ${when(ended)}`));
      root.append(m);
    }
    let words = k.version + ' — ' + k.status;
    if (k.status === 'active') words += ' since ' + when(activeFrom || now);
    if (k.status === 'verifying') words += k.graceUntil ? ' until ' + when(k.graceUntil) : ' (no end set)';
    if (k.status === 'provisioned' && k.provisionedAt) words += ' since ' + when(k.provisionedAt);
    if (ended) words += ' at ' + when(ended) + (k.revokedReason ? ' (' + k.revokedReason + ')' : '');
    list.append(el('li', { 'data-version': k.version, 'data-status': k.status }, words));
  });
  root.append(svg('line', { class: 'now', x1: x(now), x2: x(now), y1: 2, y2: height - 22 }));
  root.append(svg('text', { x: x(now), y: height - 8, 'text-anchor': 'middle' }, 'now'));
  root.append(svg('text', { x: left, y: height - 8 }, when(t0)));
  box.append(root);
}

// ---- signers, audit --------------------------------------------------------

function renderSigners(r) {
  const body = $('signers').querySelector('tbody');
  body.replaceChildren();
  for (const s of r.signers) {
    const holds = s.held.map((k) => k.version + ' ' + k.fingerprint.slice(0, 8)).join(', ') || 'nothing';
    body.append(el('tr', { 'data-signer': s.name },
      el('td', {}, el('strong', {}, s.name)),
      el('td', { class: 'wrap' }, el('code', {}, holds)),
      el('td', { class: 'num' }, age(s.heardMsAgo))));
  }
  if (!r.signers.length) body.append(el('tr', {}, el('td', { colspan: '3', class: 'muted' }, 'No signer heard from.')));
  const gate = $('gate');
  if (!r.next) {
    gate.textContent = 'Nothing to promote: no version is provisioned after the active one.';
    gate.className = 'gate muted';
  } else if (!r.refusal) {
    gate.textContent = r.next + ' can be promoted: every live signer holds it.';
    gate.className = 'gate ok';
  } else {
    gate.textContent = r.next + ' cannot be promoted' + (r.lacking.length ? ' — ' + r.lacking.join(', ') + ' lack' + (r.lacking.length === 1 ? 's' : '') + ' it' : '') + ': ' + r.refusal;
    gate.className = 'gate error';
  }
}

function renderAudit(a) {
  if (a.checkpoint) {
    $('checkpoint').textContent = 'tree size ' + a.checkpoint.size + ' (ledger head ' + a.headSeq + ')';
    $('checkpoint-root').textContent = a.checkpoint.root;
    $('checkpoint-age').textContent = a.checkpoint.signedAt ? age(Date.now() - ms(a.checkpoint.signedAt)) : 'before this writer started';
  } else {
    $('checkpoint').textContent = a.vkey ? 'none signed yet (ledger head ' + a.headSeq + ')' : 'not signed here: no audit key (TES_AUDIT_KEY_FILE)';
    $('checkpoint-root').textContent = '—';
    $('checkpoint-age').textContent = '—';
  }
  const body = $('witnesses').querySelector('tbody');
  body.replaceChildren();
  for (const w of a.witnesses) {
    // A verification's verdict holds while the witness still holds the
    // checkpoint it was given for (later views are not walked again).
    if (a.verification) state.agreed.set(w.name, { size: w.size, agrees: w.agrees });
    const earlier = state.agreed.get(w.name);
    const verdict = w.agrees !== null ? w.agrees : (earlier && earlier.size === w.size ? earlier.agrees : null);
    const agrees = verdict === null ? (w.error ? 'error' : 'not compared') : (verdict ? 'yes' : 'NO');
    body.append(el('tr', { 'data-agrees': String(verdict) },
      el('td', { class: 'wrap' }, w.name + (w.error ? ' — ' + w.error : '')),
      el('td', { class: 'num' }, w.size === null ? 'nothing' : 'size ' + w.size),
      el('td', {}, el('span', { class: 'pill ' + (verdict === true ? 'ok' : (verdict === false ? 'bad' : '')) }, agrees))));
  }
  if (!a.witnesses.length) body.append(el('tr', {}, el('td', { colspan: '3', class: 'muted' }, 'No witness configured.')));
  const v = a.verification;
  if (v) {
    if (v.ok) {
      showResult('verify-result', `Chain verified: ${v.events} events, every hash and link checked; ${v.checkpointsAgreed} signed checkpoint(s) agree (${v.tookMs} ms).`, true);
    } else {
      showResult('verify-result', `Verification FAILED at seq ${v.firstBadSeq}: ${v.problem}`, false);
    }
  }
}

async function verify() {
  const button = $('verify');
  button.disabled = true;
  showResult('verify-result', 'Verifying the whole chain…', true);
  try {
    renderAudit(await getJSON('/api/audit/verify', { method: 'POST' }));
  } catch (e) {
    showResult('verify-result', 'Verification could not run: ' + e.message, false);
  } finally {
    button.disabled = false;
  }
}

async function refresh() {
  try { const h = await getJSON('/api/dev/version-ws/health'); renderHealth(h); renderWriters(h); }
  catch (e) { showResult('result', 'Version Management: ' + e.message, false); }
  try { renderMetrics(await getJSON('/api/metrics')); }
  catch (e) { $('metrics-note').textContent = 'Monitoring: ' + e.message; }
  try { renderAlerts(await getJSON('/api/alerts')); }
  catch (e) { $('alerts').replaceChildren(el('li', { class: 'muted' }, 'Alert: ' + e.message)); }
  try { renderSigners(await getJSON('/api/signers')); }
  catch (e) { $('gate').textContent = 'Supervisor: ' + e.message; $('gate').className = 'gate error'; }
  try { renderAudit(await getJSON('/api/audit')); }
  catch (e) { $('checkpoint').textContent = 'Audit: ' + e.message; }
}

// ---- the feed --------------------------------------------------------------

function detail(kind, b) {
  switch (kind) {
    case 'key_rotate': return (b.from || '—') + ' → ' + b.to + (b.forced ? ' (forced)' : '') + ' by ' + b.requestedBy;
    case 'key_rollback': return b.from + ' → ' + b.to + ' by ' + b.requestedBy;
    case 'signature_generated': return b.keyVersion + ' ' + b.signature.slice(0, 16) + '…';
    case 'signature_verified': return b.keyVersion + (b.valid ? ' valid' : ' INVALID');
    case 'key_fallback': return b.from + ' missing, ' + b.to + ' signed';
    case 'key_provisioned': return b.version + ' ' + b.fingerprint;
    case 'key_retired': return b.version;
    case 'key_revoked': return b.version + ' REVOKED by ' + b.requestedBy + ': ' + b.reason + (b.forced ? ' (nothing signs now)' : '');
    case 'grace_changed': return b.version + ' verifies until ' + b.graceUntil + ' (by ' + b.requestedBy + ')';
    case 'key_expiry_set': return b.version + ' expires at ' + b.expiresAt;
    case 'version_bump': return b.entity + ' ' + b.from + ' → ' + b.to + ' (' + b.keyVersion + ')';
    case 'alert': case 'resolved': return b.rule + ': ' + b.message;
    case 'rejected': return b.subject + ': ' + b.reason;
    default: return JSON.stringify(b).slice(0, 120);
  }
}

function feedRow(message, past) {
  const event = message.event;
  const kind = Object.keys(event.body)[0];
  const item = el('li', { 'data-kind': kind, 'data-thread': event.thread, 'data-id': event.id, class: past ? 'past' : '' },
    el('span', { class: 'time' }, event.time.slice(11, 23)),
    el('span', { class: 'thread' }, event.thread),
    el('span', { class: 'label' }, el('span', { class: 'swatch', 'aria-hidden': 'true' }), message.label),
    el('span', { class: 'detail' }, (message.seq ? '#' + message.seq + ' ' : '') + detail(kind, event.body[kind])));
  item.style.borderLeftColor = message.hsl;
  item.querySelector('.swatch').style.background = message.hsl;
  return item;
}

function passes(message) {
  const kind = Object.keys(message.event.body)[0];
  return (!state.filter.thread || message.event.thread === state.filter.thread)
    && (!state.filter.kind || kind === state.filter.kind);
}

function historyUrl(before) {
  const q = new URLSearchParams({ limit: '100' });
  if (before) q.set('before', String(before));
  if (state.filter.kind) q.set('kind', state.filter.kind);
  if (state.filter.thread) q.set('thread', state.filter.thread);
  return '/api/events?' + q;
}

// The last events from the ledger, newest on top, marked as from before
// the page loaded; "older events" pages further back.
async function loadHistory(before) {
  const feed = $('feed');
  try {
    const page = await getJSON(historyUrl(before));
    if (!before) feed.replaceChildren();
    for (const m of page.events.slice().reverse()) {
      // A live row may have come in while the history was on its way.
      if (!feed.querySelector('li[data-id="' + m.event.id + '"]')) feed.append(feedRow(m, true));
    }
    state.nextBefore = page.nextBefore;
    $('feed-older').hidden = !page.nextBefore;
    if (!feed.children.length) feed.append(el('li', { class: 'muted' }, 'No events match.'));
  } catch (e) {
    feed.replaceChildren(el('li', { class: 'error' }, 'History: ' + e.message));
  }
}

async function loadMarkers() {
  try {
    const page = await getJSON('/api/events?limit=100&kind=' + MARKED.join(','));
    for (const m of page.events) addMarker(m.event);
    renderChart();
  } catch (e) { /* the chart goes on without them; the feed shows the error */ }
}

const REFRESH_ON = new Set(['key_rotate', 'key_rollback', 'key_retired', 'key_provisioned', 'key_revoked', 'grace_changed', 'key_expiry_set', 'alert', 'resolved', 'rotation_failed']);

function onEvent(message) {
  const event = message.event;
  const kind = Object.keys(event.body)[0];
  if (kind === 'metrics') { renderMetrics(event.body[kind]); return; }
  addMarker(event);
  if (passes(message)) {
    const feed = $('feed');
    const empty = feed.querySelector('li.muted');
    if (empty) empty.remove();
    feed.prepend(feedRow(message, false));
    while (feed.children.length > 300) feed.lastChild.remove();
  }
  if (REFRESH_ON.has(kind)) refresh();
}

function connect() {
  const feedState = $('feed-state');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/dev/version-ws';
  const socket = new WebSocket(url, 'tes-ui-v1');
  socket.onopen = () => { feedState.textContent = 'live'; feedState.className = 'pill small ok'; };
  socket.onmessage = (m) => {
    const message = JSON.parse(m.data);
    if (message.type === 'status') renderHealth(message.status);
    else if (message.type === 'event') onEvent(message);
  };
  socket.onclose = () => {
    feedState.textContent = 'reconnecting'; feedState.className = 'pill small bad';
    setTimeout(connect, 2000);
  };
}

// ---- changes ---------------------------------------------------------------

async function act(path, verb, body) {
  const buttons = [$('rotate'), $('rollback'), $('revoke'), $('grace')];
  buttons.forEach((b) => { b.disabled = true; });
  showResult('result', verb + '…', true);
  try {
    const { token } = await getJSON('/api/auth/csrf-token');
    const headers = { 'X-CSRF-Token': token };
    const admin = $('admin-token').value.trim();
    sessionStorage.setItem('tes-admin-token', admin);
    if (admin) headers.Authorization = 'Bearer ' + admin;
    const init = { method: 'POST', headers };
    if (body) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
    const response = await fetch(path, init);
    const text = await response.text();
    if (!response.ok) throw new Error(text || response.statusText);
    const reply = JSON.parse(text);
    const active = reply.activeVersion !== undefined ? reply.activeVersion : reply.active;
    showResult('result', reply.message + (active !== undefined ? ' — ' + (active || 'nothing') + ' is active.' : ''), true);
    await refresh();
  } catch (e) {
    showResult('result', verb + ' refused: ' + e.message, false);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

for (const kind of KINDS) $('feed-kind').append(el('option', { value: kind }, kind));
$('admin-token').value = sessionStorage.getItem('tes-admin-token') || '';
$('rotate').addEventListener('click', () => act('/admin/rotate', 'Rotation'));
$('rollback').addEventListener('click', () => act('/admin/rollback', 'Rollback'));
$('revoke-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const version = $('revoke-version').value.trim().toLowerCase();
  if ($('revoke-confirm').value.trim().toLowerCase() !== version) {
    showResult('result', 'Revocation not sent: type ' + (version || 'the version') + ' again to confirm.', false);
    return;
  }
  act('/admin/revoke', 'Revocation', {
    version, reason: $('revoke-reason').value.trim(), force: $('revoke-force').checked,
  });
});
$('grace-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const version = $('grace-version').value.trim().toLowerCase();
  const how = document.querySelector('input[name=grace-how]:checked').value;
  const body = how === 'end' ? { version, endNow: true } : { version, extend: $('grace-extend').value.trim() };
  act('/admin/grace', 'Grace change', body);
});
$('verify').addEventListener('click', verify);
$('feed-older').addEventListener('click', () => loadHistory(state.nextBefore));
for (const id of ['feed-thread', 'feed-kind']) {
  $(id).addEventListener('change', () => {
    state.filter = { thread: $('feed-thread').value, kind: $('feed-kind').value };
    loadHistory();
  });
}
refresh();
loadHistory();
loadMarkers();
connect();
setInterval(() => getJSON('/api/dev/version-ws/health').then(renderWriters).catch(() => {}), 3000);
setInterval(() => getJSON('/api/signers').then(renderSigners).catch(() => {}), 5000);
setInterval(renderTimeline, 10000);
let resized = null;
window.addEventListener('resize', () => {
  clearTimeout(resized);
  resized = setTimeout(() => { renderChart(); renderTimeline(); }, 150);
});
