// The customer portal in a real browser (Debian's Chromium through
// playwright-core) against a real billing-server on its embedded store,
// Stripe replaced at the HTTP boundary. Driven by roles and visible text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { FakeStripe, TestServer, dashboardJwt, launchBrowser, seriousViolations, screenshots, subscription, PRICE_PRO } from '../harness.mjs';

const stripe = new FakeStripe();
let server;
let browser;

before(async () => {
  await stripe.start();
  server = new TestServer(stripe);
  await server.start();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
  await stripe.stop();
});

/** A new browser tab with clipboard access, at the desktop width. */
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US', timezoneId: 'UTC' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(String(error)));
  page.problems = problems;
  return page;
}

async function openPortal(user) {
  const page = await newPage();
  const url = await server.portalUrl(user);
  assert.match(url, /\/portal#code=pcs_/);
  await page.goto(url);
  await page.getByRole('heading', { name: /Pro license/ }).waitFor();
  return page;
}

function assertClean(page) {
  const refused = page.problems.filter((p) => /Content Security Policy|Refused to/i.test(p));
  assert.deepEqual(refused, [], 'the page broke its Content-Security-Policy');
}

test('a portal session URL opens the portal: plan, license, key copied, a device renamed and another deactivated', async () => {
  const key = await server.subscribe('alice');
  await server.activate(key, 'fp-alice-laptop', 'Laptop');
  await server.activate(key, 'fp-alice-desk', 'Desk');
  const page = await openPortal('alice');

  // The code is gone from the address bar, and no secret is in it.
  assert.equal(page.url(), `${server.url}/portal`);
  const subscriptionCard = page.getByRole('region', { name: 'Subscription' });
  await subscriptionCard.getByText('Pro', { exact: true }).waitFor();
  await subscriptionCard.getByText('Active').waitFor();
  await page.getByText(key).waitFor();
  await page.getByRole('link', { name: 'Back to the app' }).waitFor();
  // Amounts in their currency, for the reader's locale.
  await page.getByText('$19.99 per month').waitFor();
  await page.getByText('€49.00 per month').waitFor();
  await page.getByText('£199.00 once').waitFor();
  await page.getByRole('region', { name: 'Billing history' }).getByText('$19.99').waitFor();
  await page.getByText('Visa ending in 4242, expires 04/2031').waitFor();

  await page.getByRole('button', { name: 'Copy license key' }).click();
  await page.getByText('License key copied to the clipboard.').waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);

  await page.getByRole('button', { name: 'Rename Laptop' }).click();
  const field = page.getByLabel('New name for Laptop');
  assert.equal(await field.evaluate((e) => e === document.activeElement), true, 'focus moves to the field');
  await field.fill('Work laptop');
  await page.keyboard.press('Enter');
  await page.getByText('Renamed to Work laptop.').waitFor();
  await page.getByRole('button', { name: 'Rename Work laptop' }).waitFor();

  await page.getByRole('button', { name: 'Deactivate Desk' }).click();
  const dialog = page.getByRole('dialog', { name: 'Deactivate Desk?' });
  await dialog.getByRole('button', { name: 'Yes, deactivate it' }).click();
  await page.getByText('Desk was deactivated.').waitFor();
  await page.getByRole('button', { name: 'Deactivate Desk' }).waitFor({ state: 'detached' });

  const { terminals } = await server.json('GET', `/api/admin/licenses?user_id=alice`, { token: server.adminToken })
    .then(async (list) => server.json('GET', `/api/admin/licenses/${list.licenses[0].id}`, { token: server.adminToken }))
    .then((detail) => ({ terminals: detail.license.devices }));
  const byFingerprint = Object.fromEntries(terminals.map((d) => [d.fingerprint, d]));
  assert.equal(byFingerprint['fp-alice-laptop'].name, 'Work laptop');
  assert.equal(byFingerprint['fp-alice-desk'].status, 'deactivated');

  await page.getByText('Live updates: on').waitFor();
  assert.deepEqual(await seriousViolations(page), []);
  await screenshots(page, 'portal');
  assertClean(page);
  await page.context().close();
});

