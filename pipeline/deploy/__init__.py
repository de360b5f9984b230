"""Putting a trained model to work: predicting new images with a bundle, a fine-tuned or an exported model,
exporting one graph from pixels to probabilities, and running exported models without TensorFlow."""
