// The vendor console in a real browser: sign in with an admin token, find a
// license by a device's fingerprint, revoke it, and watch the customer's
// portal (another browser context, as the customer) show it revoked live.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { FakeStripe, TestServer, launchBrowser, seriousViolations, screenshots } from '../harness.mjs';

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

const refusals = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US', timezoneId: 'UTC' });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content Security Policy|Refused to/i.test(message.text())) refusals.push(message.text());
  });
  return page;
}

test.afterEach(() => {
  assert.deepEqual(refusals.splice(0), [], 'a page broke its Content-Security-Policy');
});

async function signIn(page, token) {
  await page.goto(`${server.url}/console`);
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('search').waitFor();
}

test('the console finds a license by fingerprint and revokes it; the portal shows it revoked at once', async () => {
  const key = await server.subscribe('erin');
  await server.activate(key, 'fp-erin-workstation', 'Workstation');
  const support = server.createAdminToken('support-console', 'licenses:read,licenses:write,customers:read,events:read');

  const portal = await newPage();
  await portal.goto(await server.portalUrl('erin'));
  await portal.getByText('Live updates: on').waitFor();
  await portal.getByRole('heading', { name: /Pro license/ }).getByText('Active').waitFor();

  const console = await newPage();
  await console.goto(`${server.url}/console`);
  assert.deepEqual(await seriousViolations(console), []);
  await screenshots(console, 'console-sign-in');
  await signIn(console, support);
  await console.getByText('Signed in as support-console').waitFor();
  // The overview: erin's license and device so far.
  const overview = console.getByRole('region', { name: 'Overview' });
  await overview.getByText(/Activations per day, last 30 days \(\d+ in all\)/).waitFor();
  const facts = await overview.locator('dl').innerText();
  assert.match(facts, /Active licenses\s+1\b/);
  assert.match(facts, /Devices seen in the last hour\s+1\b/);
  // The token is in this tab's session storage, never in the address.
  assert.equal(console.url(), `${server.url}/console`);
  assert.equal(await console.evaluate(() => JSON.parse(sessionStorage.getItem('billing.console.session')).name), 'support-console');

  await console.getByLabel(/device fingerprint/).fill('fp-erin-workstation');
  await console.keyboard.press('Enter');
  await console.getByRole('link', { name: key }).click();
  await console.getByRole('heading', { name: /License of erin/ }).waitFor();
  await console.getByRole('cell', { name: 'fp-erin-workstation' }).waitFor();
  // No devices:write: no device action offered.
  assert.equal(await console.getByRole('button', { name: /Deactivate/ }).count(), 0);
  await console.getByText(/created by stripe|by stripe/).first().waitFor();

  await console.getByRole('button', { name: 'Revoke license' }).click();
  await console.getByRole('dialog', { name: 'Revoke license?' }).getByRole('button', { name: 'Yes, revoke it for good' }).click();
  await console.getByText('Revoke license: done.').waitFor();
  await console.getByRole('heading', { name: /License of erin/ }).getByText('Revoked').waitFor();
  await console.getByText(/by admin:support-console/).first().waitFor();
  assert.deepEqual(await seriousViolations(console), []);
  await screenshots(console, 'console-license');

  // The customer's portal, untouched, follows by itself.
  await portal.getByText('This license was revoked and no longer works.').waitFor({ timeout: 10_000 });
  await screenshots(portal, 'portal-revoked');
  await portal.context().close();
  await console.context().close();
});

test("actions a token's scopes do not allow are not offered", async () => {
  await server.subscribe('frank');
  const reader = server.createAdminToken('read-only', 'licenses:read');
  const page = await newPage();
  await signIn(page, reader);
  await page.getByLabel(/device fingerprint/).fill('frank');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByRole('table').getByRole('link').first().click();
  await page.getByRole('heading', { name: /License of frank/ }).waitFor();
  await page.getByText('This token may not read the audit trail (events:read).').waitFor();
  for (const name of ['Revoke license', 'Suspend license', 'Reinstate license']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `${name} is offered to a read-only token`);
  }

  // A token that is refused signs the tab out, in the API's words.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').fill('adm_not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('the admin token is unknown or revoked').waitFor();
  await page.context().close();
});