test('cancel and reactivate ask first and send Stripe exactly what they should', async () => {
  await server.subscribe('bob');
  const page = await openPortal('bob');
  const before = stripe.requests.length;

  await page.getByRole('button', { name: 'Cancel subscription' }).click();
  const dialog = page.getByRole('dialog', { name: 'Cancel your subscription?' });
  // Keyboard: the dialog has focus on its safe choice; Escape changes nothing.
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
  assert.equal(stripe.requests.length, before, 'a dismissed confirmation sent nothing');

  await page.getByRole('button', { name: 'Cancel subscription' }).click();
  await page.getByRole('dialog', { name: 'Cancel your subscription?' }).getByRole('button', { name: 'Yes, cancel at period end' }).click();
  await page.getByRole('button', { name: 'Reactivate subscription' }).waitFor();
  await page.getByText(/Your subscription is set to end on/).waitFor();
  const cancels = stripe.requestsTo('POST', '/v1/subscriptions/sub_bob');
  assert.equal(cancels.length, 1);
  assert.deepEqual(cancels[0].form, [['cancel_at_period_end', 'true']]);
  assert.match(cancels[0].idempotencyKey, /^billing-cancel-/);
  assert.equal(cancels[0].authorization, 'Bearer sk_test_browser');
  await screenshots(page, 'portal-canceling');

  await page.getByRole('button', { name: 'Reactivate subscription' }).click();
  await page.getByRole('dialog', { name: 'Keep your subscription?' }).getByRole('button', { name: 'Yes, keep my subscription' }).click();
  await page.getByRole('button', { name: 'Cancel subscription' }).waitFor();
  const updates = stripe.requestsTo('POST', '/v1/subscriptions/sub_bob');
  assert.equal(updates.length, 2);
  assert.deepEqual(updates[1].form, [['cancel_at_period_end', 'false']]);
  assert.match(updates[1].idempotencyKey, /^billing-reactivate-/);
  assert.deepEqual(await seriousViolations(page), []);
  assertClean(page);
  await page.context().close();
});

test('the page changes by itself when a Stripe webhook arrives or a device leaves elsewhere', async () => {
  const key = await server.subscribe('carol');
  const { device } = await server.activate(key, 'fp-carol', 'Studio');
  const page = await openPortal('carol');
  await page.getByText('Live updates: on').waitFor();
  await page.getByRole('button', { name: 'Cancel subscription' }).waitFor();

  // Canceled in Stripe's own portal: Stripe tells the server, the page follows.
  await server.webhook('customer.subscription.updated', subscription('carol', PRICE_PRO, { cancelAtPeriodEnd: true }));
  await page.getByRole('button', { name: 'Reactivate subscription' }).waitFor({ timeout: 10_000 });

  // A failed renewal: past due, with the notice saying what to do.
  await server.webhook('customer.subscription.updated', subscription('carol', PRICE_PRO, { status: 'past_due', cancelAtPeriodEnd: true }));
  await page.getByText(/Your last payment did not go through/).waitFor({ timeout: 10_000 });
  await screenshots(page, 'portal-past-due');

  // Deactivated by the vendor's support: the device disappears.
  await server.json('DELETE', `/api/admin/devices/${device.id}`, { token: server.adminToken, status: 200 });
  await page.getByRole('button', { name: 'Deactivate Studio' }).waitFor({ state: 'detached', timeout: 10_000 });
  assertClean(page);
  await page.context().close();
});

