import { defineConfig, devices } from "@playwright/test";

// scripts/test sets E2E_PORT and E2E_DATABASE_URL (a fresh database) and builds target/debug/tally first.
// Run by hand against a server you started yourself: E2E_BASE_URL=http://127.0.0.1:3000 npx playwright test
const port = process.env.E2E_PORT ?? "3000";
const baseURL = process.env.E2E_BASE_URL ?? `http://127.0.0.1:${port}`;
const startServer = !process.env.E2E_BASE_URL;
// The Stripe test double (target/debug/stripe-double) the app delivers usage to.
const stripePort = process.env.E2E_STRIPE_PORT ?? "12111";
export const STRIPE_DOUBLE_KEY = "sk_test_tally_double";

export default defineConfig({
  testDir: "./tests",
  timeout: 30_000,
  expect: { timeout: 5_000 },
  fullyParallel: false,
  workers: 1,
  forbidOnly: !!process.env.CI,
  reporter: [["list"]],
  use: { baseURL, trace: "retain-on-failure" },
  webServer: startServer
    ? [
      {
        command: `./target/debug/stripe-double --port ${stripePort} --meter ai_token_consumed --meter image_generated`,
        cwd: "..",
        url: `http://127.0.0.1:${stripePort}/_double/state`,
        timeout: 30_000,
        stdout: "pipe",
        stderr: "pipe",
      },
      {
        command: "./target/debug/tally serve",
        cwd: "..",
        url: `${baseURL}/login`,
        timeout: 60_000,
        stdout: "pipe",
        stderr: "pipe",
        env: {
          DATABASE_URL: process.env.E2E_DATABASE_URL ?? "",
          LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
          TALLY_PUBLIC_URL: baseURL,
          // The shipped meters with a token limit of 100,000.
          TALLY_METERS_FILE: "end2end/meters.e2e.toml",
          // The alert webhook test's receiver listens on this machine.
          TALLY_ALERT_WEBHOOK_ALLOW_PRIVATE: "true",
          // Every test signs up its own accounts from 127.0.0.1.
          TALLY_SIGNUPS_PER_ADDRESS_PER_HOUR: "100000",
          BILLING_TIMEZONE: "Asia/Tokyo",
          STRIPE_WEBHOOK_SECRET: "whsec_e2e_endpoint_secret",
          STRIPE_SECRET_KEY: STRIPE_DOUBLE_KEY,
          STRIPE_API_BASE: `http://127.0.0.1:${stripePort}`,
          STRIPE_POLL_MS: "100",
          STRIPE_RETRY_BASE_MS: "100",
          RUST_LOG: "warn",
        },
      },
    ]
    : undefined,
  projects: [
    {
      name: "chromium",
      use: {
        ...devices["Desktop Chrome"],
        launchOptions: {
          // Debian's Chromium: a Playwright browser download is impossible on this network.
          executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
          args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
          ],
        },
      },
    },
  ],
});
