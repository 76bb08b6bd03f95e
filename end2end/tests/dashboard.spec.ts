import { expect, test } from "@playwright/test";
import { PASSWORD, logIn, recordUsage, tally, uniqueEmail, waitForHydration } from "./support";

test.describe("with JavaScript", () => {
  test.beforeEach(async ({ page }) => {
    page.on("pageerror", (err) => {
      throw new Error(`page error: ${err.message}`);
    });
  });

  test("sign-up leads to a dashboard showing 0 of the default limit", async ({ page }) => {
    const email = uniqueEmail("signup");
    await page.goto("/signup");
    await waitForHydration(page);
    await page.getByTestId("email").fill(email);
    await page.getByTestId("password").fill(PASSWORD);
    await page.getByTestId("submit").click();

    await expect(page).toHaveURL(/\/$/);
    await expect(page.getByTestId("user-email")).toHaveText(email);
    await expect(page.getByTestId("usage-used")).toHaveText("0");
    await expect(page.getByTestId("usage-limit")).toHaveText("100,000");
    await expect(page.getByRole("progressbar")).toHaveAttribute("aria-valuenow", "0");
  });

  test("refresh re-reads the total without reloading the page", async ({ page, request }) => {
    const email = uniqueEmail("refresh");
    tally("user", "create", "--email", email, "--limit", "100000");
    await logIn(page, email);
    await expect(page.getByTestId("usage-used")).toHaveText("0");
    await waitForHydration(page);

    // A marker on window survives only if the page is not reloaded.
    await page.evaluate(() => ((window as unknown as { marker: string }).marker = "same page"));
    await recordUsage(request, email, 12_345);
    await page.getByTestId("refresh-usage").click();

    await expect(page.getByTestId("usage-used")).toHaveText("12,345");
    await expect(page.getByRole("progressbar")).toHaveAttribute("aria-valuenow", "12345");
    expect(await page.evaluate(() => (window as unknown as { marker?: string }).marker)).toBe("same page");
  });

  test("a wrong password gets a clear error and no session", async ({ page, context }) => {
    const email = uniqueEmail("wrong");
    tally("user", "create", "--email", email);
    await logIn(page, email, "not the password");

    await expect(page.getByTestId("form-error")).toHaveText("email or password is incorrect");
    await expect(page).toHaveURL(/\/login$/);
    const cookies = await context.cookies();
    expect(cookies.find((c) => c.name === "tally_session")).toBeUndefined();
    await page.goto("/");
    await expect(page).toHaveURL(/\/login$/);
  });

  test("the dashboard without a session redirects to /login", async ({ page }) => {
    const response = await page.goto("/");
    await expect(page).toHaveURL(/\/login$/);
    expect(response?.status()).toBe(200);
    await expect(page.getByRole("heading", { name: "Sign in to Tally" })).toBeVisible();
  });

  test("the bar turns red at 90 % of the limit", async ({ page, request }) => {
    const email = uniqueEmail("red");
    tally("user", "create", "--email", email, "--limit", "1000");
    await recordUsage(request, email, 899);
    await logIn(page, email);
    const bar = page.locator(".usage-meter__bar");
    await expect(bar).toHaveAttribute("data-critical", "false");

    await recordUsage(request, email, 1);
    await waitForHydration(page);
    await page.getByTestId("refresh-usage").click();
    await expect(page.getByTestId("usage-used")).toHaveText("900");
    await expect(bar).toHaveAttribute("data-critical", "true");
    await expect(bar).toHaveCSS("background-color", "rgb(220, 38, 38)");
    await expect(bar).toHaveAttribute("style", /width: 90(\.00)?%/);
  });

  test("sign-out ends the session", async ({ page }) => {
    const email = uniqueEmail("logout");
    tally("user", "create", "--email", email);
    await logIn(page, email);
    await expect(page.getByTestId("user-email")).toHaveText(email);
    await waitForHydration(page);
    await page.getByTestId("logout").click();
    await expect(page).toHaveURL(/\/login$/);
    await page.goto("/");
    await expect(page).toHaveURL(/\/login$/);
  });
});

test.describe("AI route and API keys", () => {
  test("a prompt on the dashboard records its tokens and the meter moves", async ({ page }) => {
    const email = uniqueEmail("prompt");
    tally("user", "create", "--email", email, "--limit", "100000");
    await logIn(page, email);
    await expect(page.getByTestId("usage-used")).toHaveText("0");
    await waitForHydration(page);

    await page.getByTestId("ai-prompt").fill("How does Tally cut billing periods?");
    await page.getByTestId("ai-submit").click();
    await expect(page.getByTestId("ai-answer")).toContainText("offline model");
    const tokens = (await page.getByTestId("ai-tokens").textContent())!.match(/^([\d,]+) tokens/)![1];
    expect(Number(tokens.replace(/,/g, ""))).toBeGreaterThan(10);
    await expect(page.getByTestId("usage-used")).toHaveText(tokens);
  });

  test("an API key made on the dashboard records usage until it is revoked", async ({ page, request }) => {
    const email = uniqueEmail("keys");
    tally("user", "create", "--email", email);
    await logIn(page, email);
    await waitForHydration(page);
    await page.getByTestId("key-name").fill("billing job");
    await page.getByTestId("key-create").click();
    const secret = (await page.getByTestId("key-secret").textContent())!.trim();
    expect(secret).toMatch(/^tly_live_[0-9A-Za-z]{46}$/);
    await expect(page.getByTestId("key-row")).toHaveCount(1);
    await expect(page.getByTestId("key-table")).not.toContainText(secret);

    const record = () =>
      request.post("/api/usage/record", {
        headers: { authorization: `Bearer ${secret}` },
        data: { eventType: "ai_token_consumed", quantity: 42 },
      });
    expect((await record()).status()).toBe(200);
    await page.getByTestId("refresh-usage").click();
    await expect(page.getByTestId("usage-used")).toHaveText("42");

    await page.getByTestId("key-revoke").click();
    await expect(page.getByTestId("key-row")).toContainText("revoked");
    expect((await record()).status()).toBe(401);
  });
});

test.describe("with JavaScript disabled", () => {
  test.use({ javaScriptEnabled: false });

  test("sign-in works and the meter is right from the server HTML alone", async ({ page, request }) => {
    const email = uniqueEmail("nojs");
    tally("user", "create", "--email", email, "--limit", "250000");
    await recordUsage(request, email, 234_567);

    await page.goto("/login");
    await page.getByTestId("email").fill(email);
    await page.getByTestId("password").fill(PASSWORD);
    await page.getByTestId("submit").click();

    await expect(page).toHaveURL(/\/$/);
    await expect(page.getByTestId("usage-used")).toHaveText("234,567");
    await expect(page.getByTestId("usage-limit")).toHaveText("250,000");
    const bar = page.getByRole("progressbar");
    await expect(bar).toHaveAttribute("aria-valuenow", "234567");
    await expect(bar).toHaveAttribute("aria-valuemax", "250000");
    // 93.8 %: red, from CSS alone.
    await expect(page.locator(".usage-meter__bar")).toHaveCSS("background-color", "rgb(220, 38, 38)");
  });
});
