// The customer portal: opened from a portal session URL (`#code=…`, a
// one-time code exchanged for a short-lived dashboard token), or with a
// dashboard token the vendor's app already holds (`#token=…`). Either is
// removed from the address bar at once; the token lives in this tab's
// session storage only. Everything shown comes from the public HTTP API.

import { api, ApiError, el, fill, money, date, ago, words, badge, confirmAction, copy, download, openStream } from './common.js';

const STORAGE = 'billing.portal.session';
const $ = (id) => document.getElementById(id);

let session = null;
let view = { subscription: null, plans: [], licenses: [], payments: [], card: undefined, cardError: null };
const streams = new Map();
let refreshTimer = null;

/** A message at the top of the page; errors are announced at once. */
function notice(kind, text) {
  const node = el('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  fill($('notices'), node);
  return node;
}

function showError(error) {
  notice('error', error instanceof ApiError ? error.message : String(error));
}

function liveState(state, detail) {
  const live = $('live');
  if (state === 'open') {
    live.className = 'live on';
    live.textContent = 'Live updates: on';
  } else if (state === 'reconnecting') {
    live.className = 'live off';
    live.textContent = 'Live updates: connection lost, reconnecting…';
  } else {
    live.className = 'live off';
    live.textContent = `Live updates: stopped (${detail})`;
  }
}

async function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  // Whatever the address carries goes out of it before anything else.
  if (location.hash || location.search) history.replaceState(null, '', location.pathname);
  try {
    if (fragment.get('code')) {
      const granted = await api('/api/portal/session', { method: 'POST', body: { code: fragment.get('code') } });
      session = { token: granted.token, expires_at: granted.expires_at, return_url: granted.return_url };
    } else if (fragment.get('token')) {
      session = { token: fragment.get('token'), expires_at: null, return_url: null };
    } else {
      session = JSON.parse(sessionStorage.getItem(STORAGE) || 'null');
    }
  } catch (error) {
    sessionStorage.removeItem(STORAGE);
    return closed(error instanceof ApiError ? error.message : String(error));
  }
  if (!session || !session.token) {
    return closed('This page opens from a link your app gives you. Open your account in the app and choose "Manage subscription".');
  }
  sessionStorage.setItem(STORAGE, JSON.stringify(session));
  if (session.return_url) {
    const back = $('back');
    back.href = session.return_url;
    back.hidden = false;
  }
  if (query.get('checkout') === 'success') notice('ok', 'Thank you! Your purchase is being confirmed; this page updates as soon as it is.');
  if (query.get('checkout') === 'canceled') notice('warn', 'Checkout was canceled; nothing was charged.');
  $('offline-form').addEventListener('submit', offlineActivation);
  await refresh();
}

/** No session: the page says why and offers nothing else. */
function closed(message) {
  liveState('refused', 'not signed in');
  const main = $('main');
  fill(main, el('section', { class: 'card wide', 'aria-labelledby': 'closed-title' },
    el('h2', { id: 'closed-title' }, 'This portal link cannot be used'),
    el('p', { role: 'alert' }, message)));
}

function call(path, options = {}) {
  return api(path, { ...options, token: session.token }).catch((error) => {
    if (error.status === 401) {
      sessionStorage.removeItem(STORAGE);
      error.message = `Your portal session has ended (${error.message}). Open the portal again from your app.`;
    }
    throw error;
  });
}

/** Reloads everything and renders it. */
async function refresh() {
  const [current, plans, licenses, payments] = await Promise.allSettled([
    call('/api/subscriptions/current'),
    call('/api/subscriptions/plans'),
    call('/api/licenses'),
    call('/api/payments/history'),
  ]);
  const failed = [current, plans, licenses, payments].find((r) => r.status === 'rejected');
  if (failed) showError(failed.reason);
  if (current.status === 'fulfilled') view.subscription = current.value.subscription;
  if (plans.status === 'fulfilled') view.plans = plans.value.plans;
  if (licenses.status === 'fulfilled') view.licenses = licenses.value.licenses;
  if (payments.status === 'fulfilled') view.payments = payments.value.payments;
  try {
    view.card = (await call('/api/stripe/billing/payment-method')).payment_method;
    view.cardError = null;
  } catch (error) {
    view.card = null;
    view.cardError = error.message;
  }
  render();
  listen();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(showError), 150);
}

/** One stream per license; each change reloads the page's data. */
function listen() {
  for (const license of view.licenses) {
    if (streams.has(license.key)) continue;
    streams.set(license.key, openStream(`/api/events/${encodeURIComponent(license.key)}`, session.token, {
      onEvent: (message) => {
        if (message.event === 'message') return;
        $('updated').textContent = `Updated at ${new Date().toLocaleTimeString()}: ${describe(message)}.`;
        scheduleRefresh();
      },
      onState: liveState,
    }));
  }
}

