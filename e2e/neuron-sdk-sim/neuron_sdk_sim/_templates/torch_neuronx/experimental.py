"""torch_neuronx.experimental of the SIMULATED Neuron SDK (neuron_sdk_sim): the NeuronCore placement APIs.

Before SDK 2.25 this is their only home; from 2.25 they are GA at top level and these names emit a
DeprecationWarning (SDK:release-notes/prev/2.25.0/nx-pytorch.rst).
"""

from neuron_sdk_sim import _install_info
from neuron_sdk_sim._neuronx import experimental_placement

_functions = experimental_placement(deprecated=_install_info.active()["placement_ga"])
neuron_cores_context = _functions["neuron_cores_context"]
multicore_context = _functions["multicore_context"]
set_neuron_cores = _functions["set_neuron_cores"]
set_multicore = _functions["set_multicore"]

__all__ = ["multicore_context", "neuron_cores_context", "set_multicore", "set_neuron_cores"]
