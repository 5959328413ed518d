"""neuron-operator: compile PyTorch models for AWS NeuronCores and serve them on Kubernetes."""

__version__ = "0.1.0"
