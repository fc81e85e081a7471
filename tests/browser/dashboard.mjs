// The dashboard in a real browser (Debian's Chromium, headless, driven by playwright-core):
// a wrong token is refused; the admin signs in, creates a job, watches a real `ferry send` move
// its progress bar to Finished, and reads the whole-disk hash on the job page; creates an
// enrollment that a real `ferry send --enroll` uses, and revokes it; the viewer token sees the
// same jobs and enrollments without the buttons that change them. Screenshots go to $ARTIFACTS.
// Run by tests/browser.rs, which starts the receiver and passes everything in the environment.
import { chromium } from "playwright-core";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const url = env("FERRY_URL");
const artifacts = env("ARTIFACTS");
const shot = (page, name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"] });
// The receiver's certificate is self-signed (its pin is what ferry's own clients check).
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => m.type() === "error" && !m.text().includes("403") && problems.push(`console: ${m.text()}`));

// 1. A wrong token is refused.
await page.goto(url + "/");
await page.fill("#token", "f".repeat(64));
await page.click("#login-form button");
await page.locator("#login-error").filter({ hasText: "Refused" }).waitFor();
assert.ok(await page.locator("#app").isHidden(), "a refused token must not show the jobs");
await shot(page, "01-wrong-token-refused");

// 2. The admin signs in and creates a job.
await page.fill("#token", env("FERRY_ADMIN_TOKEN"));
await page.click("#login-form button");
await page.locator("#who").filter({ hasText: "admin" }).waitFor();
await page.fill("#new-name", "browser-db01");
await page.click("#create-form button");
await page.locator("#created").waitFor();
const id = (await page.textContent("#created-id")).trim();
const token = (await page.textContent("#created-token")).trim();
assert.match(id, /^[0-9a-f]{12}$/);
assert.match(token, /^[0-9a-f]{64}$/);
const row = page.locator(`tr[data-job="${id}"]`);
await row.locator(".job-state").filter({ hasText: "Waiting" }).waitFor();
await shot(page, "02-job-created");

// 3. A real ferry send; the progress bar moves, then the job is Finished.
const send = spawn(env("FERRY_BIN"), [
  "send", "--server", url, "--pin", env("FERRY_PIN"), "--job", id, "--token", token,
  "--bandwidth-limit", "8M", env("FERRY_IMAGE"),
], { stdio: ["ignore", "ignore", "pipe"] });
let sendErr = "";
send.stderr.on("data", (d) => (sendErr += d));
const sent = new Promise((resolve) => send.on("exit", resolve));

let sawPartial = false;
const seen = new Set();
for (let i = 0; i < 240; i++) {
  const state = (await row.locator(".job-state").textContent().catch(() => "")).trim();
  const pct = Number((await row.locator(".pct").textContent().catch(() => "0%")).replace("%", ""));
  seen.add(`${state} ${pct}%`);
  if (state.startsWith("Running") && pct > 0 && pct < 100 && !sawPartial) {
    sawPartial = true;
    await shot(page, "03-progress-running");
  }
  if (state.startsWith("Finished")) break;
  await page.waitForTimeout(250);
}
const code = await sent;
assert.equal(code, 0, `ferry send failed: ${sendErr}`);
await row.locator(".job-state").filter({ hasText: "Finished" }).waitFor({ timeout: 10000 });
assert.ok(sawPartial, `the progress bar never showed a partial state; saw ${[...seen].join(", ")}`);
assert.equal((await row.locator(".pct").textContent()).trim(), "100%");
assert.equal(await row.locator('[role="progressbar"]').getAttribute("aria-valuenow"), "100");
await shot(page, "04-finished");

// 4. The job page shows the disk, its partition table and the whole-disk hash.
await row.locator("a").click();
await page.locator("#job-id").filter({ hasText: id }).waitFor();
const hash = (await page.locator('.blake3[data-disk="0"]').textContent()).trim();
assert.equal(hash, env("FERRY_IMAGE_B3"), "the hash on the job page is b3sum of the source");
assert.ok((await page.textContent("#job-view")).includes("gpt"), "the partition table kind is shown");
assert.equal((await page.locator("#job-view h2 .state").textContent()).trim(), "Finished");
await shot(page, "05-job-page");

// 5. The buttons: cancel a second job (after the confirmation dialog), then restart it.
await page.click('a[href="#/"]');
page.on("dialog", (d) => d.accept());
await page.fill("#new-name", "browser-spare");
await page.click("#create-form button");
await page.locator("#created-id").filter({ hasNotText: id }).waitFor();
const spare = (await page.textContent("#created-id")).trim();
const spareRow = page.locator(`tr[data-job="${spare}"]`);
await spareRow.locator("button.cancel").click();
await spareRow.locator(".job-state").filter({ hasText: "Cancelled" }).waitFor();
await spareRow.locator("button.restart").click();
await spareRow.locator(".job-state").filter({ hasText: "Waiting" }).waitFor();
await shot(page, "06-cancel-restart");

