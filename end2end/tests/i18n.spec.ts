import { resolve } from "node:path";
import { expect, test } from "@playwright/test";
import { PASSWORD, logIn, recordUsage, tally, uniqueEmail, waitForHydration } from "./support";

const shots = resolve(__dirname, "../../docs/screenshots");

test.describe("in Japanese (Accept-Language: ja)", () => {
  test.use({ locale: "ja-JP" });

  test("the browser's language picks Japanese, the toggle switches and the choice persists", async ({ page, request }) => {
    const email = uniqueEmail("ja");
    tally("user", "create", "--email", email, "--limit", "2000000");
    await recordUsage(request, email, 1234567);
    await page.goto("/login");
    await expect(page.getByRole("heading", { level: 1 })).toHaveText("Tally にログイン");
    await logIn(page, email);
    await expect(page.getByTestId("usage-used")).toHaveText("1,234,567");
    await expect(page.locator(".usage-meter__label")).toHaveText("今期のAIトークン");
    await expect(page.getByTestId("usage-period")).toContainText("請求期間");
    await expect(page.getByTestId("usage-period")).toContainText("年");
    await expect(page.getByTestId("history-caption")).toContainText("合計 1,234,567 トークン");
    // The text alternatives are Japanese too: the meter's value, the chart and its bars.
    await expect(page.getByTestId("usage-bar")).toHaveAttribute("aria-valuetext", "2,000,000 トークンのうち 1,234,567（61%）");
    await expect(page.getByTestId("history-chart")).toHaveAttribute("aria-label", /合計 1,234,567 トークン/);
    await expect(page.locator('[data-testid="history-chart"] rect[data-quantity="1234567"]')).toHaveAttribute(
      "aria-label",
      /^\d{4}年\d{1,2}月\d{1,2}日：1,234,567 トークン$/,
    );
    // No English left on the page, in what is shown or in what screen readers are told.
    await page.getByTestId("key-name").fill("本番");
    await page.getByTestId("key-create").click();
    await expect(page.getByTestId("key-secret")).toBeVisible();
    const shown = await page.locator("main").innerText();
    const told = await page.locator("main [aria-label], main [aria-valuetext], main [placeholder]").evaluateAll((nodes) =>
      nodes.map((n) => ["aria-label", "aria-valuetext", "placeholder"].map((a) => n.getAttribute(a) ?? "").join(" ")).join(" "),
    );
    for (const english of ["tokens", "Loading", "Subscription", "revoked", "Copy this", "Actions", "Refresh", "Sign out", " of ", "e.g."]) {
      expect(shown, `shown: ${english}`).not.toContain(english);
      expect(told, `told: ${english}`).not.toContain(english);
    }

    await page.getByTestId("language").click();
    await expect(page.locator(".usage-meter__label")).toHaveText("AI tokens this period");
    await expect(page.getByTestId("history-caption")).toContainText("1,234,567 tokens in total");
    // The choice is a cookie: it outlives a reload, against the browser's Japanese.
    await page.reload();
    await waitForHydration(page);
    await expect(page.locator(".usage-meter__label")).toHaveText("AI tokens this period");
    await page.getByTestId("language").click();
    await expect(page.locator(".usage-meter__label")).toHaveText("今期のAIトークン");
  });
});

test.describe("errors in Japanese", () => {
  test.use({ locale: "ja-JP" });

  test("a refused sign-in and a taken email are explained in Japanese", async ({ page }) => {
    const email = uniqueEmail("ja-errors");
    tally("user", "create", "--email", email);
    await logIn(page, email, "not the password at all");
    await expect(page.getByTestId("form-error")).toHaveText("メールアドレスまたはパスワードが正しくありません");

    await page.goto("/signup");
    await waitForHydration(page);
    await page.getByTestId("email").fill(email);
    await page.getByTestId("password").fill(PASSWORD);
    await page.getByTestId("submit").click();
    await expect(page.getByTestId("form-error")).toHaveText(`${email} のアカウントは既に存在します`);
    await expect(page.getByTestId("form-error")).toHaveAttribute("data-code", "conflict");
  });
});

/** Screenshots for the README: desktop and phone, English and Japanese, of one realistic account. */
test("screenshots: desktop and phone, English and Japanese", async ({ browser, request }) => {
  const email = uniqueEmail("screens");
  tally("user", "create", "--email", email, "--limit", "100000");
  for (const quantity of [18_250, 9_400, 31_800, 26_100]) await recordUsage(request, email, quantity);
  // A second meter: images, priced per image.
  await recordUsage(request, email, 7, "image_generated");
  for (const [locale, lang] of [
    ["en-US", "en"],
    ["ja-JP", "ja"],
  ] as const) {
    for (const [device, viewport] of [
      ["desktop", { width: 1280, height: 900 }],
      ["phone", { width: 390, height: 844 }],
    ] as const) {
      const context = await browser.newContext({ locale, viewport });
      const page = await context.newPage();
      await logIn(page, email);
      await expect(page.locator('[data-meter="ai_token_consumed"]').getByTestId("usage-used")).toHaveText("85,550");
      await expect(page.getByTestId("usage-cost")).toHaveCount(2);
      await waitForHydration(page);
      await page.screenshot({ path: `${shots}/dashboard-${lang}-${device}.png`, fullPage: true });
      await context.close();
    }
  }
});

test.describe("with JavaScript disabled", () => {
  test.use({ javaScriptEnabled: false });

  test("the language link switches through the server", async ({ page }) => {
    const email = uniqueEmail("nojs-lang");
    tally("user", "create", "--email", email);
    await page.goto("/login");
    await page.getByTestId("email").fill(email);
    await page.getByTestId("password").fill(PASSWORD);
    await page.getByTestId("submit").click();
    await expect(page.locator(".usage-meter__label")).toHaveText("AI tokens this period");
    await page.getByTestId("language").click();
    await expect(page.locator(".usage-meter__label")).toHaveText("今期のAIトークン");
  });
});
