// The vendor console in a real browser: sign in with an admin token, find a
// license by a device's fingerprint, revoke it, and watch the customer's
// portal (another browser context, as the customer) show it revoked live.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US', timezoneId: 'UTC' });
  return context.newPage();
}

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
