// One lesion side by side across visits: previews first, the full-resolution originals on
// demand (fetched by byte ranges), zoom and pan applied to both panes at once.

import { errorOf, request } from './api.js';
import { $, clear, h } from './dom.js';
import { fetchRendition, objectUrl, state } from './patient.js';

const RANGE_BYTES = 1024 * 1024;
const view = { scale: 1, x: 0, y: 0 };
const DISPLAYABLE = new Set(['image/jpeg', 'image/png', 'image/webp']);

function lesions() {
  const byLesion = new Map();
  for (const item of state.items) {
    if (!item.lesion_id) continue;
    if (!byLesion.has(item.lesion_id)) byLesion.set(item.lesion_id, []);
    byLesion.get(item.lesion_id).push(item);
  }
  for (const items of byLesion.values()) items.sort((a, b) => a.captured_at.localeCompare(b.captured_at));
  return byLesion;
}

function label(item) {
  return `${item.captured_at.slice(0, 16).replace('T', ' ')} · ${item.body_site} · ${item.modality}`;
}

function fillSelect(select, items, chosen) {
  clear(select);
  for (const item of items) select.append(h('option', { value: item.id, text: label(item), selected: item.id === chosen }));
}

function apply() {
  const transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  for (const side of ['left', 'right']) $(`img-${side}`).style.transform = transform;
}

function zoom(factor, cx = 0, cy = 0) {
  const scale = Math.min(16, Math.max(0.1, view.scale * factor));
  // Keep the point under the cursor where it is.
  view.x = cx - ((cx - view.x) * scale) / view.scale;
  view.y = cy - ((cy - view.y) * scale) / view.scale;
  view.scale = scale;
  apply();
}

function fit() {
  const pane = $('pane-left');
  const images = [$('img-left'), $('img-right')].filter((img) => img.naturalWidth);
  const width = Math.max(1, ...images.map((img) => img.naturalWidth));
  const height = Math.max(1, ...images.map((img) => img.naturalHeight));
  view.scale = Math.min(pane.clientWidth / width, pane.clientHeight / height) || 1;
  view.x = 0;
  view.y = 0;
  apply();
}

async function showPreview(side, id) {
  const item = state.items.find((candidate) => candidate.id === id);
  const img = $(`img-${side}`);
  img.dataset.id = id;
  img.dataset.full = '';
  img.alt = `${side === 'left' ? 'Left' : 'Right'}: lesion ${item.lesion_id}, ${label(item)}`;
  $(`cap-${side}`).textContent = `${label(item)} (preview) · ${consentOf(item)}`;
  try {
    img.src = objectUrl(await fetchRendition(id, 'preview'));
    await img.decode().catch(() => {});
  } catch (error) {
    $(`cap-${side}`).textContent = `${label(item)}: no preview (${error.code || 'error'})`;
  }
}

function consentOf(item) {
  const given = ['care', 'teaching', 'publication', 'research'].filter((purpose) => item.consent && item.consent[purpose]);
  return given.length ? `consent: ${given.join(', ')}` : 'consent: none';
}

// The original, one range at a time: a lost connection costs one range, not the whole image.
async function fetchOriginal(item, onProgress) {
  const parts = [];
  let offset = 0;
  let total = null;
  do {
    const end = offset + RANGE_BYTES - 1;
    const response = await request('GET', `/v1/images/${item.id}`, { headers: { Range: `bytes=${offset}-${end}` } });
    if (!response.ok) throw await errorOf(response);
    const piece = await response.blob();
    parts.push(piece);
    if (response.status === 200) { total = piece.size; offset = total; break; }
    total = Number((response.headers.get('Content-Range') || '').split('/')[1]);
    offset += piece.size;
    onProgress(offset, total);
  } while (offset < total);
  return new Blob(parts, { type: item.content_type });
}

