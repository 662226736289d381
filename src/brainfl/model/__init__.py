"""The models: architectures (CNN, VGG-16), training steps, BatchNorm re-estimation, what output
probabilities mean (predicted class, temperature scaling), model files and their metadata, and this
process's built model."""
