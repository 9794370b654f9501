// Operators and admins: health, statistics, key status with rotation and shred-epoch progress.
// Auditors and admins: the audit trail with filters, and chain verification.

import { call, session } from './api.js';
import { $, clear, facts, formatBytes, h } from './dom.js';

async function publicJson(path) {
  const response = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  return { status: response.status, body: await response.json() };
}

export async function refreshOps() {
  $('ops-error').textContent = '';
  try {
    const [health, ready] = await Promise.all([publicJson('/healthz'), publicJson('/readyz')]);
    const checks = ready.body.checks || {};
    facts($('ops-health'), [
      ['Process', health.body.status],
      ['Ready', ready.status === 200 ? 'yes' : 'no'],
      ...Object.entries(checks).map(([part, state]) => [`Check: ${part}`, state]),
      ['Checked', `${ready.body.age_seconds} s ago`],
    ]);
    const stats = await call('GET', '/v1/admin/stats');
    const body = clear($('ops-stats').querySelector('tbody'));
    for (const [tenant, numbers] of Object.entries(stats.tenants)) {
      body.append(h('tr', {}, h('th', { scope: 'row', text: tenant }), h('td', { text: numbers.records }),
        h('td', { text: formatBytes(numbers.bytes) })));
    }
    body.append(h('tr', {}, h('th', { scope: 'row', text: 'Total' }), h('td', { text: stats.records }),
      h('td', { text: formatBytes(stats.bytes) })));
    $('ops-keys-section').hidden = session.role !== 'admin';
    if (session.role === 'admin') await refreshKeys();
  } catch (error) {
    $('ops-error').textContent = error.message;
  }
}

async function refreshKeys() {
  const keys = await call('GET', '/v1/admin/keys');
  const counts = (map) => Object.entries(map || {}).map(([version, n]) => `v${version}: ${n}`).join(', ') || 'none';
  facts($('ops-keys'), [
    ['Provider', keys.provider], ['Key', keys.key_name], ['Current version', keys.current_version],
    ['Oldest usable version', keys.min_decryption_version], ['Versions', (keys.versions || []).join(', ')],
    ['Data keys by version', counts(keys.dek_counts)], ['Tenant keys by version', counts(keys.tenant_key_counts)],
  ]);
  const rewrap = keys.rewrap || {};
  facts($('ops-rewrap'), [
    ['State', rewrap.state], ['Target version', rewrap.target_version], ['Rewrapped', rewrap.rewrapped],
    ['Failed', rewrap.failed], ['Started', rewrap.started_at], ['Finished', rewrap.finished_at],
  ]);
  const total = Object.values(keys.dek_counts || {}).reduce((a, b) => a + b, 0);
  const current = (keys.dek_counts || {})[String(keys.current_version)] || 0;
  $('ops-rewrap-progress').value = total ? current / total : 1;
  const epoch = keys.shred_epoch || {};
  const job = epoch.job || {};
  facts($('ops-epoch'), [
    ['Last epoch', epoch.last_number], ['Completed', epoch.last_completed_at],
    ['Shredded since (recoverable until the next epoch)', epoch.shredded_waiting], ['Due', epoch.due ? 'yes' : 'no'],
    ['Job', job.state ? `${job.state}${job.phase ? ` (${job.phase})` : ''}` : 'none'],
    ...(epoch.warning ? [['Warning', epoch.warning]] : []),
  ]);
}

// --- audit ---------------------------------------------------------------------------------

let nextAfter = null;

function auditQuery(after) {
  const params = new URLSearchParams();
  for (const name of ['record_id', 'actor', 'since', 'until', 'limit']) {
    const value = $('audit-form').elements[name].value.trim();
    if (value) params.set(name, value);
  }
  if (after) params.set('after', String(after));
  return params.toString();
}

async function listAudit(after) {
  $('audit-error').textContent = '';
  try {
    const page = await call('GET', `/v1/audit?${auditQuery(after)}`);
    const body = clear($('audit-table').querySelector('tbody'));
    for (const entry of page.entries) {
      const actor = `${entry.actor.name} (${entry.actor.role})${entry.actor.on_behalf_of ? ` for ${entry.actor.on_behalf_of}` : ''}`;
      body.append(h('tr', {}, h('td', { text: entry.seq }), h('td', { text: entry.time }), h('td', { text: entry.tenant }),
        h('td', { text: actor }), h('td', { text: entry.action }), h('td', { text: entry.outcome }),
        h('td', { class: 'hash', text: (entry.record_ids || []).join(' ') })));
    }
    if (!page.entries.length) body.append(h('tr', {}, h('td', { colspan: 7, text: 'No entries.' })));
    nextAfter = page.next_after;
    $('audit-next').disabled = nextAfter === null;
  } catch (error) {
    $('audit-error').textContent = error.field ? `${error.field}: ${error.message}` : error.message;
  }
}

async function verifyChain() {
  $('audit-error').textContent = '';
  $('audit-copy-status').textContent = '';
  try {
    const result = await call('GET', '/v1/audit/verify');
    facts($('audit-verify-result'), [
      ['Chain', result.ok ? 'intact' : `broken at entry ${result.bad_seq}: ${result.reason}`],
      ['Entries', result.entries], ['Head hash', result.head],
    ]);
    const head = $('audit-verify-result').querySelectorAll('dd')[2];
    head.classList.add('hash');
    head.id = 'audit-head';
    $('audit-copy').hidden = !result.head;
    $('audit-copy').dataset.head = result.head || '';
  } catch (error) {
    $('audit-error').textContent = error.message;
  }
}

async function copyHead() {
  const head = $('audit-copy').dataset.head;
  try {
    await navigator.clipboard.writeText(head);
    $('audit-copy-status').textContent = 'Head hash copied.';
  } catch {
    const selection = window.getSelection();
    selection.selectAllChildren($('audit-head'));
    $('audit-copy-status').textContent = 'Copying was refused: the hash is selected, press Ctrl+C.';
  }
}

export function initOpsViews() {
  $('ops-refresh').addEventListener('click', refreshOps);
  $('audit-form').addEventListener('submit', (event) => { event.preventDefault(); listAudit(null); });
  $('audit-next').addEventListener('click', () => listAudit(nextAfter));
  $('audit-verify').addEventListener('click', verifyChain);
  $('audit-copy').addEventListener('click', copyHead);
}

export function openAudit() {
  if (!$('audit-table').querySelector('tbody').children.length) listAudit(null);
}
