"""torch_neuronx of the SIMULATED Neuron SDK (neuron_sdk_sim): not AWS's package, never shipped in a release.

Installed by ``python -m neuron_sdk_sim install``; its shape follows the SDK release it was installed for
(``neuron_sdk_sim/_installed.json`` next to this package): before SDK 2.25 the NeuronCore placement APIs exist
only under ``torch_neuronx.experimental``; from 2.25 they are also top-level (GA). Importing it registers the
simulated ``neuron_sim::neuronx_forward`` TorchScript op that compiled models call, as the real import registers
its ``neuron::`` ops.
"""

from neuron_sdk_sim import _install_info, _runtime
from neuron_sdk_sim._neuronx import dynamic_batch, move_trace_to_device, trace

_INSTALL = _install_info.activate(__file__)
_runtime.register("torch_neuronx")

__version__: str = _INSTALL["versions"]["torch-neuronx"]
SIMULATED = True

if _INSTALL["placement_ga"]:
    from neuron_sdk_sim._neuronx import multicore_context, neuron_cores_context, set_multicore, set_neuron_cores

from torch_neuronx import experimental  # noqa: E402 - after the op registration

__all__ = ["SIMULATED", "__version__", "dynamic_batch", "experimental", "move_trace_to_device", "trace"]
if _INSTALL["placement_ga"]:
    __all__ += ["multicore_context", "neuron_cores_context", "set_multicore", "set_neuron_cores"]
