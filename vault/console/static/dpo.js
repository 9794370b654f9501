// The DPO's requests for one patient: erasure, legal hold, subject access export, access report.
// Each states what it will do and asks for confirmation; the identifier travels in the body.

import { call, errorOf, request, session } from './api.js';
import { $, clear, confirmAction, formatBytes, h, notice } from './dom.js';
import { loadPatient, state } from './patient.js';

function patientAndReason({ needReason }) {
  const patientId = $('dpo-patient').value.trim();
  const reason = $('dpo-reason').value.trim();
  $('dpo-error').textContent = '';
  if (!patientId) {
    $('dpo-error').textContent = 'Enter the patient identifier.';
    $('dpo-patient').focus();
    return null;
  }
  if (needReason && !reason) {
    $('dpo-error').textContent = 'Enter the reason for this request.';
    $('dpo-reason').focus();
    return null;
  }
  return { patientId, reason };
}

function showResult(title, ...nodes) {
  $('dpo-result-title').textContent = title;
  clear($('dpo-result-body')).append(...nodes);
  $('dpo-result').hidden = false;
  $('dpo-result-title').focus?.();
}

async function erase() {
  const asked = patientAndReason({ needReason: true });
  if (!asked) return;
  const override = $('dpo-override').checked;
  const confirmed = await confirmAction(
    'Erase this patient?',
    `Every image and record of this patient in tenant ${session.tenant} will be crypto-shredded now: `
    + 'the images and their personal data become unreadable for good and disappear from search. '
    + 'Records under legal hold are kept and listed. '
    + (override ? 'Retention obligations are overridden: records still under one are erased too. '
      : 'Records still under a retention obligation are kept and listed. ')
    + 'This cannot be undone.',
    'Erase',
  );
  if (!confirmed) return;
  try {
    const report = await call('POST', '/v1/patients/erase', {
      json: { patient_id: asked.patientId, reason: asked.reason, override_retention: override },
      headers: { 'Idempotency-Key': `"${crypto.randomUUID()}"` },
    });
    const refused = h('ul', {}, report.refused.map((entry) => h('li', { text: `${entry.id}: ${entry.code}` })));
    showResult('Erasure report',
      h('p', { text: `${report.shredded} record${report.shredded === 1 ? '' : 's'} erased in ${report.seconds.toFixed(2)} s.` }),
      h('p', { text: report.refused.length ? `${report.refused.length} refused:` : 'None refused.' }),
      report.refused.length ? refused : '');
    notice(`Erasure done: ${report.shredded} erased, ${report.refused.length} refused.`);
    if (state.patientId === asked.patientId) await loadPatient(asked.patientId);
  } catch (error) {
    $('dpo-error').textContent = `Erasure refused: ${error.message}`;
  }
}

async function hold(place) {
  const asked = patientAndReason({ needReason: true });
  if (!asked) return;
  const confirmed = await confirmAction(
    place ? 'Place a legal hold?' : 'Lift the legal hold?',
    place ? 'Every record of this patient will be kept whatever its retention: no deletion, erasure or '
      + 'retention sweep can remove it until the hold is lifted.'
      : 'The legal hold on every record of this patient will be lifted: their retention applies again, '
      + 'and records past it are shredded by the next sweep.',
    place ? 'Place hold' : 'Lift hold',
  );
  if (!confirmed) return;
  try {
    const result = await call('POST', '/v1/patients/legal-hold', {
      json: { patient_id: asked.patientId, hold: place, reason: asked.reason },
    });
    showResult(place ? 'Legal hold placed' : 'Legal hold lifted',
      h('p', { text: `${result.updated} record${result.updated === 1 ? '' : 's'} changed.` }));
  } catch (error) {
    $('dpo-error').textContent = `Refused: ${error.message}`;
  }
}

async function exportPatient() {
  const asked = patientAndReason({ needReason: false });
  if (!asked) return;
  const confirmed = await confirmAction(
    'Export everything held on this patient?',
    'A zip with every image (as stored) and a manifest of every record, personal fields included, '
    + 'will be downloaded to this computer. Hand it to the patient securely and delete your copy.',
    'Export',
  );
  if (!confirmed) return;
  try {
    const response = await request('POST', '/v1/patients/export', { json: { patient_id: asked.patientId } });
    if (!response.ok) throw await errorOf(response);
    const disposition = response.headers.get('Content-Disposition') || '';
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || 'subject-access-export.zip';
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = h('a', { href: url, download: name, text: `Download ${name} (${formatBytes(blob.size)})` });
    showResult('Subject access export', h('p', {}, link));
    link.click();
  } catch (error) {
    $('dpo-error').textContent = `Export refused: ${error.message}`;
  }
}

async function accessReport() {
  const asked = patientAndReason({ needReason: false });
  if (!asked) return;
  try {
    const report = await call('POST', '/v1/patients/access-report', { json: { patient_id: asked.patientId } });
    const rows = report.accesses.map((entry) => h('tr', {},
      h('td', { text: entry.seq }), h('td', { text: entry.time }),
      h('td', { text: `${entry.actor.name} (${entry.actor.role})${entry.actor.on_behalf_of ? ` for ${entry.actor.on_behalf_of}` : ''}` }),
      h('td', { text: entry.action }), h('td', { text: entry.outcome }), h('td', { text: entry.record_ids.length })));
    const table = h('table', { class: 'table' },
      h('caption', { text: `Accesses to ${report.records.length} record${report.records.length === 1 ? '' : 's'}, generated ${report.generated_at}` }),
      h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Who', 'Action', 'Outcome', 'Records'].map((title) => h('th', { scope: 'col', text: title })))),
      h('tbody', {}, rows));
    showResult('Access report', table);
  } catch (error) {
    $('dpo-error').textContent = `Report refused: ${error.message}`;
  }
}

export function openDpo() {
  if (state.patientId && !$('dpo-patient').value) $('dpo-patient').value = state.patientId;
}

export function resetDpo() {
  $('dpo-patient').value = '';
  $('dpo-reason').value = '';
  $('dpo-override').checked = false;
  clear($('dpo-result-body'));
  $('dpo-result').hidden = true;
}

export function initDpoView() {
  $('dpo-form').addEventListener('submit', (event) => event.preventDefault());
  $('dpo-erase').addEventListener('click', erase);
  $('dpo-hold').addEventListener('click', () => hold(true));
  $('dpo-release').addEventListener('click', () => hold(false));
  $('dpo-export').addEventListener('click', exportPatient);
  $('dpo-access').addEventListener('click', accessReport);
}
