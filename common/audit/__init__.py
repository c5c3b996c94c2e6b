"""Offline privacy audits of finished runs: accounting re-checks, membership inference, canaries,
update leakage and the recorded message structures. `report.compute_audit` computes them,
`render` writes audit.json / audit.md / plots. What runs during training lives elsewhere: the
canary maker in common/data/canaries.py, the message-recording mod in client/message_audit.py."""
