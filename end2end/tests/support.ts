import { execFileSync } from "node:child_process";
import { resolve } from "node:path";
import { expect, type Page } from "@playwright/test";

const databaseUrl = () => {
  const url = process.env.E2E_DATABASE_URL;
  if (!url) throw new Error("E2E_DATABASE_URL is not set (run the suite through scripts/test)");
  return url;
};

/** Runs SQL against the app's database and returns psql's unaligned output. */
export function sql(statement: string): string {
  return execFileSync("psql", [databaseUrl(), "-v", "ON_ERROR_STOP=1", "-qAtc", statement], {
    encoding: "utf8",
  }).trim();
}

/** Runs the tally CLI against the app's database, as an operator would. */
export function tally(...args: string[]): string {
  return execFileSync(resolve(__dirname, "../../target/debug/tally"), args, {
    encoding: "utf8",
    env: { ...process.env, DATABASE_URL: databaseUrl(), RUST_LOG: "warn" },
  });
}

export const PASSWORD = "end-to-end password";

let counter = 0;
/** An email no other test uses. */
export function uniqueEmail(label: string): string {
  counter += 1;
  return `${label}-${Date.now()}-${counter}@e2e.test`;
}

/** Records usage for `email` straight into the database (the recording API has tests of its own). */
export function insertUsage(email: string, quantity: number): void {
  sql(
    `INSERT INTO usage_events (id, user_id, event_type, quantity)
     SELECT gen_random_uuid(), id, 'ai_token_consumed', ${quantity} FROM users WHERE email = '${email}'`,
  );
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
