// The vendor console: sign in with an admin token (kept in this tab's
// session storage only), find licenses and customers, open a license with
// its devices, subscription and audit trail, suspend, reinstate or revoke
// it. What the token's scopes do not allow is not shown. Everything comes
// from the admin API.

import { api, ApiError, el, fill, date, ago, badge, words, confirmAction } from './common.js';

const STORAGE = 'billing.console.session';
const $ = (id) => document.getElementById(id);
let session = null;
let lastQuery = null;

function notice(kind, text) {
  fill($('notices'), el('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text));
}

function showError(error) {
  notice('error', error instanceof ApiError ? error.message : String(error));
}

function can(scope) {
  return session && (session.scopes.includes('*') || session.scopes.includes(scope));
}

function call(path, options = {}) {
  return api(path, { ...options, token: session.token }).catch((error) => {
    if (error.status === 401) {
      signOut();
      error.message = `Signed out: ${error.message}.`;
    }
    throw error;
  });
}

async function start() {
  $('signin-form').addEventListener('submit', signIn);
  $('search-form').addEventListener('submit', search);
  $('issue-form').addEventListener('submit', issue);
  $('operations-load').addEventListener('click', () => loadOperations().catch(showError));
  window.addEventListener('hashchange', route);
  session = JSON.parse(sessionStorage.getItem(STORAGE) || 'null');
  show();
  if (session) await route();
}

function show() {
  const signedIn = Boolean(session);
  $('signin').hidden = signedIn;
  $('search').hidden = !signedIn;
  $('issue').hidden = !signedIn || !can('licenses:write');
  $('overview').hidden = !signedIn || !can('licenses:read');
  $('operations').hidden = !signedIn || !(can('events:read') || can('webhooks:write'));
  if (!signedIn) {
    $('license').hidden = true;
    fill($('operations-body'));
    fill($('who'));
    return;
  }
  const out = el('button', { type: 'button', class: 'secondary' }, 'Sign out');
  out.addEventListener('click', () => {
    signOut();
    notice('ok', 'Signed out.');
  });
  fill($('who'), el('span', {}, `Signed in as ${session.name} (${session.scopes.join(', ')})`), out);
  if (can('licenses:read')) loadOverview().catch(showError);
}

/** The counts, and activations per day as bars (with the same numbers as a
 * table for screen readers). */
async function loadOverview() {
  const o = await call('/api/admin/overview');
  const most = Math.max(1, ...o.activations_per_day.map((d) => d.count));
  const chart = el('div', { class: 'chart', 'aria-hidden': 'true' }, o.activations_per_day.map((d) => {
    const bar = el('span', { title: `${d.day}: ${d.count}` });
    bar.style.height = `${(100 * d.count) / most}%`;
    return bar;
  }));
  const total = o.activations_per_day.reduce((sum, d) => sum + d.count, 0);
  fill($('overview-body'),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Active licenses'), el('dd', {}, String(o.active_licenses)),
      el('dt', {}, 'Devices seen in the last hour'), el('dd', {}, String(o.devices_seen_last_hour)),
      el('dt', {}, 'Stripe deliveries today'), el('dd', {}, String(o.stripe_events_today))),
    el('h3', {}, `Activations per day, last ${o.activations_per_day.length} days (${total} in all)`),
    chart,
    el('table', { class: 'visually-hidden' }, el('caption', {}, 'Activations per day'),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Day'), el('th', { scope: 'col' }, 'Activations'))),
      el('tbody', {}, o.activations_per_day.map((d) => el('tr', {}, el('td', {}, d.day), el('td', {}, String(d.count)))))));
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  try {
    const me = await api('/api/admin/token', { token });
    session = { token, name: me.name, scopes: me.scopes };
    sessionStorage.setItem(STORAGE, JSON.stringify(session));
    $('token').value = '';
    fill($('notices'));
    show();
    $('query').focus();
  } catch (error) {
    showError(error);
  }
}

function signOut() {
  session = null;
  sessionStorage.removeItem(STORAGE);
  history.replaceState(null, '', location.pathname);
  show();
}

/** `#license=<id>` opens a license (an id, never a secret). */
async function route() {
  const id = new URLSearchParams(location.hash.slice(1)).get('license');
  if (!session) return;
  if (!id) {
    $('license').hidden = true;
    return;
  }
  try {
    await openLicense(id);
  } catch (error) {
    showError(error);
  }
}

async function search(event) {
  event.preventDefault();
  lastQuery = $('query').value.trim();
  await runSearch(lastQuery);
}

async function runSearch(q) {
  const results = $('results');
  fill(results, el('p', { class: 'muted' }, 'Searching…'));
  const asks = [can('licenses:read') ? call(`/api/admin/licenses?q=${encodeURIComponent(q)}&limit=50`) : null,
    can('customers:read') ? call(`/api/admin/customers?q=${encodeURIComponent(q)}&limit=20`) : null];
  const [licenses, customers] = await Promise.allSettled(asks.map((a) => a || Promise.resolve(null)));
  const parts = [];
  for (const answer of [licenses, customers]) {
    if (answer.status === 'rejected') parts.push(el('p', { class: 'notice error', role: 'alert' }, answer.reason.message));
  }
  const found = licenses.status === 'fulfilled' && licenses.value ? licenses.value.licenses : [];
  const accounts = customers.status === 'fulfilled' && customers.value ? customers.value.customers : [];
  if (!can('licenses:read') && !can('customers:read')) parts.push(el('p', { class: 'muted' }, 'This token may not read licenses or customers.'));
  if (found.length === 0 && accounts.length === 0) parts.push(el('p', {}, `Nothing matches "${q}".`));
  if (found.length) {
    parts.push(el('h3', {}, `Licenses (${found.length})`), el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, ['Key', 'User', 'Plan', 'Status', 'Devices'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, found.map((l) => el('tr', {},
        el('td', {}, el('a', { href: `#license=${l.id}` }, el('code', { class: 'key' }, l.key))),
        el('td', {}, l.user_id || '—'),
        el('td', {}, l.plan || '—'),
        el('td', {}, badge(l.status)),
        el('td', { class: 'num' }, `${l.device_count} of ${l.max_devices}`)))))));
  }
  if (accounts.length) {
    parts.push(el('h3', {}, `Customers (${accounts.length})`), el('ul', {}, accounts.map((c) => el('li', {},
      el('strong', {}, c.email || c.user_id || c.stripe_customer_id || 'Unknown customer'),
      ` — user ${c.user_id || '—'}, Stripe ${c.stripe_customer_id || '—'}`,
      c.licenses.length ? el('ul', {}, c.licenses.map((l) => el('li', {},
        el('a', { href: `#license=${l.id}` }, `${l.plan || 'License'} license`), ' ', badge(l.status)))) : null))));
  }
  fill(results, parts);
}