function describe(message) {
  const names = {
    'license.updated': 'your license changed',
    'license.created': 'a new license was issued',
    'subscription.updated': 'your subscription changed',
    'payment.updated': 'a payment was recorded',
    'device.activated': 'a device was activated',
    'device.updated': 'a device changed',
    'device.deactivated': 'a device was deactivated',
    'device.dead': 'a device stopped reporting',
  };
  return names[message.event] || message.event;
}

function planOf(id) {
  return view.plans.find((p) => p.id === id);
}

function planName(id) {
  const plan = planOf(id);
  return plan ? plan.name : id || 'Unknown plan';
}

function price(plan) {
  if (plan.amount === null || plan.amount === undefined) return 'Price shown at checkout';
  const amount = money(plan.amount, plan.currency);
  if (plan.kind === 'perpetual') return `${amount} once`;
  return plan.interval ? `${amount} per ${plan.interval}` : amount;
}

function render() {
  renderSubscription();
  renderPayment();
  renderLicenses();
  renderPlans();
  renderHistory();
}

async function act(button, work, done) {
  button.disabled = true;
  try {
    await work();
    if (done) notice('ok', done);
    await refresh();
  } catch (error) {
    showError(error);
  } finally {
    if (button.isConnected) button.disabled = false;
  }
}

function renderSubscription() {
  const sub = view.subscription;
  const body = $('subscription-body');
  if (!sub) {
    return fill(body, el('p', {}, 'You have no subscription yet. Choose a plan below.'));
  }
  const ending = sub.cancel_at_period_end || sub.cancel_at;
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, 'Plan'), el('dd', {}, planName(sub.plan)),
    el('dt', {}, 'Status'), el('dd', {}, badge(sub.status)),
    sub.trial_end && sub.status === 'trialing' ? [el('dt', {}, 'Trial ends'), el('dd', {}, date(sub.trial_end))] : null,
    sub.status === 'canceled'
      ? [el('dt', {}, 'Ended'), el('dd', {}, date(sub.canceled_at || sub.current_period_end))]
      : [el('dt', {}, ending ? 'Ends on' : 'Renews on'), el('dd', {}, date(sub.cancel_at || sub.current_period_end))],
  );
  const notices = [];
  if (sub.status === 'past_due' || sub.status === 'unpaid') {
    notices.push(el('p', { class: 'notice warn', role: 'alert' },
      'Your last payment did not go through. Update your payment method with "Manage billing" to keep your license active',
      sub.past_due_since ? ` (past due since ${date(sub.past_due_since)}).` : '.'));
  }
  if (ending && sub.status !== 'canceled') {
    notices.push(el('p', { class: 'notice warn' },
      `Your subscription is set to end on ${date(sub.cancel_at || sub.current_period_end)}. You keep access until then.`));
  }
  const actions = el('div', { class: 'actions' });
  if (sub.status !== 'canceled' && sub.status !== 'incomplete_expired') {
    if (ending) {
      const button = el('button', { type: 'button' }, 'Reactivate subscription');
      button.addEventListener('click', async () => {
        const yes = await confirmAction({
          title: 'Keep your subscription?',
          message: `Your subscription will renew on ${date(sub.current_period_end)} as before.`,
          confirm: 'Yes, keep my subscription',
        });
        if (yes) act(button, () => call('/api/subscriptions/reactivate', { method: 'POST', body: {} }), 'Your subscription will renew as before.');
      });
      actions.append(button);
    } else {
      const button = el('button', { type: 'button', class: 'danger' }, 'Cancel subscription');
      button.addEventListener('click', async () => {
        const yes = await confirmAction({
          title: 'Cancel your subscription?',
          message: `It stays active until ${date(sub.current_period_end)} and then ends; you can change your mind until then.`,
          confirm: 'Yes, cancel at period end',
          danger: true,
        });
        if (yes) act(button, () => call('/api/subscriptions/cancel', { method: 'POST', body: { at_period_end: true } }), 'Your subscription will end at the end of the period.');
      });
      actions.append(button);
    }
  }
  fill(body, notices, facts, actions);
}

function renderPayment() {
  const body = $('payment-body');
  const card = view.card;
  const manage = el('button', { type: 'button', class: 'secondary' }, 'Manage billing');
  manage.addEventListener('click', () => act(manage, async () => {
    const { url } = await call('/api/stripe/billing/portal', { method: 'POST', body: { return_url: `${location.origin}/portal` } });
    location.assign(url);
  }));
  const text = card
    ? el('p', {}, `${words(card.brand)} ending in ${card.last4}, expires ${String(card.exp_month).padStart(2, '0')}/${card.exp_year}`)
    : el('p', { class: 'muted' }, view.cardError ? `The payment method cannot be shown: ${view.cardError}` : 'No payment method on file.');
  fill(body, text, el('p', { class: 'muted' }, 'Invoices, receipts and your card are managed on Stripe\'s secure page.'),
    el('div', { class: 'actions' }, manage));
}

