"""The device: the exported model, re-ranking and fine-tuning on the device, continual learning."""
