'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { isMainThread } = require('node:worker_threads')
const { LicenseClient, Subscription } = require('..')
const { TestServer, Inbox, DEADLINE_MS } = require('./harness.js')

const server = new TestServer()
let key

before(async () => {
  await server.setUp()
  key = await server.issueLicense('alice')
})

after(async () => {
  await server.tearDown()
})

const client = (name, options = {}) =>
  new LicenseClient({ serverUrl: server.url, storePath: server.storePath(name), appSalt: `node-tests/${name}`, ...options })

test('activates, validates, beats and deactivates online, pinning the server key', async () => {
  const c = client('laptop', { appVersion: '2.0.0' })
  assert.equal(c.activated, false)
  assert.equal(c.license, null)
  const pending = c.activate(key, { name: 'Work laptop' })
  assert.ok(pending instanceof Promise, 'async work returns a Promise at once')
  const activation = await pending
  assert.equal(activation.created, true)
  assert.equal(activation.deviceId, activation.device.id)
  assert.equal(activation.device.name, 'Work laptop')
  assert.equal(activation.device.appVersion, '2.0.0')
  assert.equal(activation.device.fingerprint, c.fingerprint)
  assert.deepEqual(
    [activation.license.plan, activation.license.maxDevices, activation.license.entitlements],
    ['pro', 2, ['export']],
  )
  assert.equal(c.activated, true)

  const verdict = await c.validate()
  assert.deepEqual([verdict.valid, verdict.code, verdict.offline], [true, 'VALID', false])
  const beat = await c.heartbeat()
  assert.equal(beat.device.alive, true)
  assert.equal(beat.heartbeatWindowSecs, 600)

  // A client with the key built in verifies the same certificates.
  const pinned = client('laptop', { publicKey: await server.publicKeyJson() })
  assert.equal(pinned.validateOffline().valid, true)

  const device = await c.deactivate()
  assert.equal(device.status, 'deactivated')
  assert.equal(c.activated, false)
  assert.equal((await c.validate()).code, 'NOT_ACTIVATED')
  await assert.rejects(c.heartbeat(), { code: 'NOT_ACTIVATED' })
  assert.equal(await c.deactivate(), null)
})

test('refusals reject with an Error carrying the server code', async () => {
  const c = client('refusals')
  await assert.rejects(c.activate('AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA'), (error) => {
    assert.ok(error instanceof Error)
    assert.equal(error.code, 'LICENSE_NOT_FOUND')
    return true
  })
  assert.throws(() => new LicenseClient({ serverUrl: 'ftp://nope', storePath: server.storePath('bad') }), {
    code: 'INVALID_SERVER_URL',
  })
  assert.throws(() => c.startHeartbeat(), { code: 'NOT_ACTIVATED' })
})

test('events arrive on the JS thread with refreshed state, and a refused stream stops', async () => {
  const c = client('desktop')
  const { deviceId } = await c.activate(key, { name: 'Desktop' })
  const inbox = new Inbox()
  const sub = c.subscribe((event) => {
    assert.ok(isMainThread, 'callbacks run on the JS thread')
    inbox.push(event)
  })
  assert.ok(sub instanceof Subscription)
  await inbox.next('connection', (e) => e.type === 'connected')

  await server.setCancelAtPeriodEnd('alice', true)
  const event = await inbox.next('subscription.updated', (e) => e.type === 'subscription.updated')
  assert.match(event.id, /^\d+$/)
  assert.equal(event.data.cancel_at_period_end, true)
  assert.deepEqual([event.state.valid, event.state.code, event.state.offline], [true, 'VALID', false])
  sub.close()
  assert.equal(sub.closed, true)

  // Removed from the dashboard: the next stream is refused and stops by itself.
  await server.deleteTerminal('alice', deviceId)
  const refused = c.subscribe(inbox.push)
  const stop = await inbox.next('stop', (e) => e.type === 'stopped')
  assert.equal(stop.code, 'UNAUTHORIZED')
  assert.equal(stop.state.code, 'NOT_ACTIVATED')
  assert.equal(refused.closed, true)
})

