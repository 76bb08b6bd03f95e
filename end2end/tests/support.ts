import { execFileSync } from "node:child_process";
import { resolve } from "node:path";
import { expect, type APIRequestContext, type Page } from "@playwright/test";

const databaseUrl = () => {
  const url = process.env.E2E_DATABASE_URL;
  if (!url) throw new Error("E2E_DATABASE_URL is not set (run the suite through scripts/test)");
  return url;
};

export const PASSWORD = "end-to-end password";

/** Runs the tally CLI against the app's database, as an operator would (`user create` takes the password from
 * TALLY_USER_PASSWORD, never from its arguments). */
export function tally(...args: string[]): string {
  return execFileSync(resolve(__dirname, "../../target/debug/tally"), args, {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, DATABASE_URL: databaseUrl(), RUST_LOG: "warn", TALLY_USER_PASSWORD: PASSWORD },
  });
}

let counter = 0;
/** An email no other test uses. */
export function uniqueEmail(label: string): string {
  counter += 1;
  return `${label}-${Date.now()}-${counter}@e2e.test`;
}

const apiKeys = new Map<string, string>();

/** An API key for `email`'s account, created once through the CLI (`tally apikey create`). */
export function apiKeyFor(email: string): string {
  let key = apiKeys.get(email);
  if (!key) {
    key = tally("apikey", "create", "--email", email, "--name", "e2e").trim();
    apiKeys.set(email, key);
  }
  return key;
}

/** Records usage for `email` the way a service does: POST /api/usage/record with an API key. */
export async function recordUsage(
  request: APIRequestContext,
  email: string,
  quantity: number,
  eventType = "ai_token_consumed",
): Promise<void> {
  const response = await request.post("/api/usage/record", {
    headers: { authorization: `Bearer ${apiKeyFor(email)}` },
    data: { eventType, quantity },
  });
  expect(response.status(), await response.text()).toBe(200);
}

/** Waits until the page is hydrated: a click before that is silently lost. */
export async function waitForHydration(page: Page): Promise<void> {
  await expect(page.locator("main[data-hydrated='true']")).toBeVisible();
}

export async function logIn(page: Page, email: string, password = PASSWORD): Promise<void> {
  await page.goto("/login");
  await waitForHydration(page);
  await page.getByTestId("email").fill(email);
  await page.getByTestId("password").fill(password);
  await page.getByTestId("submit").click();
}
