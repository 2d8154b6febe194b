// The admin page: health, numbers and alerts over HTTP; events over the
// WebSocket; rotate / roll back with a fresh one-time CSRF token and the
// admin credential. Errors are shown, never swallowed.
'use strict';

const $ = (id) => document.getElementById(id);
let lastMetrics = null;
let lastHealth = null;

async function getJSON(url) {
  const response = await fetch(url, { cache: 'no-store' });
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

function showResult(text, ok) {
  const r = $('result');
  r.textContent = text;
  r.className = ok ? 'ok' : 'error';
}

function share(version) {
  if (!lastMetrics) return '—';
  const w = lastMetrics.window;
  const total = w.usage.reduce((n, u) => n + u.operations, 0);
  const mine = (w.usage.find((u) => u.version === version) || { operations: 0 }).operations;
  return total ? (100 * mine / total).toFixed(1) + '%' : '—';
}

function renderKeys() {
  const body = $('keys').querySelector('tbody');
  body.replaceChildren();
  if (!lastHealth) return;
  for (const k of lastHealth.keys) {
    const counts = lastMetrics && lastMetrics.versions.find((v) => v.version === k.version);
    body.append(el('tr', { 'data-version': k.version },
      el('td', {}, el('strong', {}, k.version)),
      el('td', {}, el('span', { class: 'pill state-' + k.status }, k.status)),
      el('td', { class: 'num' }, String(counts ? counts.signatures : k.signatures)),
      el('td', { class: 'num' }, share(k.version)),
      el('td', {}, el('code', {}, k.fingerprint))));
  }
}

function renderHealth(h) {
  lastHealth = h;
  $('active').textContent = h.activeVersion || 'none';
  $('rotated').textContent = h.rotationTimestamp || '—';
  $('last-sig').textContent = h.lastSigVersion || '—';
  $('head').textContent = 'seq ' + h.headSeq;
  const bus = $('bus');
  bus.textContent = h.bus.transport + (h.bus.connected ? ' · connected' : ' · disconnected');
  bus.className = 'pill ' + (h.bus.connected ? 'ok' : 'bad');
  renderKeys();
}

// Who writes the ledger (the lease holder) and who stands by, with how far
// behind the writer's head each standby is. Only the health endpoint knows
// (the WebSocket's status has no lease), so it is polled.
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
      el('td', {}, el('code', {}, h.writer.holder)),
      el('td', { class: 'num' }, 'lease ' + left.toFixed(1) + ' s')));
  }
  for (const s of h.standbys || []) {
    body.append(el('tr', { class: 'standby' },
      el('td', {}, el('span', { class: 'pill' }, 'standby')),
      el('td', {}, el('code', {}, s.holder)),
      el('td', { class: 'num' }, 'seq ' + s.headSeq + ' · ' + s.lag + ' behind')));
  }
  $('writers-note').textContent = h.writer
    ? (h.standbys && h.standbys.length ? 'A standby takes over when the writer\'s lease lapses.' : 'No standby: nothing takes over if this writer is lost.')
    : 'No writer holds the lease: signing waits for one.';
}

function renderMetrics(m) {
  lastMetrics = m;
  const d = m.migration && m.migration.firstSignatureAt
    ? (Date.parse(m.migration.firstSignatureAt) - Date.parse(m.migration.startedAt)) + ' ms (' + m.migration.from + ' → ' + m.migration.to + ')'
    : (m.migration ? 'waiting for the first ' + m.migration.to + ' signature' : '—');
  $('duration').textContent = d;
  renderKeys();
}

function renderAlerts(a) {
  const list = $('alerts');
  list.replaceChildren();
  if (!a.open.length) list.append(el('li', { class: 'muted' }, 'No open alerts.'));
  for (const o of a.open) {
    list.append(el('li', { class: 'alert' }, el('strong', {}, o.alert.rule), o.alert.message));
  }
}

async function refresh() {
  try { const h = await getJSON('/api/dev/version-ws/health'); renderHealth(h); renderWriters(h); }
  catch (e) { showResult('Version Management: ' + e.message, false); }
  try { renderMetrics(await getJSON('/api/metrics')); $('metrics-note').textContent = 'Share: signing and verification in the recent window.'; }
  catch (e) { $('metrics-note').textContent = 'Monitoring: ' + e.message; }
  try { renderAlerts(await getJSON('/api/alerts')); }
  catch (e) { $('alerts').replaceChildren(el('li', { class: 'muted' }, 'Alert: ' + e.message)); }
}

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
    case 'metrics': return 'seq ' + b.seq;
    default: return JSON.stringify(b).slice(0, 120);
  }
}

const REFRESH_ON = new Set(['key_rotate', 'key_rollback', 'key_retired', 'key_provisioned', 'key_revoked', 'grace_changed', 'key_expiry_set', 'alert', 'resolved', 'rotation_failed']);

function onEvent(message) {
  const event = message.event;
  const kind = Object.keys(event.body)[0];
  const body = event.body[kind];
  if (kind === 'metrics') { renderMetrics(body); return; }
  const item = el('li', { 'data-kind': kind },
    el('span', { class: 'time' }, event.time.slice(11, 23)),
    el('span', { class: 'thread' }, event.thread),
    el('span', { class: 'label' }, message.label),
    el('span', { class: 'detail' }, detail(kind, body)));
  item.style.borderLeftColor = message.hsl;
  item.querySelector('.label').style.color = message.hsl;
  const feed = $('feed');
  feed.prepend(item);
  while (feed.children.length > 200) feed.lastChild.remove();
  if (REFRESH_ON.has(kind)) refresh();
}

function connect() {
  const state = $('feed-state');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/dev/version-ws';
  const socket = new WebSocket(url, 'tes-ui-v1');
  socket.onopen = () => { state.textContent = 'live'; state.className = 'pill small ok'; };
  socket.onmessage = (m) => {
    const message = JSON.parse(m.data);
    if (message.type === 'status') renderHealth(message.status);
    else if (message.type === 'event') onEvent(message);
  };
  socket.onclose = () => {
    state.textContent = 'reconnecting'; state.className = 'pill small bad';
    setTimeout(connect, 2000);
  };
}

async function act(path, verb, body) {
  const buttons = [$('rotate'), $('rollback'), $('revoke')];
  buttons.forEach((b) => { b.disabled = true; });
  showResult(verb + '…', true);
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
    showResult(reply.message + ' — ' + (active || 'nothing') + ' is active.', true);
    await refresh();
  } catch (e) {
    showResult(verb + ' refused: ' + e.message, false);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

$('admin-token').value = sessionStorage.getItem('tes-admin-token') || '';
$('rotate').addEventListener('click', () => act('/admin/rotate', 'Rotation'));
$('rollback').addEventListener('click', () => act('/admin/rollback', 'Rollback'));
$('revoke-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const version = $('revoke-version').value.trim().toLowerCase();
  if ($('revoke-confirm').value.trim().toLowerCase() !== version) {
    showResult('Revocation not sent: type ' + (version || 'the version') + ' again to confirm.', false);
    return;
  }
  act('/admin/revoke', 'Revocation', {
    version, reason: $('revoke-reason').value.trim(), force: $('revoke-force').checked,
  });
});
refresh();
connect();
setInterval(() => getJSON('/api/dev/version-ws/health').then(renderWriters).catch(() => {}), 3000);
