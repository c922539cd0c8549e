// What the portal and the console share: calls to the HTTP API, the error
// shape, formatting, a DOM builder (every value is a text node, never markup), a
// confirmation dialog, and the license event stream read with fetch (the
// stream authenticates with an Authorization header, which EventSource
// cannot send).

/** An answer of the API in its error shape, or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API; resolves to the JSON body, rejects with an ApiError
 * carrying the API's own code and words. */
export async function api(path, { method = 'GET', body, token } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch {
    throw new ApiError(0, 'NETWORK', 'The server cannot be reached. Check your connection and try again.');
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = json && json.error;
    if (error && error.code && error.message) throw new ApiError(response.status, error.code, error.message);
    throw new ApiError(response.status, 'HTTP_' + response.status, `The server answered ${response.status}.`);
  }
  return json;
}

/** Builds an element: `el('p', { class: 'x' }, 'text', child)`. Attributes
 * starting with `on` are event listeners; values are never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** An amount in the currency's minor unit (Stripe's), for the reader's
 * locale: 1999 usd → "$19.99", 500 jpy → "¥500". */
export function money(amount, currency) {
  if (amount === null || amount === undefined || !currency) return '—';
  const format = new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() });
  const digits = format.resolvedOptions().maximumFractionDigits;
  return format.format(amount / 10 ** digits);
}

/** A timestamp as a date (and time, when asked) in the reader's locale. */
export function date(iso, { time = false } = {}) {
  if (!iso) return '—';
  const options = time ? { dateStyle: 'medium', timeStyle: 'short' } : { dateStyle: 'medium' };
  return new Intl.DateTimeFormat(undefined, options).format(new Date(iso));
}

/** "3 minutes ago", for last-seen times. */
export function ago(iso) {
  if (!iso) return '—';
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const units = [['year', 31536000], ['month', 2592000], ['day', 86400], ['hour', 3600], ['minute', 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(seconds, 'second');
}

/** Words for a status such as `past_due`. */
export function words(status) {
  return String(status || '').replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
}

/** A status badge. */
export function badge(status) {
  return el('span', { class: `badge ${status}` }, words(status));
}

/** Asks before an action: resolves true when confirmed. A modal <dialog>
 * (focus moves in, Escape cancels, focus returns where it was). */
export function confirmAction({ title, message, confirm, danger = false }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const heading = el('h2', { id: 'confirm-title' }, title);
    const yes = el('button', { type: 'button', class: danger ? 'danger' : '' }, confirm);
    const no = el('button', { type: 'button', class: 'secondary' }, 'Keep things as they are');
    const dialog = el(
      'dialog',
      { 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-message' },
      heading,
      el('p', { id: 'confirm-message' }, message),
      el('div', { class: 'actions' }, yes, no),
    );
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    };
    yes.addEventListener('click', () => close(true));
    no.addEventListener('click', () => close(false));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/** Copies text, with a fallback for pages where the Clipboard API is
 * refused. Resolves true when copied. */
export async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el('textarea', { 'aria-hidden': 'true', class: 'visually-hidden' });
    area.value = text;
    document.body.append(area);
    area.select();
    const done = document.execCommand('copy');
    area.remove();
    return done;
  }
}

/** Offers `text` as a file download. */
export function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  const link = el('a', { href: url, download: filename, class: 'visually-hidden' }, 'download');
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * Holds an SSE stream open with fetch, reconnecting with backoff and
 * resuming with Last-Event-ID. `onEvent({id, event, data})` for each
 * message, `onState('open' | 'reconnecting' | 'refused', detail)` on every
 * change. A 401 or 403 stops it (the credential is no longer good). Returns
 * `{ close() }`.
 */
export function openStream(path, token, { onEvent, onState }) {
  let lastEventId = null;
  let closed = false;
  let controller = null;
  let delay = 500;

  async function run() {
    while (!closed) {
      controller = new AbortController();
      try {
        const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token}` };
        if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
        const response = await fetch(path, { headers, signal: controller.signal, cache: 'no-store' });
        if (response.status === 401 || response.status === 403) {
          let message = 'Live updates were refused.';
          try {
            message = (await response.json()).error.message;
          } catch {
            /* keep the default words */
          }
          onState('refused', message);
          return;
        }
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
        onState('open');
        delay = 500;
        await readEvents(response.body, (message) => {
          if (message.id !== null) lastEventId = message.id;
          onEvent(message);
        });
      } catch {
        /* dropped: reconnect below */
      }
      if (closed) return;
      onState('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  run();
  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
  };
}

async function readEvents(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let message = { id: null, event: 'message', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
      if (line === '') {
        if (message.data.length > 0) {
          let data = message.data.join('\n');
          try {
            data = JSON.parse(data);
          } catch {
            /* not JSON: kept as text */
          }
          dispatch({ id: message.id, event: message.event, data });
        }
        message = { id: message.id, event: 'message', data: [] };
        message.id = null;
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') message.id = value;
      else if (field === 'event') message.event = value;
      else if (field === 'data') message.data.push(value);
    }
  }
}