async function loadFull() {
  const status = $('compare-status');
  for (const side of ['left', 'right']) {
    const img = $(`img-${side}`);
    const item = state.items.find((candidate) => candidate.id === img.dataset.id);
    if (!item || img.dataset.full) continue;
    if (!DISPLAYABLE.has(item.content_type)) {
      status.textContent = `${item.content_type} cannot be shown by the browser; the preview stays.`;
      continue;
    }
    try {
      const blob = await fetchOriginal(item, (done, total) => {
        status.textContent = `Loading full resolution (${side}): ${Math.round((100 * done) / total)} %`;
      });
      img.src = objectUrl(blob);
      await img.decode().catch(() => {});
      img.dataset.full = '1';
      $(`cap-${side}`).textContent = `${label(item)} (full resolution) · ${consentOf(item)}`;
    } catch (error) {
      status.textContent = `Full resolution not loaded: ${error.message}`;
      return;
    }
  }
  status.textContent = 'Full resolution loaded.';
  fit();
}

async function choose(lesionId) {
  const items = lesions().get(lesionId) || [];
  fillSelect($('compare-left'), items, items[0] && items[0].id);
  fillSelect($('compare-right'), items, items.length ? items[items.length - 1].id : null);
  $('compare-panes').hidden = items.length === 0;
  $('compare-tools').hidden = items.length === 0;
  $('compare-status').textContent = '';
  if (!items.length) return;
  await Promise.all([showPreview('left', $('compare-left').value), showPreview('right', $('compare-right').value)]);
  fit();
}

export async function openCompare(lesionId) {
  const byLesion = lesions();
  const empty = byLesion.size === 0;
  $('compare-empty').hidden = !empty;
  $('compare-form').hidden = empty;
  if (empty) {
    $('compare-panes').hidden = true;
    $('compare-tools').hidden = true;
    return;
  }
  const select = clear($('compare-lesion'));
  const chosen = lesionId && byLesion.has(lesionId) ? lesionId : byLesion.keys().next().value;
  for (const [lesion, items] of byLesion) {
    select.append(h('option', { value: lesion, text: `${lesion} (${items.length} images)`, selected: lesion === chosen }));
  }
  await choose(chosen);
}

function panWith(pane) {
  let start = null;
  pane.addEventListener('pointerdown', (event) => {
    start = { x: event.clientX - view.x, y: event.clientY - view.y };
    pane.setPointerCapture(event.pointerId);
  });
  pane.addEventListener('pointermove', (event) => {
    if (!start) return;
    view.x = event.clientX - start.x;
    view.y = event.clientY - start.y;
    apply();
  });
  pane.addEventListener('pointerup', () => { start = null; });
  pane.addEventListener('wheel', (event) => {
    event.preventDefault();
    const box = pane.getBoundingClientRect();
    zoom(event.deltaY < 0 ? 1.2 : 1 / 1.2, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  pane.addEventListener('keydown', (event) => {
    const step = 40;
    const actions = {
      ArrowLeft: () => { view.x += step; apply(); }, ArrowRight: () => { view.x -= step; apply(); },
      ArrowUp: () => { view.y += step; apply(); }, ArrowDown: () => { view.y -= step; apply(); },
      '+': () => zoom(1.2), '=': () => zoom(1.2), '-': () => zoom(1 / 1.2), 0: fit,
    };
    const action = actions[event.key];
    if (action) { event.preventDefault(); action(); }
  });
}

export function compareState() {
  return { ...view };
}

export function initCompareView() {
  $('compare-lesion').addEventListener('change', () => choose($('compare-lesion').value));
  $('compare-left').addEventListener('change', () => showPreview('left', $('compare-left').value));
  $('compare-right').addEventListener('change', () => showPreview('right', $('compare-right').value));
  $('zoom-in').addEventListener('click', () => zoom(1.25));
  $('zoom-out').addEventListener('click', () => zoom(0.8));
  $('zoom-reset').addEventListener('click', fit);
  $('full-resolution').addEventListener('click', loadFull);
  panWith($('pane-left'));
  panWith($('pane-right'));
}
