// @supabase/stripe-sync-engine behind a minimal HTTP server, so that
// billing-server's `stripe_sync_h2h` bench can drive it with the same load
// generator, the same signed bytes and the same PostgreSQL as billing-server.
//
// POST /webhook: the engine's own `StripeSync.processWebhook(body, signature)`
// (stripe-node's `constructEventAsync` verifies the Stripe-Signature, then
// the engine upserts what the event carries). 200 once it resolved, which is
// after its statements committed (it runs them on its pool in autocommit);
// 400 when the signature is refused; 500 on any other error.
// GET /stats: how many Stripe API requests the engine attempted (the bench
// expects 0: nothing here can reach Stripe, and the workload must not need it).
//
// Configuration (environment):
//   DATABASE_URL    the engine's database (required); migrated at start-up
//   WEBHOOK_SECRET  the whsec_... secret the bench signs with (required)
//   POOL_MAX        the engine's pg pool size (default: the engine's own, 10)
//
// Prints one line `{"port":N}` on stdout once it listens on 127.0.0.1.
'use strict';

const http = require('node:http');
const { StripeSync, runMigrations } = require('@supabase/stripe-sync-engine');
const pg = require('pg');

const SCHEMA = 'stripe';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return value;
}

async function main() {
  const databaseUrl = required('DATABASE_URL');
  const webhookSecret = required('WEBHOOK_SECRET');

  await runMigrations({ databaseUrl, schema: SCHEMA });
  // runMigrations logs and swallows its errors: check that it did its job.
  const check = new pg.Client({ connectionString: databaseUrl });
  await check.connect();
  const { rows } = await check.query("SELECT to_regclass('stripe.subscriptions') IS NOT NULL AS ok");
  await check.end();
  if (!rows[0].ok) throw new Error('runMigrations did not create stripe.subscriptions');

  const poolConfig = { connectionString: databaseUrl };
  if (process.env.POOL_MAX) poolConfig.max = Number(process.env.POOL_MAX);
  const sync = new StripeSync({
    poolConfig,
    // Never used: with no revalidation, no list expansion and no backfill,
    // the subscription handler trusts the payload and calls no Stripe API.
    stripeSecretKey: 'sk_test_placeholder_never_used',
    stripeWebhookSecret: webhookSecret,
    revalidateObjectsViaStripeApi: [],
    autoExpandLists: false,
    backfillRelatedEntities: false,
  });
  let stripeApiRequests = 0;
  sync.stripe.on('request', () => {
    stripeApiRequests += 1;
  });

  const server = http.createServer((req, res) => {
    const answer = (status, body) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/stats') {
      answer(200, { stripe_api_requests: stripeApiRequests });
      return;
    }
    if (req.method !== 'POST' || req.url !== '/webhook') {
      answer(404, { error: { code: 'not_found', message: 'no such route' } });
      return;
    }
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      sync
        .processWebhook(body, req.headers['stripe-signature'])
        .then(() => answer(200, { received: true }))
        .catch((err) => {
          const refused = err && err.type === 'StripeSignatureVerificationError';
          answer(refused ? 400 : 500, {
            error: { code: refused ? 'invalid_signature' : 'processing_failed', message: String(err && err.message) },
          });
        });
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
  });
  // The bench closes our stdin when it is done (or dies): exit with it.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
