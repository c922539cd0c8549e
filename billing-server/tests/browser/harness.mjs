// A real billing-server for the browser tests, on the embedded SQLite store,
// with Stripe replaced at the HTTP boundary by a small fake that records
// every request (method, path, form body, idempotency key) and answers like
// Stripe for the calls the portal triggers. Also: the system's Chromium
// through playwright-core, and axe-core.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import AxeBuilder from '@axe-core/playwright';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
const BINARY = path.join(TARGET, 'debug', 'billing-server');
const WEBHOOK_SECRET = 'whsec_browser_tests';
const JWT_SECRET = 'browser-tests-jwt-secret-long-enough';
export const SCREENSHOTS = path.join(ROOT, 'docs', 'screenshots');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const PRICE_PRO = 'price_pro_monthly';
export const PRICE_TEAM = 'price_team_monthly';

const PLANS = `
[[plans]]
id = "pro"
name = "Pro"
stripe_price_id = "${PRICE_PRO}"
max_devices = 3
amount = 1999
currency = "usd"
interval = "month"
features = ["Export", "Priority support"]

[[plans]]
id = "team"
name = "Team"
stripe_price_id = "${PRICE_TEAM}"
max_devices = 10
amount = 4900
currency = "eur"
interval = "month"
features = ["Everything in Pro", "Shared seats"]

[[plans]]
id = "studio"
name = "Studio"
stripe_price_id = "price_studio_once"
max_devices = 2
amount = 19900
currency = "gbp"
kind = "perpetual"
updates_months = 12
`;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const now = () => Math.floor(Date.now() / 1000);

/** A Stripe subscription in the basil shape (the period on the item). */
export function subscription(user, price, { status = 'active', cancelAtPeriodEnd = false } = {}) {
  return {
    id: `sub_${user}`, object: 'subscription', customer: `cus_${user}`, status,
    cancel_at_period_end: cancelAtPeriodEnd, cancel_at: null, canceled_at: null, ended_at: null,
    trial_end: null, metadata: { user_id: user }, created: now() - 3600,
    items: { object: 'list', data: [{
      id: `si_${user}`, object: 'subscription_item', price: { id: price, object: 'price' },
      current_period_start: now() - 86400, current_period_end: now() + 29 * 86400,
    }] },
  };
}

/** The fake Stripe: subscriptions it knows, and every request it got. */
export class FakeStripe {
  constructor() {
    this.subscriptions = new Map();
    this.requests = [];
    this.server = http.createServer((req, res) => this.answer(req, res));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
  }

  stop() {
    return new Promise((resolve) => this.server.close(resolve));
  }

  /** The requests to `path` (and `method`), in order. */
  requestsTo(method, path) {
    return this.requests.filter((r) => r.method === method && r.path === path);
  }

  answer(req, res) {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://stripe.test');
      const record = {
        method: req.method,
        path: url.pathname,
        query: url.search,
        body,
        form: [...new URLSearchParams(body)],
        idempotencyKey: req.headers['idempotency-key'] || null,
        authorization: req.headers.authorization || null,
      };
      this.requests.push(record);
      const reply = (status, value) => {
        res.writeHead(status, { 'content-type': 'application/json', 'request-id': `req_${this.requests.length}` });
        res.end(JSON.stringify(value));
      };
      const sub = url.pathname.match(/^\/v1\/subscriptions\/([^/]+)$/);
      if (sub && this.subscriptions.has(sub[1])) {
        const object = this.subscriptions.get(sub[1]);
        if (req.method === 'POST') {
          for (const [name, value] of record.form) {
            if (name === 'cancel_at_period_end') object.cancel_at_period_end = value === 'true';
            if (name === 'items[0][price]') object.items.data[0].price = { id: value, object: 'price' };
          }
        }
        return reply(200, object);
      }
      const customer = url.pathname.match(/^\/v1\/customers\/([^/]+)$/);
      if (customer && req.method === 'GET') {
        return reply(200, {
          id: customer[1], object: 'customer',
          invoice_settings: { default_payment_method: { id: 'pm_1', object: 'payment_method', card: { brand: 'visa', last4: '4242', exp_month: 4, exp_year: 2031 } } },
        });
      }
      if (url.pathname === '/v1/checkout/sessions' && req.method === 'POST') {
        const id = `cs_test_${this.requests.length}`;
        return reply(200, { id, object: 'checkout.session', url: `${this.url}/checkout-page/${id}` });
      }
      if (url.pathname.startsWith('/checkout-page/') || url.pathname === '/billing-portal-page') {
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end(`<!doctype html><title>Stripe page</title><h1>Stripe ${url.pathname}</h1>`);
      }
      if (url.pathname === '/v1/billing_portal/sessions' && req.method === 'POST') {
        return reply(200, { id: 'bps_1', object: 'billing_portal.session', url: `${this.url}/billing-portal-page` });
      }
      reply(404, { error: { type: 'invalid_request_error', message: `fake Stripe has no ${req.method} ${url.pathname}` } });
    });
  }
}

let eventSeq = 0;

