"""neuron_runtime: the in-pod model runtime of neuron-operator.

Two commands share this package (see `cli`): `compile` turns a PyTorch model into a versioned, content-addressed
artifact of traced graphs (TorchScript on CPU, `torch_neuronx` on Inferentia/Trainium), and `serve` loads such an
artifact onto NeuronCores (or CPU cores) and answers the Open Inference Protocol v2 with server-side dynamic
batching. `config` is the only module the operator imports; it never imports torch.
"""

__version__ = "0.1.0"