function deviceLabel(device) {
  return device.name || device.fingerprint;
}

function renderLicenses() {
  const body = $('licenses-body');
  if (view.licenses.length === 0) {
    return fill(body, el('p', {}, 'No licenses yet. A license is issued as soon as a subscription or purchase is paid.'));
  }
  fill(body, view.licenses.map(renderLicense));
}

function renderLicense(license) {
  const keyId = `key-${license.id}`;
  const copyButton = el('button', { type: 'button', class: 'secondary', 'aria-describedby': keyId }, 'Copy license key');
  copyButton.addEventListener('click', async () => {
    const copied = await copy(license.key);
    notice(copied ? 'ok' : 'error', copied ? 'License key copied to the clipboard.' : 'The key could not be copied; select it and copy it by hand.');
  });
  const active = license.devices.filter((d) => d.status === 'active');
  const warnings = [];
  if (license.status === 'suspended') {
    warnings.push(el('p', { class: 'notice warn', role: 'alert' }, 'This license is suspended: its apps stop working until the subscription is paid up or the vendor reinstates it.'));
  } else if (license.status === 'revoked') {
    warnings.push(el('p', { class: 'notice error', role: 'alert' }, 'This license was revoked and no longer works.'));
  } else if (license.status === 'expired') {
    warnings.push(el('p', { class: 'notice warn', role: 'alert' }, 'This license has expired.'));
  }
  return el('article', { class: 'license', 'aria-labelledby': `title-${license.id}` },
    el('h3', { id: `title-${license.id}` }, `${planName(license.plan)} license`, ' ', badge(license.status)),
    warnings,
    el('p', {}, el('span', { class: 'muted' }, 'Key: '), el('code', { class: 'key', id: keyId }, license.key)),
    el('div', { class: 'actions' }, copyButton),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Devices'), el('dd', {}, `${active.length} of ${license.max_devices} in use`),
      license.expires_at ? [el('dt', {}, license.kind === 'perpetual' ? 'Valid until' : 'Paid until'), el('dd', {}, date(license.expires_at))] : null,
      license.updates_until ? [el('dt', {}, 'Updates until'), el('dd', {}, date(license.updates_until))] : null),
    renderDevices(license));
}

function renderDevices(license) {
  const shown = license.devices.filter((d) => d.status !== 'deactivated');
  if (shown.length === 0) return el('p', { class: 'muted' }, 'No device uses this license yet.');
  return el('ul', { class: 'device-list', 'aria-label': `Devices of the ${planName(license.plan)} license` },
    shown.map((device) => renderDevice(device)));
}

function renderDevice(device) {
  const item = el('li');
  const label = deviceLabel(device);
  const rename = el('button', { type: 'button', class: 'secondary', 'aria-label': `Rename ${label}` }, 'Rename');
  const deactivate = el('button', { type: 'button', class: 'danger', 'aria-label': `Deactivate ${label}` }, 'Deactivate');
  rename.addEventListener('click', () => {
    const inputId = `rename-${device.id}`;
    const input = el('input', { id: inputId, name: 'name', value: device.name || '', maxlength: 100, required: true, autocomplete: 'off' });
    const cancel = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const form = el('form', { class: 'inline' },
      el('div', {}, el('label', { for: inputId }, `New name for ${label}`), input),
      el('button', { type: 'submit' }, 'Save name'), cancel);
    cancel.addEventListener('click', () => { form.replaceWith(actions); rename.focus(); });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const save = form.querySelector('button[type=submit]');
      act(save, () => call(`/api/terminals/${device.id}`, { method: 'PATCH', body: { name: input.value.trim() } }), `Renamed to ${input.value.trim()}.`);
    });
    actions.replaceWith(form);
    input.focus();
  });
  deactivate.addEventListener('click', async () => {
    const yes = await confirmAction({
      title: `Deactivate ${label}?`,
      message: 'The app on this device stops working and its slot is freed for another device.',
      confirm: 'Yes, deactivate it',
      danger: true,
    });
    if (yes) act(deactivate, () => call(`/api/terminals/${device.id}`, { method: 'DELETE' }), `${label} was deactivated.`);
  });
  const actions = el('div', { class: 'actions' }, rename, deactivate);
  return fill(item,
    el('p', {}, el('strong', {}, label), ' ', badge(device.status)),
    el('p', { class: 'muted' },
      [device.platform, device.app_version && `version ${device.app_version}`].filter(Boolean).join(', ') || 'Unknown platform',
      ` · last seen ${ago(device.last_seen_at)}`),
    actions);
}