async function openLicense(id) {
  const section = $('license');
  const [detail, audit] = await Promise.all([
    call(`/api/admin/licenses/${encodeURIComponent(id)}`),
    can('events:read') ? call(`/api/admin/audit?license_id=${encodeURIComponent(id)}&limit=50`).catch((e) => ({ error: e })) : null,
  ]);
  const license = detail.license;
  const { devices, subscription } = license;
  section.hidden = false;
  fill($('license-title'), `License of ${license.user_id || 'no user'}`, ' ', badge(license.status));
  const actions = el('div', { class: 'actions' });
  if (can('licenses:write')) {
    const act = (label, path, confirm, message, danger = false) => {
      const button = el('button', { type: 'button', class: danger ? 'danger' : 'secondary' }, label);
      button.addEventListener('click', async () => {
        const yes = await confirmAction({ title: `${label}?`, message, confirm, danger });
        if (!yes) return;
        button.disabled = true;
        try {
          await call(`/api/admin/licenses/${license.id}/${path}`, { method: 'POST' });
          notice('ok', `${label}: done.`);
          await openLicense(license.id);
          if (lastQuery) await runSearch(lastQuery);
        } catch (error) {
          showError(error);
          button.disabled = false;
        }
      });
      actions.append(button);
    };
    if (license.status !== 'revoked') {
      if (license.overrides && license.overrides.suspended_at) {
        act('Reinstate license', 'reinstate', 'Yes, reinstate it', 'Its apps work again, as its subscription allows.');
      } else {
        act('Suspend license', 'suspend', 'Yes, suspend it', 'Its apps stop working until it is reinstated.');
      }
      act('Revoke license', 'revoke', 'Yes, revoke it for good', 'Its apps stop working for good; this cannot be undone.', true);
    }
  }
  const changes = [];
  if (can('licenses:write') && license.status !== 'revoked') {
    changes.push(numberForm(`renew-${license.id}`, 'Days to add', 'Renew', async (days) => {
      await call(`/api/admin/licenses/${license.id}/renew`, { method: 'POST', body: { days } });
      return `Renewed for ${days} days.`;
    }, license.id));
    changes.push(numberForm(`limit-${license.id}`, 'Device limit', 'Set device limit', async (maxDevices) => {
      await call(`/api/admin/licenses/${license.id}`, { method: 'PATCH', body: { max_devices: maxDevices } });
      return `The device limit is now ${maxDevices}.`;
    }, license.id, license.max_devices));
  }
  if (can('devices:write') && license.device_count > 0) {
    const reset = el('button', { type: 'button', class: 'danger' }, 'Reset devices');
    reset.addEventListener('click', async () => {
      const yes = await confirmAction({ title: 'Reset devices?', message: 'Every device of this license is deactivated; their apps must activate again.', confirm: 'Yes, reset every device', danger: true });
      if (!yes) return;
      try {
        await call(`/api/admin/licenses/${license.id}/reset-devices`, { method: 'POST' });
        notice('ok', 'Every device was deactivated.');
        await openLicense(license.id);
      } catch (error) {
        showError(error);
      }
    });
    actions.append(reset);
  }
  fill($('license-body'),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Key'), el('dd', {}, el('code', { class: 'key' }, license.key)),
      el('dt', {}, 'Plan'), el('dd', {}, license.plan || '—'),
      el('dt', {}, 'Source'), el('dd', {}, words(license.source)),
      el('dt', {}, 'Devices'), el('dd', {}, `${license.device_count} of ${license.max_devices}`),
      el('dt', {}, 'Expires'), el('dd', {}, date(license.expires_at)),
      el('dt', {}, 'Subscription'), el('dd', {}, subscription
        ? [badge(subscription.status), ` ${subscription.stripe_subscription_id}`, subscription.cancel_at_period_end ? ' (ends at period end)' : '']
        : 'none')),
    actions,
    changes,
    el('h3', {}, 'Devices'),
    renderDevices(devices, license.id),
    el('h3', {}, 'Audit trail'),
    renderAudit(audit));
  $('license-title').focus();
}

