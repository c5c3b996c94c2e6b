"""Privacy audits of finished runs: accounting re-checks, membership inference, canaries, update
leakage and message contents. `common.audit.report.run_audit` ties them together; the canary
generator and the message-recording mod are shared with data loading and the ClientApp."""
