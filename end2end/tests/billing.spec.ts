import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { expect, test } from "@playwright/test";
import Stripe from "stripe";
import { PASSWORD, logIn, tally, uniqueEmail } from "./support";

// Must match STRIPE_WEBHOOK_SECRET in playwright.config.ts.
const WEBHOOK_SECRET = "whsec_e2e_endpoint_secret";

test("an invoice signed by Stripe's own SDK shows up in the billing history", async ({ page, request }) => {
  const email = uniqueEmail("billing");
  const suffix = Date.now().toString(36);
  const customer = `cus_e2e${suffix}`;
  tally("user", "create", "--email", email);
  tally("stripe", "link", "--email", email, "--customer", customer);

  // The real basil-era invoice.payment_succeeded payload, for this customer.
  const fixture = resolve(__dirname, "../../tests/fixtures/stripe/event.invoice.payment_succeeded.basil.json");
  const event = JSON.parse(readFileSync(fixture, "utf8"));
  event.id = `evt_e2e${suffix}`;
  event.data.object.id = `in_e2e${suffix}`;
  event.data.object.customer = customer;
  const payload = JSON.stringify(event);

  // The signature header exactly as Stripe's official Node SDK builds it.
  const stripe = new Stripe("sk_test_not_used_for_signing");
  const signature = stripe.webhooks.generateTestHeaderString({ payload, secret: WEBHOOK_SECRET });
  const post = () =>
    request.post("/api/stripe/webhook", {
      headers: { "stripe-signature": signature, "content-type": "application/json" },
      data: payload,
    });
  const first = await post();
  expect(first.status(), await first.text()).toBe(200);
  expect((await first.json()).outcome).toBe("applied");
  expect((await (await post()).json()).duplicate).toBe(true);

  const forged = await request.post("/api/stripe/webhook", {
    headers: { "stripe-signature": stripe.webhooks.generateTestHeaderString({ payload, secret: "whsec_wrong" }) },
    data: payload,
  });
  expect(forged.status()).toBe(400);

  await logIn(page, email);
  const rows = page.getByTestId("billing-row");
  await expect(rows).toHaveCount(1);
  await expect(rows.first()).toContainText("$1.90");
  await expect(rows.first()).toContainText("2025-05-09 – 2025-05-10");
  await expect(rows.first()).toContainText("paid");
});
