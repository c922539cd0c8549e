// A real billing-server for the binding's tests: built with cargo, started
// as a process on a fresh PostgreSQL database with its own signing key and
// plans, stopped and dropped afterwards.
'use strict'

const { execFileSync, spawn } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..', '..')
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target')
const BINARY = path.join(TARGET, 'debug', process.platform === 'win32' ? 'billing-server.exe' : 'billing-server')
const ADMIN_URL = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432'
const WEBHOOK_SECRET = 'whsec_node_tests'
const JWT_SECRET = 'node-tests-jwt-secret-long-enough'
/** How long a test waits for something asynchronous before failing. */
const DEADLINE_MS = 30_000

function buildServer() {
  execFileSync('cargo', ['build', '-p', 'billing-server'], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] })
}

function psql(sql) {
  execFileSync('psql', [`${ADMIN_URL}/postgres`, '-v', 'ON_ERROR_STOP=1', '-qc', sql], { stdio: ['ignore', 'ignore', 'inherit'] })
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

const b64url = (value) => Buffer.from(value).toString('base64url')

function jwtFor(userId) {
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(
    JSON.stringify({ sub: userId, exp: Math.floor(Date.now() / 1000) + 600 }),
  )}`
  return `${input}.${crypto.createHmac('sha256', JWT_SECRET).update(input).digest('base64url')}`
}

function subscription(user, price, cancelAtPeriodEnd) {
  const now = Math.floor(Date.now() / 1000)
  return {
    id: `sub_${user}`, object: 'subscription', customer: `cus_${user}`, status: 'active',
    cancel_at_period_end: cancelAtPeriodEnd, cancel_at: null, canceled_at: null, ended_at: null,
    trial_end: null, metadata: { user_id: user }, created: now - 3600,
    items: { object: 'list', data: [{
      id: `si_${user}`, object: 'subscription_item', price: { id: price, object: 'price' },
      current_period_start: now - 60, current_period_end: now + 30 * 24 * 3600,
    }] },
  }
}

let eventSeq = 0

class TestServer {
  /** `env`: extra environment for the server process. */
  constructor(env = {}) {
    this.extraEnv = env
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'license-client-node-'))
    this.database = `license_client_node_${crypto.randomUUID().replaceAll('-', '')}`
    this.child = null
    this.url = null
  }

  /** Creates the database, key and plans, then starts the server. */
  async setUp() {
    buildServer()
    psql(`CREATE DATABASE ${this.database}`)
    this.keyPath = path.join(this.dir, 'signing-key.pem')
    execFileSync(BINARY, ['keygen', '--out', this.keyPath], { stdio: 'ignore' })
    this.plansPath = path.join(this.dir, 'plans.toml')
    fs.writeFileSync(
      this.plansPath,
      '[[plans]]\nid = "pro"\nname = "Pro"\nstripe_price_id = "price_pro"\nmax_devices = 2\nfeatures = ["export"]\n',
    )
    this.port = await freePort()
    this.url = `http://127.0.0.1:${this.port}`
    await this.start()
  }

  /** Starts (or restarts, on the same port) the server process. */
  async start() {
    const env = {
      ...process.env,
      DATABASE_URL: `${ADMIN_URL}/${this.database}`,
      BILLING_ADDR: `127.0.0.1:${this.port}`,
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      BILLING_JWT_SECRET: JWT_SECRET,
      BILLING_PLANS: this.plansPath,
      BILLING_LICENSE_SIGNING_KEY: this.keyPath,
      BILLING_DATA_DIR: path.join(this.dir, 'data'),
      RUST_LOG: process.env.RUST_LOG || 'warn',
      ...this.extraEnv,
    }
    this.child = spawn(BINARY, ['serve'], { cwd: this.dir, env, stdio: ['ignore', 'ignore', 'inherit'] })
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    this.exited = exited
    const deadline = Date.now() + DEADLINE_MS
    // Poll readiness: the process gives no other signal that it listens.
    for (;;) {
      try {
        const response = await fetch(`${this.url}/healthz`)
        if (response.ok) return
      } catch {}
      if (this.child.exitCode !== null) throw new Error(`billing-server exited with ${this.child.exitCode}`)
      if (Date.now() > deadline) throw new Error('billing-server did not become ready')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  /** Stops the server process and waits for it to exit. */
  async stop() {
    if (!this.child) return
    this.child.kill('SIGTERM')
    await this.exited
    this.child = null
  }

  /** Stops everything and removes the database and files. */
  async tearDown() {
    await this.stop()
    psql(`DROP DATABASE IF EXISTS ${this.database} WITH (FORCE)`)
    fs.rmSync(this.dir, { recursive: true, force: true })
  }

  async postWebhook(type, object) {
    eventSeq += 1
    const now = Math.floor(Date.now() / 1000)
    const body = JSON.stringify({
      id: `evt_node_${eventSeq}`, object: 'event', type, created: now + eventSeq, api_version: '2025-03-31.basil',
      livemode: false, pending_webhooks: 1, data: { object },
    })
    const signature = crypto.createHmac('sha256', WEBHOOK_SECRET).update(`${now}.${body}`).digest('hex')
    const response = await fetch(`${this.url}/api/stripe/webhooks/handler`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': `t=${now},v1=${signature}` },
      body,
    })
    if (!response.ok) throw new Error(`webhook refused: ${response.status} ${await response.text()}`)
  }

  /** Creates an active subscription for `user` and returns its license key. */
  async issueLicense(user) {
    await this.postWebhook('customer.subscription.created', subscription(user, 'price_pro', false))
    const response = await fetch(`${this.url}/api/licenses`, { headers: { authorization: `Bearer ${jwtFor(user)}` } })
    const { licenses } = await response.json()
    return licenses[0].key
  }

  /** A new admin API token with these scopes, made as a vendor would: with the CLI. */
  adminToken(scopes) {
    const out = execFileSync(BINARY, ['admin-token', 'create', '--name', `node-${crypto.randomUUID()}`, '--scopes', scopes], {
      env: { ...process.env, DATABASE_URL: `${ADMIN_URL}/${this.database}`, BILLING_DATA_DIR: path.join(this.dir, 'data') },
      encoding: 'utf8',
    })
    return out.trim().split('\n').pop()
  }

  /** Issues `user` a perpetual license of pro whose updates end at `updatesUntil` (RFC 3339); its key. */
  async issuePerpetual(user, updatesUntil) {
    const response = await fetch(`${this.url}/api/admin/licenses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${this.adminToken('licenses:write')}` },
      body: JSON.stringify({ user_id: user, plan: 'pro', kind: 'perpetual', updates_until: updatesUntil }),
    })
    if (response.status !== 201) throw new Error(`issue refused: ${response.status} ${await response.text()}`)
    return (await response.json()).license.key
  }

  /** Flips `cancel_at_period_end` on `user`'s subscription. */
  async setCancelAtPeriodEnd(user, cancel) {
    await this.postWebhook('customer.subscription.updated', subscription(user, 'price_pro', cancel))
  }

  /** The customer's devices, as the dashboard lists them. */
  async terminals(user) {
    const response = await fetch(`${this.url}/api/terminals`, { headers: { authorization: `Bearer ${jwtFor(user)}` } })
    if (!response.ok) throw new Error(`terminal listing failed: ${response.status}`)
    return (await response.json()).terminals
  }

  /** Deactivates a device from the customer's dashboard. */
  async deleteTerminal(user, deviceId) {
    const response = await fetch(`${this.url}/api/terminals/${deviceId}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${jwtFor(user)}` },
    })
    if (!response.ok) throw new Error(`terminal deletion failed: ${response.status}`)
  }

  /** Pastes an air-gapped machine's request into `user`'s dashboard: (HTTP status, answer). */
  async activateOffline(user, request) {
    const response = await fetch(`${this.url}/api/terminals/offline-activation`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${jwtFor(user)}` },
      body: JSON.stringify({ request }),
    })
    return [response.status, await response.json()]
  }

  async publicKeyJson() {
    return (await fetch(`${this.url}/api/license/public-key`)).text()
  }

  /** A fresh store directory for one client. */
  storePath(name) {
    return path.join(this.dir, `store-${name}`)
  }
}

/** Collects subscription callbacks; `next(pred)` waits for a matching one. */
class Inbox {
  constructor() {
    this.items = []
    this.waiters = []
    this.push = (item) => {
      this.items.push(item)
      this.waiters = this.waiters.filter((w) => !w())
    }
  }

  next(what, predicate) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${DEADLINE_MS} ms`)), DEADLINE_MS)
      const check = () => {
        const index = this.items.findIndex(predicate)
        if (index < 0) return false
        clearTimeout(timer)
        resolve(this.items.splice(0, index + 1)[index])
        return true
      }
      if (!check()) this.waiters.push(check)
    })
  }
}

module.exports = { TestServer, Inbox, DEADLINE_MS }
