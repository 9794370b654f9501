// Entry point: sign-in and sign-out, the idle countdown, and which views a role gets. The views
// call the same API as any client; a role gets no view for what it may not do.

import { adopt, call, forget, request, session } from './api.js';
import { initCompareView, openCompare } from './compare.js';
import { $, notice } from './dom.js';
import { initDpoView, openDpo, resetDpo } from './dpo.js';
import { initOpsViews, openAudit, refreshOps } from './ops.js';
import { initPatientView, resetPatient } from './patient.js';

const VIEWS = ['signin', 'none', 'patient', 'compare', 'dpo', 'ops', 'audit'];
// The page signs out a little before the server would, so that its sign-out request still counts.
const MARGIN_MS = 1500;
let ticker = null;

function allowedViews() {
  return [...document.querySelectorAll('#views button')]
    .filter((button) => button.dataset.roles.split(' ').includes(session.role))
    .map((button) => button.dataset.view);
}

export function showView(name, options = {}) {
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  for (const button of document.querySelectorAll('#views button')) {
    if (button.dataset.view === name) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
  if (name === 'compare') openCompare(options.lesion);
  if (name === 'dpo') openDpo();
  if (name === 'ops') refreshOps();
  if (name === 'audit') openAudit();
  const heading = $(`view-${name}`).querySelector('h1');
  if (heading && options.focus !== false) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function formatLeft(ms) {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

function tick() {
  if (!session.csrf) return;
  const idleDeadline = session.lastRequest + session.idleTimeout * 1000 - MARGIN_MS;
  const deadline = Math.min(idleDeadline, session.expiresAt - MARGIN_MS);
  const left = deadline - Date.now();
  $('idle-left').textContent = `Sign-out in ${formatLeft(left)}`;
  const warnAt = Math.min(60000, (session.idleTimeout * 1000) / 3);
  const warning = $('idle-warning');
  if (left <= warnAt && left > 0) {
    $('idle-warning-left').textContent = formatLeft(left);
    if (warning.hidden) {
      warning.hidden = false;
      $('stay-signed-in').focus();
    }
  } else if (!warning.hidden) {
    warning.hidden = true;
  }
  if (left <= 0) signOut('idle');
}

function signedIn() {
  $('account').hidden = false;
  $('who').textContent = `${session.name} · ${session.role} · ${session.tenant}`;
  $('views').hidden = false;
  const allowed = allowedViews();
  for (const button of document.querySelectorAll('#views button')) button.hidden = !allowed.includes(button.dataset.view);
  ticker = setInterval(tick, 1000);
  tick();
  showView(allowed[0] || 'none');
}

function signedOut(message) {
  clearInterval(ticker);
  ticker = null;
  forget();
  resetPatient();
  resetDpo();
  $('account').hidden = true;
  $('views').hidden = true;
  $('idle-warning').hidden = true;
  if ($('confirm').open) $('confirm').close();
  showView('signin', { focus: false });
  notice(message || '');
  $('signin-token').focus();
}

async function signOut(why) {
  const csrf = session.csrf;
  if (!csrf) return;
  session.csrf = null; // signing out once: a 401 answer to this request must not start another
  try {
    await request('DELETE', '/v1/session', { headers: { 'X-CSRF-Token': csrf } });
  } catch {
    // the server ends it by itself at its idle deadline
  }
  signedOut(why === 'idle' ? 'You were signed out after a period without activity.'
    : why === 'ended' ? 'Your session has ended. Sign in again.' : 'Signed out.');
}

async function signIn(event) {
  event.preventDefault();
  const input = $('signin-token');
  const token = input.value.trim();
  input.value = ''; // the token is not kept by the page
  $('signin-error').textContent = '';
  if (!token) return;
  try {
    const info = await call('POST', '/v1/session', { json: { token } });
    adopt(info);
    notice('');
    signedIn();
  } catch (error) {
    $('signin-error').textContent = error.status === 401 ? 'This token is not valid (unknown, expired or revoked).'
      : error.message;
    input.focus();
  }
}

async function resume() {
  try {
    const info = await call('GET', '/v1/session');
    if (info.signed_in) {
      adopt(info);
      signedIn();
      return;
    }
    $('signin-oidc').hidden = !info.oidc;
  } catch {
    // fall through to the sign-in form
  }
  showView('signin', { focus: false });
  if (new URLSearchParams(window.location.search).get('signin') === 'failed') {
    $('signin-error').textContent = 'Signing in at the identity provider did not succeed. Try again or paste a token.';
  }
}

function init() {
  session.onEnded = (why) => signOut(why);
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut('user'));
  $('stay-signed-in').addEventListener('click', async () => {
    await call('GET', '/v1/session');
    $('idle-warning').hidden = true;
    tick();
  });
  for (const button of document.querySelectorAll('#views button')) {
    button.addEventListener('click', () => showView(button.dataset.view));
  }
  initPatientView({ showView });
  initCompareView();
  initDpoView();
  initOpsViews();
  resume();
}

init();
