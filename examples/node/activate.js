// Activates this machine with the license-client Node binding, validates,
// then listens to license events until Ctrl-C (with heartbeats running).
//
//   (cd license-client/node && npm install && npm run build)
//   node examples/node/activate.js http://127.0.0.1:8080 ABCD-EFGH-…
'use strict'

const os = require('node:os')
const path = require('node:path')
const { LicenseClient } = require('../../license-client/node')

async function main() {
  const [serverUrl = 'http://127.0.0.1:8080', licenseKey] = process.argv.slice(2)
  const client = new LicenseClient({
    serverUrl,
    storePath: path.join(os.homedir(), '.example-node-app', 'license'),
    appSalt: 'com.example.node-app',
    appVersion: '1.0.0',
    // publicKey: '<the vendor key, built into the app>',  // else fetched and pinned on first activation
  })

  if (!client.activated) {
    if (!licenseKey) throw Object.assign(new Error('pass a license key to activate'), { code: 'USAGE' })
    const activation = await client.activate(licenseKey, { name: os.hostname() })
    console.log(`activated device ${activation.deviceId} on plan ${activation.license.plan}`)
  }

  const verdict = await client.validate()
  console.log(`license ${verdict.valid ? 'valid' : 'NOT valid'} (${verdict.code}${verdict.offline ? ', offline' : ''})`)
  if (!verdict.valid) process.exitCode = 1

  client.startHeartbeat()
  const subscription = client.subscribe((event) => {
    if (event.type === 'stopped') console.log(`event stream stopped: ${event.code}`)
    else if (event.state) console.log(`${event.type}: license now ${event.state.code}`, event.data)
    else console.log(event.type)
  })

  process.once('SIGINT', () => {
    subscription.close()
    client.stopHeartbeat()
  })
}

main().catch((error) => {
  console.error(`${error.code ?? 'ERROR'}: ${error.message}`)
  process.exitCode = 1
})