/** A billing-server process on its own embedded store. */
export class TestServer {
  constructor(stripe) {
    this.stripe = stripe;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'billing-browser-'));
  }

  /** Builds the binary, creates an admin token, starts the server. */
  async start() {
    execFileSync('cargo', ['build', '-p', 'billing-server'], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    fs.writeFileSync(path.join(this.dir, 'plans.toml'), PLANS);
    this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.env = {
      ...process.env,
      DATABASE_URL: '',
      BILLING_ADDR: `127.0.0.1:${this.port}`,
      BILLING_PUBLIC_URL: this.url,
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      STRIPE_SECRET_KEY: 'sk_test_browser',
      STRIPE_API_BASE: this.stripe.url,
      BILLING_JWT_SECRET: JWT_SECRET,
      BILLING_PLANS: path.join(this.dir, 'plans.toml'),
      BILLING_DATA_DIR: path.join(this.dir, 'data'),
      RUST_LOG: process.env.RUST_LOG || 'warn',
      // The tests' webhook receiver is on 127.0.0.1; a failed attempt is
      // tried again only when asked (the console's Retry).
      BILLING_WEBHOOK_ALLOW_PRIVATE: 'true',
      BILLING_WEBHOOK_RETRY_SCHEDULE: '3600',
    };
    delete this.env.DATABASE_URL;
    this.adminToken = this.createAdminToken('browser-tests', '*');
    await this.spawn();
  }

  /** Starts the process and waits until it answers. */
  async spawn() {
    this.child = spawn(BINARY, ['serve'], { cwd: this.dir, env: this.env, stdio: ['ignore', 'ignore', 'inherit'] });
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch { /* not listening yet */ }
      if (this.child.exitCode !== null) throw new Error(`billing-server exited with ${this.child.exitCode}`);
      if (Date.now() > deadline) throw new Error('billing-server did not become ready');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** `billing-server admin-token create`, as an operator would run it. */
  createAdminToken(name, scopes) {
    const out = execFileSync(BINARY, ['admin-token', 'create', '--name', name, '--scopes', scopes], {
      cwd: this.dir, env: this.env, encoding: 'utf8',
    });
    return out.trim().split('\n').pop().trim();
  }

  /** Stops the process (the store stays). */
  async kill() {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    await this.exited;
    this.child = null;
  }

  async stop() {
    await this.kill();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Runs SQL on the embedded store (python's sqlite3: WAL lets it write
   * beside the running server). */
  sql(statement) {
    const db = path.join(this.dir, 'data', 'billing.sqlite3');
    execFileSync('python3', ['-c', 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()', db, statement]);
  }

  async json(method, pathname, { token, body, status } = {}) {
    const headers = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${this.url}${pathname}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    if (status !== undefined && response.status !== status) throw new Error(`${method} ${pathname}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** A signed Stripe webhook, as Stripe sends it. */
  async webhook(type, object) {
    eventSeq += 1;
    const created = now() + eventSeq;
    const body = JSON.stringify({
      id: `evt_browser_${eventSeq}`, object: 'event', type, created, api_version: '2025-03-31.basil',
      livemode: false, pending_webhooks: 1, data: { object },
    });
    const t = now();
    const signature = crypto.createHmac('sha256', WEBHOOK_SECRET).update(`${t}.${body}`).digest('hex');
    const response = await fetch(`${this.url}/api/stripe/webhooks/handler`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': `t=${t},v1=${signature}` },
      body,
    });
    if (!response.ok) throw new Error(`webhook refused: ${response.status} ${await response.text()}`);
  }

  /** A subscribed customer: the subscription (also known to the fake
   * Stripe), a paid invoice; returns the license key. */
  async subscribe(user, price = PRICE_PRO) {
    const object = subscription(user, price);
    this.stripe.subscriptions.set(object.id, object);
    await this.webhook('customer.subscription.created', object);
    await this.webhook('invoice.paid', {
      id: `in_${user}`, object: 'invoice', customer: `cus_${user}`, currency: 'usd', amount_paid: 1999, amount_due: 1999,
      parent: { subscription_details: { subscription: object.id } }, status_transitions: { paid_at: now() - 60 },
    });
    const licenses = await this.json('GET', `/api/admin/licenses?user_id=${user}`, { token: this.adminToken, status: 200 });
    return licenses.licenses[0].key;
  }

  async activate(key, fingerprint, name) {
    return this.json('POST', '/api/license/activate', {
      body: { license_key: key, fingerprint, name, platform: 'linux', app_version: '2.4.0' },
    });
  }

  /** A portal session URL for `user`. */
  async portalUrl(user) {
    const created = await this.json('POST', '/api/admin/portal-sessions', {
      token: this.adminToken, body: { user_id: user, return_url: 'https://app.example.com/account' }, status: 201,
    });
    return created.url;
  }
}

/** A dashboard JWT for `user`, as the vendor's own app would sign it. */
export function dashboardJwt(user, secondsValid = 600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: now() + secondsValid })}`;
  return `${input}.${crypto.createHmac('sha256', JWT_SECRET).update(input).digest('base64url')}`;
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

/** Serious or critical axe-core violations of the page as it is now. */
export async function seriousViolations(page) {
  const results = await new AxeBuilder({ page }).analyze();
  return results.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

/** Screenshots of the page at 375 px and 1,280 px wide, as
 * docs/screenshots/<name>-<width>.png; fails when the page is wider than
 * the window (only tables may scroll, inside their own box). */
export async function screenshots(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const original = page.viewportSize();
  for (const width of [375, 1280]) {
    await page.setViewportSize({ width, height: 900 });
    const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
    if (scrollWidth > width) throw new Error(`${name} is ${scrollWidth} px wide in a ${width} px window`);
    await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-${width}.png`), fullPage: true, animations: 'disabled' });
  }
  await page.setViewportSize(original);
}