test('a used or expired portal link is refused in words, and the page offers nothing else', async () => {
  await server.subscribe('dave');
  const page = await newPage();
  const url = await server.portalUrl('dave');
  await page.goto(url);
  await page.getByRole('heading', { name: /Pro license/ }).waitFor();

  // The same link again, in a fresh tab: used.
  const again = await newPage();
  await again.goto(url);
  await again.getByRole('heading', { name: 'This portal link cannot be used' }).waitFor();
  await again.getByText('this portal link was already used; ask for a new one').waitFor();
  assert.equal(again.url(), `${server.url}/portal`, 'the used code is gone from the address bar too');
  assert.equal(await again.getByRole('button').count(), 0);
  assert.deepEqual(await seriousViolations(again), []);
  await screenshots(again, 'portal-link-refused');

  // A link left waiting past its five minutes.
  const late = await server.portalUrl('dave');
  server.sql("UPDATE portal_sessions SET expires_at = expires_at - 600000000");
  const expired = await newPage();
  await expired.goto(late);
  await expired.getByText('this portal link has expired; ask for a new one').waitFor();

  // The first tab keeps working (its token is in its session storage only).
  await page.reload();
  await page.getByRole('heading', { name: /Pro license/ }).waitFor();
  for (const p of [page, again, expired]) await p.context().close();
});

test('subscribe and buy go to Stripe Checkout, a plan switch changes the price, and Manage billing opens Stripe\'s portal', async () => {
  // No subscription yet: the plans offer Checkout.
  const page = await newPage();
  await page.goto(await server.portalUrl('gina'));
  await page.getByText('You have no subscription yet. Choose a plan below.').waitFor();
  await page.getByRole('button', { name: 'Subscribe to Team' }).click();
  await page.waitForURL(/\/checkout-page\/cs_test_/);
  const [checkout] = stripe.requestsTo('POST', '/v1/checkout/sessions').filter((r) => r.form.some(([, v]) => v === 'gina'));
  assert.deepEqual(checkout.form, [
    ['mode', 'subscription'],
    ['line_items[0][price]', 'price_team_monthly'],
    ['line_items[0][quantity]', '1'],
    ['success_url', `${server.url}/portal?checkout=success`],
    ['cancel_url', `${server.url}/portal?checkout=canceled`],
    ['client_reference_id', 'gina'],
    ['metadata[user_id]', 'gina'],
    ['subscription_data[metadata][user_id]', 'gina'],
  ]);
  assert.match(checkout.idempotencyKey, /^billing-checkout-/);
  // A perpetual plan is bought once, whatever the subscription.
  await page.goBack();
  await page.getByRole('button', { name: 'Buy Studio' }).click();
  await page.waitForURL(/\/checkout-page\/cs_test_/);
  const purchase = stripe.requestsTo('POST', '/v1/checkout/sessions').filter((r) => r.form.some(([, v]) => v === 'gina')).at(-1);
  assert.deepEqual(purchase.form, [
    ['mode', 'payment'],
    ['line_items[0][price]', 'price_studio_once'],
    ['line_items[0][quantity]', '1'],
    ['success_url', `${server.url}/portal?checkout=success`],
    ['cancel_url', `${server.url}/portal?checkout=canceled`],
    ['client_reference_id', 'gina'],
    ['metadata[user_id]', 'gina'],
    ['metadata[plan]', 'studio'],
    ['payment_intent_data[metadata][user_id]', 'gina'],
    ['customer_creation', 'always'],
  ]);
  // Back from Checkout in the same tab: still signed in, the address clean.
  await page.goto(`${server.url}/portal?checkout=success`);
  await page.getByText(/Thank you! Your purchase is being confirmed/).waitFor();
  assert.equal(page.url(), `${server.url}/portal`);
  await page.context().close();

  await server.subscribe('hank');
  const hank = await openPortal('hank');
  await hank.getByRole('button', { name: 'Switch to Team' }).click();
  await hank.getByRole('dialog', { name: 'Switch to Team?' }).getByText(/€49.00 per month/).waitFor();
  await hank.getByRole('button', { name: 'Yes, switch to Team' }).click();
  await hank.getByText('You are now on Team.').waitFor();
  await hank.getByRole('region', { name: 'Subscription' }).getByText('Team', { exact: true }).waitFor();
  const [change] = stripe.requestsTo('POST', '/v1/subscriptions/sub_hank');
  assert.deepEqual(change.form, [
    ['items[0][id]', 'si_hank'],
    ['items[0][price]', 'price_team_monthly'],
    ['proration_behavior', 'create_prorations'],
  ]);
  assert.match(change.idempotencyKey, /^billing-change-plan-/);

  await hank.getByRole('button', { name: 'Manage billing' }).click();
  await hank.waitForURL(/\/billing-portal-page$/);
  const [portal] = stripe.requestsTo('POST', '/v1/billing_portal/sessions').filter((r) => r.form.some(([, v]) => v === 'cus_hank'));
  assert.deepEqual(portal.form, [['customer', 'cus_hank'], ['return_url', `${server.url}/portal`]]);
  await hank.context().close();
});