/** A one-number form of the license page (renew, device limit). */
function numberForm(id, label, button, work, licenseId, value) {
  const input = el('input', { id, type: 'number', min: 1, required: true, inputmode: 'numeric', value });
  const form = el('form', { class: 'inline' }, el('div', {}, el('label', { for: id }, label), input), el('button', { type: 'submit', class: 'secondary' }, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      notice('ok', await work(Number(input.value)));
      await openLicense(licenseId);
    } catch (error) {
      showError(error);
    }
  });
  return form;
}

async function issue(event) {
  event.preventDefault();
  const body = { user_id: $('issue-user').value.trim(), plan: $('issue-plan').value.trim() };
  if ($('issue-devices').value) body.max_devices = Number($('issue-devices').value);
  try {
    const answer = await call('/api/admin/licenses', { method: 'POST', body });
    notice('ok', `Issued a license to ${body.user_id}.`);
    event.target.reset();
    location.hash = `license=${answer.license.id}`;
  } catch (error) {
    showError(error);
  }
}

/** Recent Stripe deliveries (replayable) and the vendor's webhook
 * endpoints with their recent deliveries (retryable). */
async function loadOperations() {
  const parts = [];
  if (can('events:read')) {
    const { events } = await call('/api/admin/stripe-events?limit=20');
    parts.push(el('h3', {}, 'Stripe deliveries'), events.length === 0 ? el('p', { class: 'muted' }, 'None recorded.') : el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, ['Received', 'Event', 'Status', can('stripe:write') ? 'Action' : null].filter(Boolean).map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, events.map((e) => {
        let action = null;
        if (can('stripe:write')) {
          const button = el('button', { type: 'button', class: 'secondary', 'aria-label': `Replay ${e.id}` }, 'Replay');
          button.addEventListener('click', async () => {
            try {
              const replay = await call(`/api/admin/stripe-events/${encodeURIComponent(e.id)}/replay`, { method: 'POST' });
              notice('ok', `Replayed ${e.id}: ${words(replay.outcome)}.`);
              await loadOperations();
            } catch (error) {
              showError(error);
            }
          });
          action = el('td', {}, button);
        }
        return el('tr', {}, el('td', {}, date(e.received_at, { time: true })), el('td', {}, `${e.type} `, el('code', {}, e.id)),
          el('td', {}, badge(e.status), e.error ? ` ${e.error}` : ''), action);
      })))));
  }
  if (can('webhooks:write')) {
    const { endpoints } = await call('/api/admin/webhook-endpoints');
    parts.push(el('h3', {}, 'Webhook endpoints'));
    if (endpoints.length === 0) parts.push(el('p', { class: 'muted' }, 'No endpoint is registered.'));
    for (const endpoint of endpoints) {
      const { deliveries } = await call(`/api/admin/webhook-endpoints/${endpoint.id}/deliveries?limit=10`);
      parts.push(el('h4', {}, endpoint.url), deliveries.length === 0 ? el('p', { class: 'muted' }, 'Nothing sent yet.') : el('ul', {}, deliveries.map((d) => {
        const item = el('li', {}, `${d.event_type} `, badge(d.status), ` — ${d.attempt_count} attempt${d.attempt_count === 1 ? '' : 's'}`,
          d.attempts.length && d.attempts[d.attempts.length - 1].status_code ? `, last answered ${d.attempts[d.attempts.length - 1].status_code}` : '');
        if (d.status !== 'delivered') {
          const retry = el('button', { type: 'button', class: 'secondary', 'aria-label': `Retry ${d.event_type} to ${endpoint.url}` }, 'Retry now');
          retry.addEventListener('click', async () => {
            try {
              await call(`/api/admin/webhook-deliveries/${encodeURIComponent(d.id)}/retry`, { method: 'POST' });
              notice('ok', `The ${d.event_type} message will be sent again now.`);
              await loadOperations();
            } catch (error) {
              showError(error);
            }
          });
          item.append(' ', retry);
        }
        return item;
      })));
    }
  }
  fill($('operations-body'), parts);
}