// 6. A wave: the admin creates an enrollment; a source enrolls itself with its token (a real
// `ferry send --enroll`, as the machine with DMI serial BROWSER-SRV) and its job shows up named
// after it; then the admin revokes the enrollment.
await page.fill("#enroll-name", "browser-wave");
await page.click("#enroll-form button");
await page.locator("#enroll-created").waitFor();
const eid = (await page.textContent("#enroll-created-id")).trim();
const etoken = (await page.textContent("#enroll-created-token")).trim();
assert.match(etoken, /^[0-9a-f]{64}$/);
const bootLine = (await page.textContent("#enroll-created-cmdline")).trim();
assert.ok(bootLine.includes(`ferry.pin=${env("FERRY_PIN")} ferry.enroll=${etoken}`), bootLine);
const erow = page.locator(`tr[data-enrollment="${eid}"]`);
await erow.locator(".enrollment-state").filter({ hasText: "active" }).waitFor();
const sys = mkdtempSync(join(tmpdir(), "ferry-sys-"));
mkdirSync(join(sys, "class/dmi/id"), { recursive: true });
writeFileSync(join(sys, "class/dmi/id/product_serial"), "BROWSER-SRV");
const enrolled = spawnSync(env("FERRY_BIN"), [
  "send", "--server", url, "--pin", env("FERRY_PIN"), "--enroll", etoken, "--json", env("FERRY_IMAGE"),
], { env: { ...process.env, FERRY_SYS_ROOT: sys }, encoding: "utf8" });
assert.equal(enrolled.status, 0, `ferry send --enroll failed: ${enrolled.stderr}`);
const enrolledJob = JSON.parse(enrolled.stdout).job;
const enrolledRow = page.locator(`tr[data-job="${enrolledJob}"]`);
await enrolledRow.locator(".job-state").filter({ hasText: "Finished" }).waitFor();
assert.equal((await enrolledRow.locator("td").nth(1).textContent()).trim(), "browser-wave-BROWSER-SRV");
await erow.locator(".enrollment-jobs").filter({ hasText: "1" }).waitFor();
await shot(page, "07-enrollment");
// The enrollment is a wave: its summary says one machine, Finished, nothing to go, no failure,
// and its throughput plot gains a sample at every refresh.
const wave = page.locator('.wave[data-wave="browser-wave"]');
await wave.locator('.wave-state[data-state="Finished"]').filter({ hasText: "1" }).waitFor();
assert.equal((await wave.locator("h3").textContent()).trim(), "browser-wave: 1 machine");
await wave.locator(".pct").filter({ hasText: "100%" }).waitFor();
assert.match(await wave.locator(".wave-togo").textContent(), /0 B to go/);
await wave.locator(".wave-no-failures").waitFor();
const samples = async () => Number(await wave.locator("canvas.wave-plot").getAttribute("data-samples"));
const before = await samples();
await page.waitForTimeout(3500);
assert.ok(await samples() > before, "the wave's throughput plot takes a sample at every refresh");
await shot(page, "09-wave");

// 6b. A job made with "used blocks only": its row says so, and its page shows what each
// partition was read as (this image's one partition holds no filesystem: read whole, and why).
// (Wait for the new job's id, not for any id other than the first job's: another step may have
// created a job through the form since.)
const lastCreated = (await page.textContent("#created-id")).trim();
await page.fill("#new-name", "browser-used-blocks");
await page.check("#new-used-only");
await page.click("#create-form button");
await page.locator("#created-id").filter({ hasNotText: lastCreated }).waitFor();
const usedId = (await page.textContent("#created-id")).trim();
const usedToken = (await page.textContent("#created-token")).trim();
await page.uncheck("#new-used-only");
const usedSend = spawnSync(env("FERRY_BIN"), [
  "send", "--server", url, "--pin", env("FERRY_PIN"), "--job", usedId, "--token", usedToken, "--json", env("FERRY_IMAGE"),
], { encoding: "utf8" });
assert.equal(usedSend.status, 0, `ferry send (used blocks only) failed: ${usedSend.stderr}`);
assert.ok(JSON.parse(usedSend.stdout).disks[0].used_only, "the job's option reached the agent");
const usedRow = page.locator(`tr[data-job="${usedId}"]`);
await usedRow.locator(".job-state").filter({ hasText: "Finished" }).waitFor();
await usedRow.locator(".used-only").filter({ hasText: "used blocks only" }).waitFor();
await usedRow.locator("a").click();
const usedSection = page.locator('section.used-only[data-disk="0"]');
await usedSection.waitFor();
assert.match(await usedSection.locator("h2").textContent(), /used blocks only, .* read of 128\.0 MiB/);
assert.match(await usedSection.locator("td").nth(4).textContent(), /no filesystem/);
await shot(page, "10-used-blocks");
await page.goto(url + "/#/");
await erow.locator("button.revoke").click();
await erow.locator(".enrollment-state").filter({ hasText: "revoked" }).waitFor();
assert.equal(await erow.locator("button.revoke").count(), 0, "a revoked enrollment has no revoke button");

// 7. The viewer sees the jobs and enrollments but cannot change them, nor see a token.
const viewer = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
await viewer.goto(url + "/");
await viewer.fill("#token", env("FERRY_VIEWER_TOKEN"));
await viewer.click("#login-form button");
await viewer.locator("#who").filter({ hasText: "read-only" }).waitFor();
await viewer.locator(`tr[data-job="${id}"]`).waitFor();
assert.ok(await viewer.locator("#create").isHidden(), "no job creation for the viewer");
assert.equal(await viewer.locator("button.restart, button.cancel").count(), 0, "no restart/cancel for the viewer");
await viewer.locator(`tr[data-enrollment="${eid}"]`).waitFor();
assert.ok(await viewer.locator("#enroll-form").isHidden(), "no enrollment creation for the viewer");
assert.equal(await viewer.locator("button.revoke").count(), 0, "no revoke for the viewer");
assert.ok(!(await viewer.content()).includes(etoken), "the viewer never sees an enrollment token");
await shot(viewer, "08-viewer");

await browser.close();
assert.deepEqual(problems, [], "the page logged errors");
console.log(`dashboard: job ${id} followed to Finished; progress states seen: ${[...seen].join(", ")}`);
