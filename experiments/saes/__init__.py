"""The project's own SAEs for the embedded subject: corpus, activations, training, evaluation."""
