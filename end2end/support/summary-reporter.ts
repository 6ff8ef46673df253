import type { FullResult, Reporter, TestCase, TestResult } from '@playwright/test/reporter';

// Prints the closing line CI reads: "end2end: N passed, N failed" (after a line naming the
// scenarios skipped as known bugs, if any).
export default class SummaryReporter implements Reporter {
  private passed = 0;
  private failed = 0;
  private skipped: string[] = [];

  onTestEnd(test: TestCase, result: TestResult) {
    if (result.retry < test.retries && result.status !== 'passed') return;
    const project = test.parent.project()?.name ?? '';
    if (result.status === 'passed') this.passed += 1;
    else if (result.status === 'skipped') this.skipped.push(`[${project}] ${test.title}`);
    else this.failed += 1;
  }

  onEnd(result: FullResult) {
    if (this.skipped.length > 0) {
      console.log(`end2end: ${this.skipped.length} skipped (test.fixme, known bugs):`);
      for (const title of this.skipped) console.log(`  - ${title}`);
    }
    // A run that failed outside any test (the global setup, a timeout) says so.
    const run = result.status === 'passed' || this.failed > 0 ? '' : ` (the run itself ${result.status}: see above)`;
    console.log(`end2end: ${this.passed} passed, ${this.failed} failed${run}`);
  }

  printsToStdio() {
    return false;
  }
}
