"""torch_neuron (Inf1) of the SIMULATED Neuron SDK (neuron_sdk_sim): not AWS's package, never shipped in a release.

Installed by ``python -m neuron_sdk_sim install``. Importing it registers the simulated
``neuron_sim::neuron_forward`` TorchScript op that compiled Inf1 models call and, like the real package, makes
``torch.neuron`` refer to it.
"""

import torch

from neuron_sdk_sim import _install_info, _runtime
from neuron_sdk_sim._neuron import Optimization, trace

_INSTALL = _install_info.activate(__file__)
_runtime.register("torch_neuron")
torch.neuron = __import__(__name__)  # type: ignore[attr-defined]

__version__: str = _INSTALL["versions"]["torch-neuron"]
SIMULATED = True

__all__ = ["SIMULATED", "Optimization", "__version__", "trace"]
