import { createHmac } from "node:crypto";
import { createServer, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { expect, test } from "@playwright/test";
import { PASSWORD, logIn, recordUsage, tally, uniqueEmail, waitForHydration } from "./support";

test("two pages of one user follow usage recorded through the API, without reloading", async ({ browser, request }) => {
  const email = uniqueEmail("live");
  tally("user", "create", "--email", email, "--limit", "1000");
  const context = await browser.newContext();
  const first = await context.newPage();
  await logIn(first, email);
  await expect(first.getByTestId("usage-used")).toHaveText("0");
  const second = await context.newPage();
  await second.goto("/");
  await waitForHydration(second);
  await expect(second.getByTestId("usage-used")).toHaveText("0");
  // Reloads would reset this marker; it must survive the updates.
  await first.evaluate(() => ((window as unknown as { marker: number }).marker = 42));

  const started = Date.now();
  await recordUsage(request, email, 250);
  await expect(first.getByTestId("usage-used")).toHaveText("250");
  await expect(second.getByTestId("usage-used")).toHaveText("250");
  console.log(`live update seen on both pages ${Date.now() - started} ms after the API answered`);
  expect(await first.evaluate(() => (window as unknown as { marker: number }).marker)).toBe(42);

  // The chart has today's bar; hovering it names the day and the value.
  const bar = first.locator('[data-testid="history-chart"] rect[data-quantity="250"]');
  await expect(bar).toHaveCount(1);
  await bar.hover();
  await expect(first.getByTestId("history-focus")).toContainText("250 tokens");

  // 80 %, 90 % and 100 %: one notice each, and the limit-reached state.
  await recordUsage(request, email, 600);
  await expect(first.locator('[data-testid="alert-notice"][data-threshold="80"]')).toHaveCount(1);
  await recordUsage(request, email, 100);
  await expect(first.locator('[data-testid="alert-notice"][data-threshold="90"]')).toHaveCount(1);
  await expect(first.getByTestId("usage-bar").locator("div")).toHaveAttribute("data-critical", "true");
  const last = await request.post("/api/usage/record", {
    headers: { authorization: `Bearer ${tally("apikey", "create", "--email", email).trim()}` },
    data: { eventType: "ai_token_consumed", quantity: 50 },
  });
  expect(last.status()).toBe(200);
  await expect(first.getByTestId("usage-used")).toHaveText("1,000");
  await expect(first.getByTestId("limit-reached")).toBeVisible();
  await expect(first.getByTestId("alert-notice")).toHaveCount(3);
  await expect(second.getByTestId("alert-notice")).toHaveCount(3);
  await context.close();
});

/**
 * A proxy in front of the app that can be cut off: it then drops every open connection (the live stream's too)
 * and answers 503 to new requests, as a load balancer does while the app restarts.
 */
async function cuttableProxy(upstream: string) {
  const target = new URL(upstream);
  let cut = false;
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    if (cut) {
      res.writeHead(503, { "content-type": "application/json" }).end('{"error":"restarting","code":"unavailable"}');
      return;
    }
    const forwarded = httpRequest(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forwarded.on("error", () => res.destroy());
    req.pipe(forwarded);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut: () => {
      cut = true;
      for (const socket of sockets) socket.destroy();
    },
    restore: () => (cut = false),
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

test("the live meter says when its stream is cut, reconnects by itself and shows what it missed", async ({ page, request, baseURL }) => {
  const proxy = await cuttableProxy(baseURL!);
  try {
    const email = uniqueEmail("reconnect");
    tally("user", "create", "--email", email, "--limit", "1000");
    await logIn(page, email);
    await expect(page.getByTestId("usage-used")).toHaveText("0");
    // The session cookie belongs to 127.0.0.1 whatever the port: the same dashboard, through the proxy.
    await page.goto(`${proxy.url}/`);
    await waitForHydration(page);
    await expect(page.getByTestId("live-status")).toHaveAttribute("data-state", "live");
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 7));

    // Cut: the stream drops and its reconnects get 503s, on which a browser's EventSource gives up for good.
    proxy.cut();
    await expect(page.getByTestId("live-status")).toHaveAttribute("data-state", "interrupted");
    await expect(page.getByTestId("live-status")).toContainText("reconnecting");
    await recordUsage(request, email, 321);
    await page.waitForTimeout(2_500);
    await expect(page.getByTestId("usage-used")).toHaveText("0");

    // Back: the page re-opens the stream by itself and shows the usage recorded while it was cut off.
    proxy.restore();
    await expect(page.getByTestId("usage-used")).toHaveText("321", { timeout: 10_000 });
    await expect(page.getByTestId("live-status")).toHaveAttribute("data-state", "live");
    await expect(page.getByTestId("live-status")).toBeEmpty();
    expect(await page.evaluate(() => (window as unknown as { marker: number }).marker)).toBe(7);

    // And it follows new usage again.
    await recordUsage(request, email, 9);
    await expect(page.getByTestId("usage-used")).toHaveText("330");
  } finally {
    proxy.close();
  }
});

/** A local receiver of alert webhooks. */
async function receiver() {
  const received: { headers: IncomingHttpHeaders; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/alerts`;
  return { url, received, close: () => server.close() };
}

/** Standard Webhooks: base64 HMAC-SHA256 of "id.timestamp.body" keyed with the base64 part of the secret. */
function validSignature(secret: string, headers: IncomingHttpHeaders, body: string): boolean {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const signed = `${headers["webhook-id"]}.${headers["webhook-timestamp"]}.${body}`;
  const expected = createHmac("sha256", key).update(signed).digest("base64");
  return String(headers["webhook-signature"]).split(" ").includes(`v1,${expected}`);
}

test("the alert webhook reaches a local receiver once per threshold, signed", async ({ page, request }) => {
  const hook = await receiver();
  try {
    const email = uniqueEmail("hook");
    tally("user", "create", "--email", email, "--limit", "100");
    await logIn(page, email);
    await page.getByTestId("alert-url").fill(hook.url);
    await page.getByTestId("alert-url-save").click();
    const secret = (await page.getByTestId("alert-secret").textContent()) ?? "";
    expect(secret).toMatch(/^whsec_/);

    await recordUsage(request, email, 85);
    await recordUsage(request, email, 10);
    await recordUsage(request, email, 5);
    await expect.poll(() => hook.received.length, { timeout: 15_000 }).toBe(3);
    // Nothing more arrives later.
    await page.waitForTimeout(1_500);
    expect(hook.received).toHaveLength(3);
    const thresholds = hook.received.map((r) => JSON.parse(r.body).data.threshold_percent).sort((a, b) => a - b);
    expect(thresholds).toEqual([80, 90, 100]);
    for (const r of hook.received) {
      expect(validSignature(secret, r.headers, r.body)).toBe(true);
      expect(validSignature("whsec_" + Buffer.from("not the secret").toString("base64"), r.headers, r.body)).toBe(false);
    }
  } finally {
    hook.close();
  }
});

test("the CSV download holds exactly the recorded events", async ({ page, request }) => {
  const email = uniqueEmail("csv");
  tally("user", "create", "--email", email);
  for (const quantity of [11, 22, 33]) await recordUsage(request, email, quantity);
  await logIn(page, email);
  const href = await page.getByTestId("export-csv").getAttribute("href");
  const download = await page.request.get(href ?? "");
  expect(download.status()).toBe(200);
  const lines = (await download.text()).trim().split("\n");
  expect(lines[0]).toBe("id,occurred_at,event_type,quantity,idempotency_key,stripe");
  const quantities = lines.slice(1).map((l) => Number(l.split(",")[3])).sort((a, b) => a - b);
  expect(quantities).toEqual([11, 22, 33]);
  expect(lines.slice(1).every((l) => /T\d\d:\d\d:\d\d\.\d{6}\+09:00,/.test(l))).toBe(true);
  // The database agrees (as the operator's CLI reads it).
  expect(tally("user", "show", "--email", email)).toMatch(/usage events: .*\b/);
  const counted = /usage events: (\d+) delivered, (\d+) pending, (\d+) awaiting a customer/.exec(
    tally("user", "show", "--email", email),
  );
  expect(counted && counted.slice(1, 4).reduce((a, b) => a + Number(b), 0)).toBe(3);
});

test.describe("with JavaScript disabled", () => {
  test.use({ javaScriptEnabled: false });

  test("history, alerts and the period selector work from server HTML", async ({ page, request }) => {
    const email = uniqueEmail("nojs-history");
    tally("user", "create", "--email", email, "--limit", "100");
    await recordUsage(request, email, 90);
    await page.goto("/login");
    await page.getByTestId("email").fill(email);
    await page.getByTestId("password").fill(PASSWORD);
    await page.getByTestId("submit").click();
    await expect(page.getByTestId("usage-used")).toHaveText("90");
    await expect(page.locator('[data-testid="history-chart"] rect[data-quantity="90"] title')).toHaveCount(1);
    await expect(page.locator('[data-testid="alert-notice"]')).toHaveCount(2);
    await page.getByRole("button", { name: "Show" }).click();
    await expect(page).toHaveURL(/\?period=/);
    await expect(page.getByTestId("history-caption")).toContainText("90 tokens in total");
  });
});
