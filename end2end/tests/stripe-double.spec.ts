import { expect, test } from "@playwright/test";
import Stripe from "stripe";
import { PASSWORD, logIn, recordUsage, tally, uniqueEmail } from "./support";

// The double the app under test delivers to (see playwright.config.ts).
const port = Number(process.env.E2E_STRIPE_PORT ?? "12111");
const doubleUrl = `http://127.0.0.1:${port}`;
const stripe = new Stripe("sk_test_tally_double", { host: "127.0.0.1", port, protocol: "http", maxNetworkRetries: 0 });

// Stripe's official Node SDK, pointed at the double: the double accepts exactly what the real client sends,
// and answers in a shape the SDK parses (objects, lists, typed errors).
test("Stripe's Node SDK drives the double: meters, customers, prices, meter events, summaries", async () => {
  const suffix = Date.now().toString(36);
  const eventName = `sdk_event_${suffix}`;
  const meter = await stripe.billing.meters.create({
    display_name: "SDK meter",
    event_name: eventName,
    default_aggregation: { formula: "sum" },
    customer_mapping: { type: "by_id", event_payload_key: "stripe_customer_id" },
    value_settings: { event_payload_key: "value" },
  });
  expect(meter.id).toMatch(/^mtr_/);
  const meters = await stripe.billing.meters.list({ status: "active" });
  expect(meters.data.map((m) => m.event_name)).toContain(eventName);

  const customer = await stripe.customers.create({ email: `sdk-${suffix}@e2e.test`, metadata: { user_id: "u1" } });
  expect(customer.id).toMatch(/^cus_/);

  const product = await stripe.products.create({ name: "SDK product" });
  const price = await stripe.prices.create({
    product: product.id,
    currency: "jpy",
    unit_amount_decimal: "0.00005",
    recurring: { interval: "month", usage_type: "metered", meter: meter.id },
    lookup_key: `sdk_${suffix}`,
  });
  const found = await stripe.prices.list({ lookup_keys: [`sdk_${suffix}`], active: true });
  expect(found.data.map((p) => p.id)).toEqual([price.id]);

  const timestamp = Math.floor(Date.now() / 1000);
  const sent = await stripe.billing.meterEvents.create({
    event_name: eventName,
    payload: { stripe_customer_id: customer.id, value: "1500" },
    identifier: `sdk-${suffix}`,
    timestamp,
  });
  expect(sent.identifier).toBe(`sdk-${suffix}`);
  expect(sent.payload.value).toBe("1500");

  // A repeated identifier: the SDK's typed error carries Stripe's message.
  const duplicate = await stripe.billing.meterEvents
    .create({ event_name: eventName, payload: { stripe_customer_id: customer.id, value: "1500" }, identifier: `sdk-${suffix}` })
    .catch((err: unknown) => err);
  expect(duplicate).toBeInstanceOf(Stripe.errors.StripeInvalidRequestError);
  expect((duplicate as Error).message).toBe(`An event already exists with identifier sdk-${suffix}.`);

  const refused = await stripe.billing.meterEvents
    .create({ event_name: eventName, payload: { stripe_customer_id: customer.id, value: "1.5" } })
    .catch((err: unknown) => err);
  expect(refused).toBeInstanceOf(Stripe.errors.StripeInvalidRequestError);
  expect((refused as Stripe.errors.StripeInvalidRequestError).param).toBe("payload[value]");

  const start = Math.floor(timestamp / 60) * 60;
  const summaries = await stripe.billing.meters.listEventSummaries(meter.id, {
    customer: customer.id,
    start_time: start,
    end_time: start + 60,
  });
  expect(summaries.data[0].aggregated_value).toBe(1500);

  const unauthorized = await new Stripe("sk_test_wrong", { host: "127.0.0.1", port, protocol: "http" }).customers
    .create({ email: "x@e2e.test" })
    .catch((err: unknown) => err);
  expect(unauthorized).toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
});

test("usage recorded through the API reaches Stripe's meter and the dashboard says so", async ({ page, request }) => {
  const email = uniqueEmail("delivery");
  tally("user", "create", "--email", email);
  await recordUsage(request, email, 1234);
  await recordUsage(request, email, 766);

  // The app's worker creates the customer and delivers the sum; the double is the source of truth here.
  await expect.poll(() => customerOf(email), { timeout: 30_000 }).toMatch(/^cus_/);
  const customer = customerOf(email);
  await expect
    .poll(async () => {
      const state = await (await fetch(`${doubleUrl}/_double/state`)).json();
      return state.totals[customer]?.ai_token_consumed ?? 0;
    }, { timeout: 30_000 })
    .toBe(2000);

  await logIn(page, email);
  await expect(page.getByTestId("stripe-sync")).toContainText("Usage reported to Stripe: 2 events");
});

/** The Stripe customer id the app stored for `email`, as `tally user show` prints it. */
function customerOf(email: string): string {
  const line = tally("user", "show", "--email", email);
  return /stripe customer: (\S+)/.exec(line)?.[1] ?? "";
}

test.describe("in Japanese", () => {
  test.use({ locale: "ja-JP" });

  test("Manage billing opens the Stripe customer portal once the account has a customer", async ({ page, request }) => {
    const email = uniqueEmail("portal");
    tally("user", "create", "--email", email);
    await logIn(page, email);
    await expect(page.getByTestId("usage-used")).toHaveText("0");
    // The delivery worker gives every account a customer at the double (accounts without one get no button: the
    // integration tests cover that).
    await recordUsage(request, email, 5);
    await expect.poll(() => customerOf(email), { timeout: 30_000 }).toMatch(/^cus_/);
    await page.reload();
    const manage = page.getByTestId("manage-billing");
    await expect(manage).toHaveText("お支払いの管理");

    // The portal is Stripe's page: stand in for it, and check the browser was sent there.
    await page.route("https://billing.stripe.com/**", (route) =>
      route.fulfill({ status: 200, contentType: "text/html", body: "<h1>portal</h1>" }),
    );
    await manage.click();
    await expect(page).toHaveURL(/^https:\/\/billing\.stripe\.com\/p\/session\/test_/);
    const state = await (await fetch(`${doubleUrl}/_double/state`)).json();
    expect(state.portal_sessions).toBeGreaterThanOrEqual(1);
  });
});