test('the console issues, renews, resizes and resets a license, and retries and replays deliveries', async (t) => {
  // The vendor's own webhook receiver: refuses the first message, takes the rest.
  const received = [];
  const receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      received.push(JSON.parse(body));
      res.writeHead(received.length === 1 ? 500 : 200);
      res.end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  t.after(() => receiver.closeAllConnections() || new Promise((resolve) => receiver.close(resolve)));
  const hook = `http://127.0.0.1:${receiver.address().port}/hooks`;
  await server.json('POST', '/api/admin/webhook-endpoints', { token: server.adminToken, body: { url: hook, events: ['license.created'] }, status: 201 });

  const page = await newPage();
  await signIn(page, server.adminToken);
  await page.getByLabel('User id', { exact: true }).fill('kate');
  await page.getByLabel('Plan id', { exact: true }).fill('pro');
  await page.getByRole('button', { name: 'Issue license' }).click();
  await page.getByRole('heading', { name: /License of kate/ }).waitFor();
  await page.getByText('Issued a license to kate.').waitFor();

  await page.getByLabel('Days to add').fill('30');
  await page.getByRole('button', { name: 'Renew' }).click();
  await page.getByText('Renewed for 30 days.').waitFor();
  await page.getByLabel('Device limit').fill('5');
  await page.getByRole('button', { name: 'Set device limit' }).click();
  await page.getByText('The device limit is now 5.').waitFor();
  await page.getByText('0 of 5').waitFor();

  const key = await page.locator('dd code.key').innerText();
  await server.activate(key, 'fp-kate', 'Kiosk');
  await page.reload();
  await page.getByRole('cell', { name: 'fp-kate' }).waitFor();
  await page.getByRole('button', { name: 'Reset devices' }).click();
  await page.getByRole('dialog', { name: 'Reset devices?' }).getByRole('button', { name: 'Yes, reset every device' }).click();
  await page.getByText('Every device was deactivated.').waitFor();
  await page.getByRole('row', { name: /fp-kate/ }).getByText('Deactivated').waitFor();
  const detail = await server.json('GET', `/api/admin/licenses?q=${encodeURIComponent(key)}`, { token: server.adminToken });
  assert.equal(detail.licenses[0].max_devices, 5);
  assert.equal(detail.licenses[0].device_count, 0);

  // The license.created message failed once; the console retries it.
  await new Promise((resolve) => { const wait = () => (received.length ? resolve() : setTimeout(wait, 50)); wait(); });
  await page.getByRole('button', { name: 'Show Stripe deliveries and webhook endpoints' }).click();
  await page.getByRole('heading', { name: hook }).waitFor();
  await page.getByText(/last answered 500/).waitFor();
  await page.getByRole('button', { name: `Retry license.created to ${hook}` }).click();
  await page.getByText('The license.created message will be sent again now.').waitFor();
  await new Promise((resolve) => { const wait = () => (received.length >= 2 ? resolve() : setTimeout(wait, 50)); wait(); });
  assert.equal(received[1].type, 'license.created');
  await page.getByRole('button', { name: 'Show Stripe deliveries and webhook endpoints' }).click();
  await page.getByRole('heading', { name: hook }).locator('xpath=following-sibling::ul[1]').getByText('Delivered').waitFor();

  await page.getByRole('button', { name: /^Replay evt_browser_/ }).first().click();
  await page.getByText(/^Replayed evt_browser_\d+: /).waitFor();
  assert.deepEqual(await seriousViolations(page), []);
  await screenshots(page, 'console-deliveries');
  await page.context().close();
});