function renderPlans() {
  const body = $('plans-body');
  if (view.plans.length === 0) return fill(body, el('p', { class: 'muted' }, 'No plans are on sale.'));
  const sub = view.subscription;
  const subscribed = sub && ['active', 'trialing', 'past_due'].includes(sub.status);
  fill(body, el('ul', { class: 'plans' }, view.plans.map((plan) => {
    const current = subscribed && sub.plan === plan.id;
    const titleId = `plan-${plan.id}`;
    let button = null;
    if (plan.kind === 'perpetual') {
      button = el('button', { type: 'button', 'aria-describedby': titleId }, `Buy ${plan.name}`);
      button.addEventListener('click', () => act(button, () => checkout(plan)));
    } else if (current) {
      button = el('p', { class: 'muted' }, 'Your current plan');
    } else if (subscribed) {
      button = el('button', { type: 'button', class: 'secondary' }, `Switch to ${plan.name}`);
      button.addEventListener('click', async () => {
        const yes = await confirmAction({
          title: `Switch to ${plan.name}?`,
          message: `You will pay ${price(plan)} from now on; the difference for this period is prorated on your next invoice.`,
          confirm: `Yes, switch to ${plan.name}`,
        });
        if (yes) act(button, () => call('/api/subscriptions/change-plan', { method: 'POST', body: { plan: plan.id } }), `You are now on ${plan.name}.`);
      });
    } else {
      button = el('button', { type: 'button' }, `Subscribe to ${plan.name}`);
      button.addEventListener('click', () => act(button, () => checkout(plan)));
    }
    return el('li', { class: current ? 'current' : '' },
      el('h3', { id: titleId }, plan.name),
      el('p', { class: 'price' }, price(plan)),
      el('p', { class: 'muted' }, `${plan.max_devices} ${plan.max_devices === 1 ? 'device' : 'devices'}`,
        plan.trial_days ? ` · ${plan.trial_days}-day trial` : '',
        plan.kind === 'perpetual' && plan.updates_months ? ` · ${plan.updates_months} months of updates` : ''),
      plan.features.length ? el('ul', { class: 'features' }, plan.features.map((f) => el('li', {}, f))) : null,
      el('div', { class: 'actions' }, button));
  })));
}

async function checkout(plan) {
  const back = `${location.origin}/portal`;
  const { url } = await call('/api/stripe/checkout/create', {
    method: 'POST',
    body: { plan: plan.id, success_url: `${back}?checkout=success`, cancel_url: `${back}?checkout=canceled` },
  });
  location.assign(url);
}

function renderHistory() {
  const body = $('history-body');
  if (view.payments.length === 0) return fill(body, el('p', { class: 'muted' }, 'No payments yet.'));
  fill(body, el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', { class: 'visually-hidden' }, 'Payments, newest first'),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Date'), el('th', { scope: 'col', class: 'num' }, 'Amount'),
      el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Invoice'))),
    el('tbody', {}, view.payments.map((p) => el('tr', {},
      el('td', {}, date(p.paid_at || p.created_at)),
      el('td', { class: 'num' }, money(p.amount, p.currency)),
      el('td', {}, badge(p.status)),
      el('td', {}, el('code', {}, p.stripe_invoice_id))))))));
}

async function offlineActivation(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const submit = form.querySelector('button[type=submit]');
  const request = $('offline-request').value.trim();
  const result = $('offline-result');
  if (!request) {
    fill(result, el('p', { class: 'notice error', role: 'alert' }, 'Paste the activation request from the offline device first.'));
    return;
  }
  submit.disabled = true;
  try {
    const answer = await call('/api/terminals/offline-activation', { method: 'POST', body: { request } });
    const response = typeof answer.response === 'string' ? answer.response : JSON.stringify(answer.response);
    const name = answer.device ? deviceLabel(answer.device) : 'the device';
    const save = el('button', { type: 'button' }, 'Download activation response');
    save.addEventListener('click', () => download('activation-response.txt', response));
    const area = el('textarea', { id: 'offline-response', readonly: true, spellcheck: 'false' });
    area.value = response;
    fill(result,
      el('p', { class: 'notice ok', role: 'status' }, `Activated ${name}. Take this response to the device.`),
      el('label', { for: 'offline-response' }, 'Activation response'), area,
      el('div', { class: 'actions' }, save));
    $('offline-request').value = '';
    scheduleRefresh();
  } catch (error) {
    fill(result, el('p', { class: 'notice error', role: 'alert' }, error.message));
  } finally {
    submit.disabled = false;
  }
}

start().catch(showError);
