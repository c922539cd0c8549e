// A vendor's webhook receiver for the integration tests. It verifies every
// message with the `standardwebhooks` library (not our code) and prints one
// JSON line per request on stdout, so the test sees exactly what arrived.
//
//   node receiver.js --secret whsec_... [--port N] [--fail N] [--hang]
//
// --fail N: answer 500 to the first N requests, then 200.
// --hang:   accept every request and never answer.
// The first line printed is {"listening": port}.
"use strict";
const http = require("node:http");
const { Webhook } = require("standardwebhooks");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i === -1) return fallback;
  return process.argv[i + 1];
}

const secret = option("secret");
if (!secret) {
  console.error("--secret is required");
  process.exit(2);
}
const port = Number(option("port", "0"));
let failuresLeft = Number(option("fail", "0"));
const hang = process.argv.includes("--hang");
const webhook = new Webhook(secret);

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const headers = {
      "webhook-id": request.headers["webhook-id"] ?? "",
      "webhook-timestamp": request.headers["webhook-timestamp"] ?? "",
      "webhook-signature": request.headers["webhook-signature"] ?? "",
    };
    let verified = false;
    let payload = null;
    let error = null;
    try {
      payload = webhook.verify(body, headers);
      verified = true;
    } catch (e) {
      error = String(e && e.message ? e.message : e);
    }
    let status = null;
    if (!hang) {
      status = failuresLeft > 0 ? 500 : 200;
      if (failuresLeft > 0) failuresLeft -= 1;
    }
    process.stdout.write(
      JSON.stringify({
        id: headers["webhook-id"],
        timestamp: headers["webhook-timestamp"],
        content_type: request.headers["content-type"] ?? null,
        method: request.method,
        path: request.url,
        verified,
        error,
        payload,
        answered: status,
      }) + "\n",
    );
    if (status !== null) {
      response.writeHead(status, { "content-type": "text/plain" });
      response.end(status === 200 ? "ok" : "try again");
    }
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + "\n");
});