test('background heartbeats reach the server until stopped', async () => {
  // A server of its own, with a 3 s window: the loop beats about every second.
  const quick = new TestServer({ BILLING_HEARTBEAT_WINDOW_SECS: '3' })
  await quick.setUp()
  try {
    const c = new LicenseClient({ serverUrl: quick.url, storePath: quick.storePath('beats'), appSalt: 'node-tests/beats' })
    const { deviceId } = await c.activate(await quick.issueLicense('bob'))
    const lastSeen = async () => (await quick.terminals('bob')).find((t) => t.id === deviceId).last_seen_at
    const activatedAt = await lastSeen()
    c.startHeartbeat()
    assert.equal(c.heartbeatRunning, true)
    const deadline = Date.now() + DEADLINE_MS
    while ((await lastSeen()) === activatedAt) {
      assert.ok(Date.now() < deadline, 'no background heartbeat reached the server')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    c.stopHeartbeat()
    assert.equal(c.heartbeatRunning, false)
    await new Promise((resolve) => setTimeout(resolve, 200)) // a beat already sent may still land
    const stoppedAt = await lastSeen()
    await new Promise((resolve) => setTimeout(resolve, 1500))
    assert.equal(await lastSeen(), stoppedAt, 'no beat after stopping')
    await c.deactivate()
  } finally {
    await quick.tearDown()
  }
})

test('validation falls back to the stored certificate when the server is down', async () => {
  const c = client('offline')
  await c.activate(key)
  await server.stop()
  try {
    const verdict = await c.validate()
    assert.deepEqual([verdict.valid, verdict.code, verdict.offline], [true, 'VALID', true])
    assert.equal(verdict.license.plan, 'pro')
    await assert.rejects(c.heartbeat(), { code: 'NETWORK' })
  } finally {
    await server.start()
  }
  assert.equal((await c.validate()).offline, false, 'online again once the server is back')
})

test('validate() reports updatesUntil and refuses a build released after it, online and offline', async () => {
  const day = 24 * 3600 * 1000
  const until = new Date(Math.floor(Date.now() / 1000) * 1000 - 30 * day)
  const key = await server.issuePerpetual('carol', until.toISOString())
  const newer = client('perpetual', { appReleasedAt: new Date(until.getTime() + day).toISOString() })
  await newer.activate(key)
  const verdict = await newer.validate()
  assert.deepEqual([verdict.valid, verdict.code, verdict.offline], [false, 'UPDATES_EXPIRED', false])
  assert.equal(Date.parse(verdict.updatesUntil), until.getTime())
  assert.equal(verdict.license.kind, 'perpetual')
  assert.equal(Date.parse(verdict.license.updatesUntil), until.getTime())
  assert.equal(verdict.license.trial, false)
  const offline = newer.validateOffline()
  assert.deepEqual([offline.valid, offline.code, offline.offline], [false, 'UPDATES_EXPIRED', true])

  // The same machine running a build released on the window's last day.
  const older = client('perpetual', { appReleasedAt: until.toISOString() })
  assert.equal((await older.validate()).valid, true)
  assert.equal(older.validateOffline().valid, true, 'the certificate carries the window')

  // A subscription's license has no window.
  const plain = client('no-window', { appReleasedAt: new Date().toISOString() })
  await plain.activate(await server.issueLicense('dave'))
  const open = await plain.validate()
  assert.deepEqual([open.valid, open.updatesUntil ?? null, open.license.kind], [true, null, 'subscription'])

  assert.throws(() => client('bad-date', { appReleasedAt: 'yesterday' }), { code: 'INVALID_RELEASE_DATE' })
})

test('an air-gapped machine activates through the dashboard and validates with no server', async () => {
  const publicKey = await server.publicKeyJson()
  const key = await server.issueLicense('erin')
  // The machine never reaches a server: nothing listens at its serverUrl.
  const airGapped = (name) =>
    new LicenseClient({ serverUrl: 'http://127.0.0.1:9', storePath: server.storePath(name), appSalt: 'node-tests/air', publicKey })
  const machine = airGapped('air-gapped')
  const request = machine.offlineActivationRequest(key, { name: 'Lab bench' })
  assert.equal(typeof request, 'string')
  assert.ok(request.startsWith('oar1.') && !request.includes(key), 'the key never leaves the machine')
  assert.equal(machine.activated, false)
  assert.throws(() => machine.offlineActivationRequest('not a key'), { code: 'INVALID_LICENSE_KEY' })

  const [status, answer] = await server.activateOffline('erin', request)
  assert.equal(status, 201, JSON.stringify(answer))
  assert.equal(answer.device.air_gapped, true)
  const [someoneElse] = await server.activateOffline('mallory', request)
  assert.equal(someoneElse, 404, "another user's dashboard cannot use it")

  // A response for another machine, or tampered with, is refused.
  const elsewhere = new LicenseClient({
    serverUrl: 'http://127.0.0.1:9', storePath: server.storePath('elsewhere'), appSalt: 'node-tests/elsewhere', publicKey,
  })
  elsewhere.offlineActivationRequest(key)
  assert.throws(() => elsewhere.importOfflineActivation(answer.response), { code: 'FINGERPRINT_MISMATCH' })
  const [header, payload, signature] = answer.response.split('.')
  const forged = `${header}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url')), max_devices: 99 })).toString('base64url')}.${signature}`
  assert.throws(() => machine.importOfflineActivation(forged), { code: 'INVALID_CERTIFICATE' })

  const imported = machine.importOfflineActivation(answer.response)
  assert.equal(imported.deviceId, answer.device.id)
  assert.deepEqual([imported.device.airGapped, imported.device.name, imported.license.plan], [true, 'Lab bench', 'pro'])
  assert.equal(imported.certificateExpiresAt, Math.floor(Date.parse(answer.expires_at) / 1000))

  await server.stop()
  try {
    const verdict = await machine.validate()
    assert.deepEqual([verdict.valid, verdict.code, verdict.offline], [true, 'VALID', true])
    assert.equal(verdict.updatesUntil ?? null, null)
    const reopened = airGapped('air-gapped')
    assert.equal((await reopened.validate()).valid, true, 'kept across restarts')
    await assert.rejects(machine.heartbeat(), { code: 'AIR_GAPPED' })
  } finally {
    await server.start()
  }
  const terminals = await server.terminals('erin')
  assert.deepEqual(terminals.map((t) => [t.id, t.air_gapped, t.status]), [[answer.device.id, true, 'active']])
})
