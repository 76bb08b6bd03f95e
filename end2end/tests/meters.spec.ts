import { expect, test } from "@playwright/test";
import { PASSWORD, logIn, recordUsage, tally, uniqueEmail, waitForHydration } from "./support";

/** What each language says, for the same account and usage. */
const languages = [
  {
    locale: "en-US",
    tokensCost: "¥4 so far",
    imagesLabel: "Images this period",
    imagesCost: "¥21 so far",
    rule: "AI tokens: ¥5",
    badAmount: "positive number",
    reached: "AI tokens reached your alert at ¥5",
    costAfter: "¥5 so far",
  },
  {
    locale: "ja-JP",
    tokensCost: "今期の料金 4円",
    imagesLabel: "今期の画像生成",
    imagesCost: "今期の料金 21円",
    rule: "AIトークン: 5円",
    badAmount: "正の数",
    reached: "AIトークンが設定したアラート 5円 に達しました",
    costAfter: "今期の料金 5円",
  },
] as const;

for (const words of languages) {
  test(`a meter per type shows its cost, and an alert set in yen fires live (${words.locale})`, async ({
    browser,
    request,
  }) => {
    const email = uniqueEmail(`cost-${words.locale}`);
    tally("user", "create", "--email", email);
    // ¥4.28 of tokens (the invoice rounds the line once: ¥4) and 7 images at ¥3.
    await recordUsage(request, email, 85_600);
    await recordUsage(request, email, 7, "image_generated");

    const context = await browser.newContext({ locale: words.locale });
    const page = await context.newPage();
    await logIn(page, email);
    const tokens = page.locator('[data-meter="ai_token_consumed"]');
    const images = page.locator('[data-meter="image_generated"]');
    await expect(tokens.getByTestId("usage-cost")).toHaveText(words.tokensCost);
    await expect(images.locator(".usage-meter__label")).toHaveText(words.imagesLabel);
    await expect(images.getByTestId("usage-used")).toHaveText("7");
    await expect(images.getByTestId("usage-cost")).toHaveText(words.imagesCost);
    await waitForHydration(page);

    // A malformed amount is refused in the page's language, and nothing is added.
    await page.getByTestId("alert-meter").selectOption("ai_token_consumed");
    await page.getByTestId("alert-unit").selectOption("money");
    await page.getByTestId("alert-amount").fill("1.5");
    await page.getByTestId("alert-add").click();
    await expect(page.locator(".alerts__add")).toContainText(words.badAmount);
    await expect(page.getByTestId("alert-rule")).toHaveCount(0);

    await waitForHydration(page);
    await page.getByTestId("alert-meter").selectOption("ai_token_consumed");
    await page.getByTestId("alert-unit").selectOption("money");
    await page.getByTestId("alert-amount").fill("5");
    await page.getByTestId("alert-add").click();
    await expect(page.getByTestId("alert-rule")).toHaveText(new RegExp(words.rule));
    await waitForHydration(page);

    // 14,400 more tokens make ¥5.00: the open page shows the new cost and the alert without a reload.
    await recordUsage(request, email, 14_400);
    await expect(tokens.getByTestId("usage-cost")).toHaveText(words.costAfter, { timeout: 10_000 });
    await expect(page.getByTestId("alert-rule-notice")).toContainText(words.reached);
    await context.close();
  });
}
