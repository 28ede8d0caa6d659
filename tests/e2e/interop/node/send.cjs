// Sends mail composed by nodemailer through one pooled SMTP transport (STARTTLS,
// AUTH), for tests/e2e/interop_e2e.py.
//
// stdin: {"host", "port", "user", "pass", "messages": [{"message": nodemailer message
// object, "envelope": {"from", "to": [...]}}]}
// stdout: one JSON line per message: {"messageId", "raw" (base64 of the exact bytes
// sent), "response", "accepted"}, or {"error"} and exit status 1.
//
// Each message is built with nodemailer's MailComposer first so that the test knows
// the bytes it must find in the delivered copy; those bytes go out as `raw` through
// the pool with the given envelope.
"use strict";

const nodemailer = require("nodemailer");
const MailComposer = require("nodemailer/lib/mail-composer");

async function main() {
    let input = "";
    for await (const chunk of process.stdin) input += chunk;
    const job = JSON.parse(input);
    const transport = nodemailer.createTransport({
        pool: true,
        maxConnections: 2,
        maxMessages: 100,
        host: job.host,
        port: job.port,
        secure: false,
        requireTLS: true,
        name: "nodemailer.client.test",
        auth: { user: job.user, pass: job.pass },
        tls: { rejectUnauthorized: false }, // Outpost's self-signed certificate
        connectionTimeout: 30000,
        greetingTimeout: 30000,
        socketTimeout: 30000,
    });
    try {
        const sends = job.messages.map(async ({ message, envelope }) => {
            const raw = await new MailComposer(message).compile().build();
            const info = await transport.sendMail({ envelope, raw });
            return {
                messageId: message.messageId,
                raw: raw.toString("base64"),
                response: info.response,
                accepted: info.accepted,
            };
        });
        for (const result of await Promise.all(sends)) {
            process.stdout.write(JSON.stringify(result) + "\n");
        }
    } finally {
        transport.close();
    }
}

main().catch((e) => {
    process.stdout.write(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }) + "\n");
    process.exit(1);
});