function renderDevices(devices, licenseId) {
  if (devices.length === 0) return el('p', { class: 'muted' }, 'No devices.');
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('thead', {}, el('tr', {}, ['Name', 'Fingerprint', 'Status', 'Last seen', can('devices:write') ? 'Action' : null]
      .filter(Boolean).map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, devices.map((d) => {
      let action = null;
      if (can('devices:write')) {
        const button = el('button', { type: 'button', class: 'danger', 'aria-label': `Deactivate ${d.name || d.fingerprint}` }, 'Deactivate');
        button.disabled = d.status === 'deactivated';
        button.addEventListener('click', async () => {
          const yes = await confirmAction({ title: `Deactivate ${d.name || d.fingerprint}?`, message: 'Its app stops working and its slot is freed.', confirm: 'Yes, deactivate it', danger: true });
          if (!yes) return;
          try {
            await call(`/api/admin/devices/${d.id}`, { method: 'DELETE' });
            notice('ok', 'Device deactivated.');
            await openLicense(licenseId);
          } catch (error) {
            showError(error);
          }
        });
        action = el('td', {}, button);
      }
      return el('tr', {}, el('td', {}, d.name || '—'), el('td', {}, el('code', {}, d.fingerprint)),
        el('td', {}, badge(d.status)), el('td', {}, ago(d.last_seen_at)), action);
    }))));
}

function renderAudit(audit) {
  if (audit === null) return el('p', { class: 'muted' }, 'This token may not read the audit trail (events:read).');
  if (audit.error) return el('p', { class: 'notice error' }, audit.error.message);
  if (audit.entries.length === 0) return el('p', { class: 'muted' }, 'No changes recorded.');
  return el('ol', {}, audit.entries.map((e) => el('li', {},
    el('time', { datetime: e.at }, date(e.at, { time: true })), ` — ${e.action} by ${e.actor}`)));
}

start().catch(showError);
