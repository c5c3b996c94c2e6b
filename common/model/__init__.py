"""The model: next-item networks (`models`: LSTM, GRU, SASRec), training losses, checkpoints that
carry the item mapping, warm starts from an earlier run, rank-time ensembles, and the ONNX export
for devices."""
