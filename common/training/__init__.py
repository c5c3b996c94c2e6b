"""Device update: what a device, a client or a SuperNode computes from the global weights.

The training step shared by every trainer (`step`), a federated client's local epochs (`federated`),
the cohort engine (`cohort`: many one-user devices' updates at once with torch.func;
`cohort_clients`: a SuperNode's side of it), sequence augmentation of training windows, the
allocator that keeps DP-SGD's memory in the process, and fine-tuning on the device
(`personalization`). Client-side DP-SGD itself is common/privacy/dpsgd.py."""