test('air-gapped activation: a pasted request takes a slot on the real server and the certificate is offered as a file', async () => {
  const key = await server.subscribe('ivan');
  const page = await openPortal('ivan');
  const posted = [];
  page.on('request', (request) => {
    if (request.url().endsWith('/api/terminals/offline-activation')) posted.push(request.postDataJSON());
  });

  await page.getByLabel('Activation request').fill('not a request');
  await page.getByRole('button', { name: 'Create activation response' }).click();
  await page.getByText('request is not an offline activation request').waitFor();

  // What license-client's offline_activation_request writes on the machine:
  // the license named by the SHA-256 of its key, never the key.
  const { createHash } = await import('node:crypto');
  const wire = {
    license_key_sha256: createHash('sha256').update(key).digest('base64url'),
    fingerprint: 'fp-offline-lab',
    name: 'Lab machine',
    platform: 'windows',
  };
  const request = `oar1.${Buffer.from(JSON.stringify(wire)).toString('base64url')}`;
  await page.getByLabel('Activation request').fill(`  ${request}\n`);
  await page.getByRole('button', { name: 'Create activation response' }).click();
  await page.getByText('Activated Lab machine. Take this response to the device.').waitFor();
  const response = await page.getByLabel('Activation response').inputValue();
  assert.match(response, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a signed certificate');
  const claims = JSON.parse(Buffer.from(response.split('.')[1], 'base64url').toString());
  assert.equal(claims.fingerprint, 'fp-offline-lab');
  const downloading = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download activation response' }).click();
  const file = await downloading;
  assert.equal(file.suggestedFilename(), 'activation-response.txt');
  const { readFile } = await import('node:fs/promises');
  assert.equal(await readFile(await file.path(), 'utf8'), response);

  assert.deepEqual(posted.at(-1), { request }, 'the request as pasted, trimmed, and nothing else');
  const terminals = await server.json('GET', '/api/terminals', { token: dashboardJwt('ivan'), status: 200 });
  assert.deepEqual(terminals.terminals.map((t) => [t.fingerprint, t.air_gapped]), [['fp-offline-lab', true]]);
  assert.deepEqual(await seriousViolations(page), []);
  await page.context().close();
});

test('a dropped event stream says so, reconnects by itself, and the page keeps following', async () => {
  await server.subscribe('judy');
  const page = await openPortal('judy');
  await page.getByText('Live updates: on').waitFor();
  await server.kill();
  await page.getByText('Live updates: connection lost, reconnecting…').waitFor({ timeout: 10_000 });
  await server.spawn();
  await page.getByText('Live updates: on').waitFor({ timeout: 20_000 });
  await server.webhook('customer.subscription.updated', subscription('judy', PRICE_PRO, { cancelAtPeriodEnd: true }));
  await page.getByRole('button', { name: 'Reactivate subscription' }).waitFor({ timeout: 10_000 });
  await page.context().close();
});

test("an app that holds the user's dashboard JWT opens the portal with it, and an expired one is told so", async () => {
  await server.subscribe('kim');
  const page = await newPage();
  await page.goto(`${server.url}/portal#token=${dashboardJwt('kim')}`);
  await page.getByRole('heading', { name: /Pro license/ }).waitFor();
  assert.equal(page.url(), `${server.url}/portal`, 'the token is gone from the address bar');

  const late = await newPage();
  await late.goto(`${server.url}/portal#token=${dashboardJwt('kim', -60)}`);
  await late.getByText(/Your portal session has ended \(token expired\)/).first().waitFor();
  for (const p of [page, late]) await p.context().close();
});
