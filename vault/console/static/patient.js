// The clinician's view: find a patient (the identifier travels only in POST bodies and lives
// only in this module's memory), the thumbnail grid by visit and body site, one image's
// metadata with the API's validation messages, and the upload of a session.

import { ApiError, call, errorOf, request } from './api.js';
import { $, clear, h, notice } from './dom.js';

const CONSENT_PURPOSES = ['care', 'teaching', 'publication', 'research'];
const TUS = { 'Tus-Resumable': '1.0.0' };
const CHUNK_BYTES = 4 * 1024 * 1024;
const RENDITION_POLLS = 60;

// The patient being looked at. Never written to the URL, the title, history or storage.
export const state = { patientId: null, items: [], selected: null, objectUrls: [], generation: 0 };
const listeners = { changed: [] };

export function onPatientChanged(listener) {
  listeners.changed.push(listener);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function searchAll(patientId) {
  const items = [];
  let cursor = null;
  do {
    const page = await call('POST', '/v1/search', { json: { patient_id: patientId, limit: 1000, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

export async function loadPatient(patientId) {
  state.patientId = patientId;
  state.items = await searchAll(patientId);
  state.selected = null;
  $('detail').hidden = true;
  $('patient-body').hidden = false;
  const count = state.items.length;
  $('patient-summary').textContent = count === 0 ? 'No images held for this patient.'
    : `${count} image${count === 1 ? '' : 's'} held for this patient.`;
  renderGrid();
  for (const listener of listeners.changed) listener();
}

export function resetPatient() {
  state.patientId = null;
  state.items = [];
  state.selected = null;
  releaseUrls();
  clear($('grid'));
  $('patient-body').hidden = true;
  $('find-patient').value = '';
  for (const listener of listeners.changed) listener();
}

function releaseUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

export function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

const day = (timestamp) => timestamp.slice(0, 10);

function visitKey(item) {
  return item.session_id ? `session:${item.session_id}` : `day:${day(item.captured_at)}`;
}

function groupByVisit(items) {
  const visits = new Map();
  for (const item of items) {
    const key = visitKey(item);
    if (!visits.has(key)) visits.set(key, { first: item.captured_at, session: item.session_id, sites: new Map() });
    const visit = visits.get(key);
    if (item.captured_at < visit.first) visit.first = item.captured_at;
    if (!visit.sites.has(item.body_site)) visit.sites.set(item.body_site, []);
    visit.sites.get(item.body_site).push(item);
  }
  return [...visits.values()].sort((a, b) => a.first.localeCompare(b.first));
}

export function consentText(consent) {
  const given = CONSENT_PURPOSES.filter((purpose) => consent && consent[purpose]);
  return given.length ? `Consent: ${given.join(', ')}` : 'Consent: none';
}

function renderGrid() {
  const grid = clear($('grid'));
  releaseUrls();
  state.generation += 1;
  const generation = state.generation;
  for (const mark of ['grid-start', 'first-thumbnail', 'grid-complete']) performance.clearMarks(mark);
  performance.mark('grid-start');
  const pending = [];
  for (const visit of groupByVisit(state.items)) {
    const title = `Visit ${day(visit.first)}${visit.session ? ` · session ${visit.session}` : ''}`;
    const section = h('section', { class: 'visit', 'aria-label': title }, h('h3', { text: title }));
    for (const [site, items] of visit.sites) {
      const list = h('ul', { class: 'thumbs' });
      for (const item of items) {
        const frame = h('span', { class: 'thumb-frame' }, h('span', { class: 'placeholder', text: 'Loading…' }));
        const button = h('button', {
          type: 'button', class: 'thumb', 'aria-pressed': 'false', 'data-id': item.id,
          onclick: () => selectImage(item.id),
        }, frame, h('span', { class: 'thumb-text' },
          `${item.display_name} · ${item.captured_at.slice(0, 16).replace('T', ' ')}`,
          item.lesion_id ? ` · lesion ${item.lesion_id}` : '',
          h('span', { class: 'consent', text: consentText(item.consent) })));
        list.append(h('li', {}, button));
        pending.push(showThumbnail(item, frame, generation));
      }
      section.append(h('div', { class: 'site' }, h('h4', { text: `Body site: ${site}` }), list));
    }
    grid.append(section);
  }
  grid.setAttribute('aria-busy', pending.length ? 'true' : 'false');
  Promise.allSettled(pending).then(() => {
    if (generation !== state.generation) return;
    performance.mark('grid-complete');
    grid.setAttribute('aria-busy', 'false');
  });
}

// The record's rendition state decides when to ask: a queued one is polled (GET metadata, by
// record id) rather than asked for and refused, so the page causes no failed requests.
async function renditionReady(item, generation) {
  let record = item;
  for (let poll = 0; poll < RENDITION_POLLS; poll += 1) {
    const rendition = record.renditions;
    if (!rendition || rendition.state === 'ready') return { ready: true };
    if (rendition.state !== 'queued') return { ready: false, reason: rendition.reason || rendition.state };
    await sleep(500);
    if (generation !== state.generation) return { ready: false, reason: 'stale' };
    record = await call('GET', `/v1/images/${item.id}/metadata`);
  }
  return { ready: false, reason: 'still being made' };
}

export async function fetchRendition(id, kind) {
  const response = await request('GET', `/v1/images/${id}/${kind}`);
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

// A ready thumbnail is loaded by the <img> itself (the session cookie goes with it): the browser
// pipelines the requests and decodes off the main thread, with no copy through a blob.
function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.addEventListener('load', resolve, { once: true });
    img.addEventListener('error', reject, { once: true });
    img.src = src;
  });
}

async function showThumbnail(item, frame, generation) {
  try {
    const ready = await renditionReady(item, generation);
    if (generation !== state.generation) return;
    if (!ready.ready) {
      clear(frame).append(h('span', { class: 'placeholder', text: `No thumbnail (${ready.reason})` }));
      return;
    }
    const img = h('img', { alt: `${item.body_site}, ${day(item.captured_at)}`, decoding: 'async' });
    await loadImage(img, `/v1/images/${item.id}/thumbnail`);
    if (generation !== state.generation) return;
    clear(frame).append(img);
    if (!performance.getEntriesByName('first-thumbnail').length) performance.mark('first-thumbnail');
  } catch {
    clear(frame).append(h('span', { class: 'placeholder', text: 'No thumbnail (error)' }));
  }
}

// --- one image: details and metadata edit -------------------------------------------------

const TEXT_FIELDS = ['captured_at', 'body_site', 'lesion_id', 'session_id', 'description', 'diagnosis'];

function clearFieldErrors() {
  for (const node of document.querySelectorAll('#edit-form [aria-invalid]')) node.removeAttribute('aria-invalid');
  for (const node of document.querySelectorAll('#edit-form .field-error')) node.textContent = '';
  $('edit-error').textContent = '';
  $('edit-ok').textContent = '';
}

export async function selectImage(id) {
  const item = state.items.find((candidate) => candidate.id === id);
  if (!item) return;
  state.selected = id;
  for (const button of document.querySelectorAll('.thumb')) {
    button.setAttribute('aria-pressed', button.dataset.id === id ? 'true' : 'false');
  }
  fillForm(item);
  $('detail').hidden = false;
  $('detail-compare').disabled = !item.lesion_id;
  $('detail-title').textContent = `Image ${item.display_name}`;
  $('detail-title').scrollIntoView({ block: 'nearest' });
  $('edit-captured_at').focus();
  const img = $('detail-image');
  img.alt = `Preview of ${item.body_site}, ${day(item.captured_at)}`;
  img.removeAttribute('src');
  if (!item.renditions || item.renditions.state === 'ready') {
    try {
      img.src = objectUrl(await fetchRendition(id, 'preview'));
    } catch (error) {
      img.alt = `No preview (${error.code || 'error'})`;
    }
  }
}

function fillForm(item) {
  clearFieldErrors();
  for (const name of TEXT_FIELDS) $(`edit-${name}`).value = item[name] ?? '';
  $('edit-tags').value = (item.tags || []).join(', ');
  for (const purpose of CONSENT_PURPOSES) {
    document.querySelector(`#edit-form [name="consent.${purpose}"]`).checked = Boolean(item.consent && item.consent[purpose]);
  }
  $('detail-consent').textContent = consentText(item.consent);
}

function patchFromForm(item) {
  const patch = {};
  for (const name of TEXT_FIELDS) {
    const value = $(`edit-${name}`).value;
    const before = item[name] ?? '';
    if (value !== before) patch[name] = value === '' && !['captured_at', 'body_site'].includes(name) ? null : value;
  }
  const tags = $('edit-tags').value.split(',').map((tag) => tag.trim()).filter(Boolean);
  if (JSON.stringify(tags) !== JSON.stringify(item.tags || [])) patch.tags = tags;
  const consent = {};
  for (const purpose of CONSENT_PURPOSES) {
    const checked = document.querySelector(`#edit-form [name="consent.${purpose}"]`).checked;
    if (checked !== Boolean(item.consent && item.consent[purpose])) consent[purpose] = checked;
  }
  if (Object.keys(consent).length) patch.consent = consent;
  return patch;
}

function showFieldError(error) {
  $('edit-error').textContent = `Not saved: ${error.message}`;
  if (!error.field) return;
  const input = $(`edit-${error.field}`) || document.querySelector(`#edit-form [name="${CSS.escape(error.field)}"]`);
  if (!input) return;
  input.setAttribute('aria-invalid', 'true');
  const message = $(`edit-${error.field}-error`);
  if (message) message.textContent = error.message;
  input.focus();
}

async function saveEdit(event) {
  event.preventDefault();
  const item = state.items.find((candidate) => candidate.id === state.selected);
  if (!item) return;
  clearFieldErrors();
  const patch = patchFromForm(item);
  if (!Object.keys(patch).length) {
    $('edit-ok').textContent = 'Nothing changed.';
    return;
  }
  try {
    const record = await call('PATCH', `/v1/images/${item.id}/metadata`, {
      body: JSON.stringify(patch), headers: { 'Content-Type': 'application/merge-patch+json' },
    });
    Object.assign(item, record);
    fillForm(item);
    $('edit-ok').textContent = 'Saved.';
    const button = document.querySelector(`.thumb[data-id="${item.id}"] .consent`);
    if (button) button.textContent = consentText(item.consent);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showFieldError(error);
  }
}

// --- upload of a session (tus, resumable) ---------------------------------------------------

function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

const TYPES = { jpg: 'image/jpeg', jpeg: 'image/jpeg', png: 'image/png', tif: 'image/tiff', tiff: 'image/tiff',
  webp: 'image/webp', heic: 'image/heic', dcm: 'application/dicom' };

function contentTypeOf(file) {
  if (file.type) return file.type;
  const extension = file.name.split('.').pop().toLowerCase();
  return TYPES[extension] || 'application/octet-stream';
}

async function tusUpload(file, metadata, progress) {
  if (file.size === 0) throw new Error('the file is empty');
  const created = await request('POST', '/v1/uploads', {
    headers: {
      ...TUS, 'Upload-Length': String(file.size),
      'Upload-Metadata': `metadata ${base64(JSON.stringify(metadata))},content_type ${base64(contentTypeOf(file))}`,
    },
  });
  if (created.status !== 201) throw await errorOf(created);
  const location = created.headers.get('Location');
  let offset = Number(created.headers.get('Upload-Offset') || '0');
  let failures = 0;
  for (;;) {
    let response = null;
    try {
      response = await request('PATCH', location, {
        body: file.slice(offset, offset + CHUNK_BYTES),
        headers: { ...TUS, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
      });
    } catch {
      response = null; // the connection was lost: ask where to resume
    }
    if (response && response.status === 204) {
      offset = Number(response.headers.get('Upload-Offset'));
      progress.value = offset / file.size;
      failures = 0;
      if (offset >= file.size) return response.headers.get('Content-Location');
      continue;
    }
    if (response && response.status !== 409 && response.status < 500) throw await errorOf(response);
    failures += 1;
    if (failures > 5) throw response ? await errorOf(response) : new Error('the connection keeps failing');
    await sleep(500 * failures);
    const head = await request('HEAD', location, { headers: TUS });
    if (!head.ok) throw new ApiError(head.status, null);
    offset = Number(head.headers.get('Upload-Offset'));
  }
}

async function uploadFiles(files) {
  $('upload-error').textContent = '';
  if (!state.patientId) {
    $('upload-error').textContent = 'Find the patient first.';
    return;
  }
  const bodySite = $('upload-body_site').value.trim();
  if (!bodySite) {
    $('upload-error').textContent = 'Enter the body site first.';
    $('upload-body_site').focus();
    return;
  }
  const list = clear($('upload-progress'));
  let stored = 0;
  for (const file of files) {
    const progress = h('progress', { max: 1, value: 0, 'aria-label': `Upload of ${file.name}` });
    const status = h('span', { text: 'sending' });
    list.append(h('li', {}, h('span', { text: file.name }), progress, status));
    const metadata = {
      patient_id: state.patientId,
      captured_at: new Date(file.lastModified || Date.now()).toISOString(),
      modality: $('upload-modality').value,
      body_site: bodySite,
    };
    for (const name of ['lesion_id', 'session_id']) {
      const value = $(`upload-${name}`).value.trim();
      if (value) metadata[name] = value;
    }
    try {
      await tusUpload(file, metadata, progress);
      status.textContent = 'stored';
      stored += 1;
    } catch (error) {
      status.textContent = `refused: ${error.message}`;
      $('upload-error').textContent = `${file.name}: ${error.message}`;
    }
  }
  notice(`${stored} of ${files.length} image${files.length === 1 ? '' : 's'} stored.`);
  await loadPatient(state.patientId);
}

function defaultSessionId() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `S-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-${pad(now.getHours())}${pad(now.getMinutes())}`;
}

export function initPatientView({ showView }) {
  $('find-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('find-patient');
    const patientId = input.value.trim();
    $('find-error').textContent = '';
    if (!patientId) return;
    performance.mark('find-submitted');
    try {
      await loadPatient(patientId);
    } catch (error) {
      $('find-error').textContent = error.message;
    }
  });
  $('edit-form').addEventListener('submit', saveEdit);
  $('detail-close').addEventListener('click', () => {
    $('detail').hidden = true;
    const button = document.querySelector(`.thumb[data-id="${state.selected}"]`);
    state.selected = null;
    if (button) { button.setAttribute('aria-pressed', 'false'); button.focus(); }
  });
  $('detail-compare').addEventListener('click', () => {
    const item = state.items.find((candidate) => candidate.id === state.selected);
    if (item && item.lesion_id) showView('compare', { lesion: item.lesion_id });
  });
  $('upload-session_id').value = defaultSessionId();
  const zone = $('drop-zone');
  const input = $('upload-files');
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    if (files.length) uploadFiles(files);
  });
  zone.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); input.click(); }
  });
  input.addEventListener('change', () => {
    const files = [...input.files];
    input.value = '';
    if (files.length) uploadFiles(files);
  });
}
