import type { FullResult, Reporter, TestCase, TestResult } from '@playwright/test/reporter';

// Prints the closing line CI reads: "end2end: N passed, N failed".
export default class SummaryReporter implements Reporter {
  private passed = 0;
  private failed = 0;

  onTestEnd(test: TestCase, result: TestResult) {
    if (result.retry < test.retries && result.status !== 'passed') return;
    if (result.status === 'passed') this.passed += 1;
    else if (result.status !== 'skipped') this.failed += 1;
  }

  onEnd(_result: FullResult) {
    console.log(`end2end: ${this.passed} passed, ${this.failed} failed`);
  }

  printsToStdio() {
    return false;
  }
}
