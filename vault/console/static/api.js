// The one way the console talks to the daemon: same-origin fetches authenticated by the session
// cookie (HttpOnly: this code never sees it), with the session's CSRF token on every
// state-changing request. The session's idle deadline is tracked here from the last request.

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export const session = {
  csrf: null, role: null, tenant: null, name: null, idleTimeout: 0, expiresAt: null,
  lastRequest: 0,
  onEnded: null, // called when a request finds the session gone (401)
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || 'http_error';
    this.field = error.field || null;
    this.requestId = error.request_id || null;
  }
}

export function adopt(info) {
  session.csrf = info.csrf_token;
  session.role = info.role;
  session.tenant = info.tenant;
  session.name = info.name;
  session.idleTimeout = info.idle_timeout;
  session.expiresAt = Date.parse(info.expires_at);
  session.lastRequest = Date.now();
}

export function forget() {
  session.csrf = null;
  session.role = null;
  session.tenant = null;
  session.name = null;
}

// fetch() with the console's rules. Returns the Response; `json` sends a JSON body.
export async function request(method, path, { json, body, headers = {} } = {}) {
  const sent = new Headers(headers);
  if (json !== undefined) {
    sent.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  if (!SAFE.has(method) && session.csrf) sent.set('X-CSRF-Token', session.csrf);
  const response = await fetch(path, {
    method, headers: sent, body, credentials: 'same-origin', cache: 'no-store', redirect: 'error',
    referrerPolicy: 'no-referrer',
  });
  if (session.csrf) session.lastRequest = Date.now();
  if (response.status === 401 && session.csrf && session.onEnded) session.onEnded('ended');
  return response;
}

async function errorOf(response) {
  let payload = null;
  try { payload = await response.json(); } catch { payload = null; }
  return new ApiError(response.status, payload);
}

// A JSON API call: the decoded body, or an ApiError carrying the API's code, message and field.
export async function call(method, path, options = {}) {
  const response = await request(method, path, options);
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

// A binary answer (image, rendition, export) as a Blob.
export async function blob(method, path, options = {}) {
  const response = await request(method, path, options);
  if (!response.ok) throw await errorOf(response);
  return { blob: await response.blob(), response };
}

export { errorOf };
